"""The ready pipeline: ``python -m tf_dtd.beam --input PATTERN --output DIR [Beam options]``.

Reads images (PNG / JPEG / BMP, read like ``tf-dtd explain``) or TFRecords (the schema of
:mod:`tf_dtd.scale.sources`), explains them with :class:`RelevanceModelHandler` in
``RunInference``, and writes to ``--output``:

- ``heatmaps/<name>-<hash>.png`` (palette PNG) and ``.npy`` (float32 relevance) per input;
- ``summary.csv``: id, heatmap, predicted_class, explained_class, logit (of the explained class),
  relevance_sum — one row per explained input, in no particular order;
- ``dead_letter.jsonl``: one JSON line per input that failed (unreadable image, malformed
  record, failed inference: ``{"id", "stage", "error"}``). The pipeline does not fail on them.

Any further arguments are Beam pipeline options (``--runner DataflowRunner --project ...``,
``--runner FlinkRunner``, ``--direct_num_workers 4``, ...).
"""

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from tf_dtd import visualize
from tf_dtd.app import inputs
from tf_dtd.beam.handler import RelevanceModelHandler, is_saved_model
from tf_dtd.composites import PRESETS
from tf_dtd.scale import sources

__all__ = ["DEAD_LETTER", "SUMMARY_HEADER", "build", "main", "parse_args"]

DEAD_LETTER = "dead_letter"
SUMMARY_HEADER = "id,heatmap,predicted_class,explained_class,logit,relevance_sum"


def parse_args(argv=None):
    """``(args, beam_options)``: the pipeline's own arguments and the rest for Beam."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_dtd.beam",
        description="Explain images or TFRecords with Apache Beam (any Beam runner). Further "
                    "arguments are Beam pipeline options, e.g. --runner DataflowRunner.")
    parser.add_argument("--input", required=True,
                        help="a file pattern of images (PNG, JPEG, BMP) or TFRecords; any "
                             "filesystem Beam reads (gs://, s3://, ...)")
    parser.add_argument("--output", required=True, help="the output folder (or prefix)")
    parser.add_argument("--model", default=None,
                        help="the classifier (.keras / .h5) or an exported relevance SavedModel "
                             "(default: the digits model shipped with tf_dtd)")
    parser.add_argument("--rules", default=None, choices=sorted(PRESETS),
                        help="rule preset (default: deep_taylor_bounded)")
    parser.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="the box the model inputs live in (default: from --preprocess)")
    parser.add_argument("--target", default=None, type=_target,
                        help="'max' (default), a class index, or 'input' (TFRecords with "
                             "'class_id')")
    parser.add_argument("--preprocess", default="unit", choices=inputs.PREPROCESSING,
                        help="how image pixels become model inputs (default: unit = /255)")
    parser.add_argument("--cmap", default="bwr", choices=visualize.COLORMAPS,
                        help="colour map of the heatmap PNGs")
    parser.add_argument("--batch-size", type=int, default=32, help="images per model step")
    return parser.parse_known_args(argv)


def build(pipeline, args, handler=None):
    """Add the reading, explaining and writing steps of ``args`` to ``pipeline``.

    Returns:
        The handler used (built from ``args`` unless given).
    """
    if handler is None:
        handler, sample_shape = _handler(args)
    else:
        sample_shape = handler.sample_shape()
    records = args.input.lower().endswith(sources.TFRECORD_SUFFIXES)
    if handler.needs_class_ids() and not records:
        raise ValueError("--target input needs TFRecords with a 'class_id' feature; images carry "
                         "no class ids.")
    if records:
        read = (pipeline | "Match" >> fileio.MatchFiles(args.input)
                | "ReadRecords" >> beam.ParDo(_ReadRecords(sample_shape, args.preprocess,
                                                           handler.needs_class_ids()))
                .with_outputs(DEAD_LETTER, main="samples"))
    else:
        read = (pipeline | "Match" >> fileio.MatchFiles(args.input)
                | "Open" >> fileio.ReadMatches()
                | "Decode" >> beam.ParDo(_DecodeImage(sample_shape, args.preprocess))
                .with_outputs(DEAD_LETTER, main="samples"))
    explained, failed = (read.samples | "Explain" >> RunInference(
        KeyedModelHandler(handler)).with_exception_handling())
    rows = explained | "WriteHeatmaps" >> beam.ParDo(_WriteHeatmap(args.output, args.cmap))
    _ = rows | "Summary" >> beam.io.WriteToText(
        FileSystems.join(args.output, "summary"), file_name_suffix=".csv", num_shards=1,
        shard_name_template="", header=SUMMARY_HEADER)
    inference_failures = failed.failed_inferences | "FailedBatches" >> beam.FlatMap(
        _failed_batch)
    _ = ((read[DEAD_LETTER], inference_failures) | "DeadLetters" >> beam.Flatten()
         | "DeadLetterJson" >> beam.Map(lambda entry: json.dumps(entry, sort_keys=True))
         | "WriteDeadLetters" >> beam.io.WriteToText(
             FileSystems.join(args.output, DEAD_LETTER), file_name_suffix=".jsonl",
             num_shards=1, shard_name_template=""))
    return handler


def main(argv=None):
    """Run the pipeline (``python -m tf_dtd.beam``); returns the exit status."""
    logging.getLogger().setLevel(logging.INFO)
    args, beam_args = parse_args(argv)
    options = PipelineOptions(beam_args, save_main_session=False)
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, args)
    logging.info("Wrote heatmaps, summary.csv and %s.jsonl to %s", DEAD_LETTER, args.output)
    return 0


def heatmap_name(sample_id):
    """``<stem>-<8 hex of the id's SHA-1>``: readable, and unique for different ids."""
    stem = os.path.splitext(os.path.basename(str(sample_id).rstrip("/")))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "sample"
    return f"{stem}-{hashlib.sha1(str(sample_id).encode()).hexdigest()[:8]}"


def _handler(args):
    model = args.model
    if model is None:
        from tf_dtd.app import digits

        model = digits.MODEL_PATH
        logging.warning("No --model given: explaining with the digits model shipped with tf_dtd "
                        "(%s).", model)
    sample_shape = RelevanceModelHandler(model).sample_shape()
    input_range = args.input_range
    if input_range is None and not is_saved_model(model):
        input_range = inputs.preprocessing_box(args.preprocess, sample_shape[-1])
    handler = RelevanceModelHandler(model, args.rules, input_range=input_range,
                                    target=args.target, batch_size=args.batch_size)
    return handler, sample_shape


def _target(value):
    if value in ("max", "input"):
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'max', 'input' or a class index, got {value!r}") from None


def _dead(sample_id, stage, error):
    return beam.pvalue.TaggedOutput(DEAD_LETTER, {
        "id": str(sample_id), "stage": stage, "error": f"{type(error).__name__}: {error}"})


class _DecodeImage(beam.DoFn):
    """A matched file → ``(path, image)``; an unreadable one → the dead letters."""

    def __init__(self, sample_shape, preprocessing):
        self.sample_shape, self.preprocessing = sample_shape, preprocessing

    def process(self, readable):
        path = readable.metadata.path
        try:
            yield path, sources.decode_images([readable.read()], self.sample_shape,
                                              self.preprocessing)[0]
        except Exception as error:  # any failure of one input goes to the dead letters
            yield _dead(path, "read", error)


class _ReadRecords(beam.DoFn):
    """A matched TFRecord file → ``(id, image)`` or ``(id, (image, class_id))`` per record.

    Records are read with ``tf.data`` (any filesystem TensorFlow reads); a record without an
    ``"id"`` is named ``<file>:<index>``, as by ``tf_dtd.explain_dataset``. A malformed record,
    or the unreadable rest of a damaged file, goes to the dead letters.
    """

    def __init__(self, sample_shape, preprocessing, needs_class_ids):
        self.sample_shape, self.preprocessing = sample_shape, preprocessing
        self.needs_class_ids = needs_class_ids

    def process(self, metadata):
        import tensorflow as tf

        path = metadata.path
        records = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as error:  # a damaged file: its remaining records are lost
                yield _dead(f"{path}:{index}", "read", error)
                return
            yield from self._sample(record, f"{path}:{index}")
            index += 1

    def _sample(self, record, fallback):
        try:
            parsed = sources.parse_example(record, self.sample_shape, self.preprocessing)
        except Exception as error:  # any failure of one record goes to the dead letters
            yield _dead(fallback, "read", error)
            return
        sample_id = parsed["id"] or fallback
        if not self.needs_class_ids:
            yield sample_id, parsed["x"]
        elif parsed["class_id"] is None:
            yield _dead(sample_id, "read", ValueError(
                "the model explains target='input', but the record has no 'class_id'"))
        else:
            yield sample_id, (parsed["x"], parsed["class_id"])


class _WriteHeatmap(beam.DoFn):
    """``(id, PredictionResult)`` → heatmap PNG and .npy files; yields the summary row."""

    def __init__(self, output, cmap):
        self.output, self.cmap = output, cmap

    def process(self, element):
        sample_id, result = element
        inference = result.inference
        relevance = inference["relevance"]
        name = heatmap_name(sample_id)
        folder = FileSystems.join(self.output, "heatmaps")
        with tempfile.TemporaryDirectory(prefix="tf-dtd-beam-") as local:
            png = os.path.join(local, "heatmap.png")
            visualize.save_png(png, relevance, cmap=self.cmap)
            with open(png, "rb") as handle:
                _write(FileSystems.join(folder, f"{name}.png"), handle.read())
        array = io.BytesIO()
        np.save(array, relevance)
        _write(FileSystems.join(folder, f"{name}.npy"), array.getvalue())
        explained = inference.get("explained_class")
        logit = "" if explained is None else repr(float(inference["logits"][explained]))
        text = io.StringIO()
        csv.writer(text, lineterminator="").writerow([
            sample_id, f"heatmaps/{name}.png", int(inference["predicted_class"]),
            "" if explained is None else int(explained), logit,
            repr(float(inference["relevance_sum"]))])
        yield text.getvalue()


def _write(path, data):
    with FileSystems.create(path) as handle:
        handle.write(data)


def _failed_batch(failure):
    """A failed inference — ``(batch of (id, example), error)`` — as one dead letter per input."""
    batch, error = failure
    message = error[1] if isinstance(error, tuple) and len(error) > 1 else repr(error)
    for sample_id, _ in batch:
        yield {"id": str(sample_id), "stage": "inference", "error": str(message)}
