"""Explain a data set of any size: stream it through a relevance model into shards on disk."""

import collections

import keras
import numpy as np
import tensorflow as tf

from tf_dtd.app import inputs
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.scale import sources
from tf_dtd.scale.explainer import Explainer, pad, step_signature
from tf_dtd.scale.shards import ShardStore, load_results

__all__ = ["explain_dataset", "load_results"]


def explain_dataset(relevance_model, data, out, *, batch_size=32, shard_size=256,
                    preprocessing="unit", verbose="auto"):
    """Explain every sample of ``data`` and write the results to ``out`` as shards.

    The data is streamed: memory holds one shard (``shard_size`` samples of inputs and results)
    whatever the size of the data set. Each finished shard is written atomically and listed in
    ``out/manifest.json``; if the run stops (a crash, a killed job), calling ``explain_dataset``
    again with the same arguments continues after the last finished shard. A folder holding a
    run with another model, other data or other arguments is refused. Read the results with
    :func:`tf_dtd.load_results`.

    A relevance model built under a ``tf.distribute`` strategy scope runs on all its replicas
    (``batch_size`` is then the global batch size).

    Args:
        relevance_model: a model made by :func:`tf_dtd.relevance_model`. Built with
            ``target="input"``, it takes the class to explain from the data: ``(x, class_id)``
            elements or a ``"class_id"`` entry.
        data: a ``tf.data.Dataset`` (of samples or batches: ``x``, ``(x, y)``,
            ``((x, class_id),)`` or dicts with ``"x"`` and optionally ``"id"``, ``"class_id"``,
            ``"label"``); a NumPy array or pair of arrays ``(x, y)``; or image files (PNG /
            JPEG / BMP), folders, globs, TFRecord files, a ``.npy`` array (memory-mapped).
            See :mod:`tf_dtd.scale.sources` for the TFRecord schema. A resumed run must see the
            same samples in the same order (no unseeded shuffling): the first samples are
            compared.
        out: the results folder (new or empty, or a run to resume).
        batch_size: samples per step of the model.
        shard_size: samples per shard file (the last one may be smaller).
        preprocessing: how image pixels become model inputs, as in ``tf-dtd explain``:
            ``"unit"`` (/255), ``"raw"``, ``"tf"``, ``"caffe"``, ``"torch"``. Image files and
            TFRecord images only.
        verbose: ``0`` silent, ``1`` a progress bar, ``2`` one line at the end; ``"auto"`` is 1.

    Returns:
        The number of samples in ``out`` (all of ``data``).

    Each shard holds, one row per sample: ``relevance`` (the input's shape), ``logits``,
    ``id`` (the file path; the dataset's ``"id"`` or the running index 0, 1, ... otherwise),
    ``explained_class``, ``predicted_class`` (argmax of the logits), ``relevance_sum``
    (float64), and ``label`` (the ``y`` of a model without ``target="input"``) and
    ``layers/<name>`` (a model built with ``layers=[...]``) where present.

    Raises:
        InvalidArgumentError: bad arguments or data, or ``out`` holds another run.

    Example:
        >>> relevance = tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
        >>> tf_dtd.explain_dataset(relevance, "photos/*.png", "results", verbose=0)
        >>> for shard in tf_dtd.load_results("results"):
        ...     print(shard["id"][0], shard["relevance"].shape)
    """
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name} must be an int >= 1. Received: {name}={value!r}")
    if preprocessing not in inputs.PREPROCESSING:
        raise InvalidArgumentError(f"preprocessing must be one of {inputs.PREPROCESSING}. "
                                   f"Received: preprocessing={preprocessing!r}")
    verbose = 1 if verbose == "auto" else verbose
    if verbose not in (0, 1, 2):
        raise InvalidArgumentError(f"verbose must be 0, 1, 2 or 'auto'. Received: {verbose!r}")
    _check_one_machine(relevance_model.distribute_strategy)
    explainer = Explainer.of(relevance_model)
    source = sources.open_source(data, sample_shape=explainer.sample_shape,
                                 needs_class_ids=explainer.needs_class_ids,
                                 preprocessing=preprocessing)
    store = ShardStore(out, {
        "model_sha256": explainer.fingerprint(),
        "data": source.fingerprint(),
        "batch_size": int(batch_size),
        "shard_size": int(shard_size),
        "preprocessing": preprocessing if source.kind in ("images", "tfrecord")
        else None,
    })
    progress = keras.utils.Progbar(source.count, verbose=verbose, unit_name="sample")
    if store.complete:  # nothing left to do
        progress.target = store.samples_done
        progress.update(store.samples_done, finalize=True)
        return store.samples_done
    progress.update(store.samples_done)

    stream = _Stream(explainer, source, store.samples_done, batch_size)
    pending = _Pending()
    for batch, output in stream:
        pending.add(batch, output)
        progress.update(store.samples_done + len(pending))
        while len(pending) >= shard_size:
            _write_shard(store, explainer, *pending.take(shard_size))
    stream.raise_error()  # a failure reading the data: the shards so far stay, resumable
    if len(pending):
        _write_shard(store, explainer, *pending.take(len(pending)))
    store.finish()
    if source.count is None:
        progress.target = store.samples_done
    progress.update(store.samples_done, finalize=True)
    return store.samples_done


def _check_one_machine(strategy):
    """explain_dataset runs on the replicas of one machine; a cluster of workers is refused."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return
    jobs = resolver.cluster_spec().as_dict()
    tasks = sum(len(jobs.get(job, [])) for job in ("chief", "worker"))
    if tasks > 1:
        raise InvalidArgumentError(
            "explain_dataset uses the devices of one machine. On a cluster, run it on each "
            "worker for its own part of the data and its own out folder, with a "
            "MirroredStrategy over that machine's GPUs (see docs/scaling.md), or use "
            f"tf_dtd.beam. Received: a {type(strategy).__name__} over {tasks} workers")


def _write_shard(store, explainer, batch, output):
    record = explainer.complete(output, batch.class_ids)
    record["id"] = batch.ids
    if batch.labels is not None:
        record["label"] = batch.labels
    store.write_shard(record)


class _Stream:
    """Source batches through the model: yields ``(batch, output)`` pairs in order.

    The batches reach the model through a ``tf.data`` generator (reading overlaps computing,
    and a strategy splits each batch over its replicas); each is padded to ``batch_size`` so
    that every step has one shape. Ids and labels wait in a queue on the Python side. An error
    reading the data ends the stream; :meth:`raise_error` raises it as it was raised.
    """

    def __init__(self, explainer, source, start, batch_size):
        self.explainer, self.source = explainer, source
        self.start, self.batch_size = start, batch_size
        self.waiting = collections.deque()
        self.error = None

    def _generate(self):
        try:
            for batch in self.source.batches(self.start, self.batch_size):
                x = np.asarray(batch.x, dtype=self.explainer.input_dtype)
                padded, _ = pad(self.explainer.inputs(x, batch.class_ids), self.batch_size)
                self.waiting.append(batch)
                yield tuple(padded) if isinstance(padded, list) else padded
        except Exception as error:  # tf.data would turn it into a tf.errors.* without its type
            self.error = error

    def __iter__(self):
        probe = self.explainer.inputs(
            np.zeros((1, *self.explainer.sample_shape), self.explainer.input_dtype),
            np.zeros(1, "int32") if self.explainer.needs_class_ids else None)
        dataset = tf.data.Dataset.from_generator(
            self._generate, output_signature=step_signature(probe)).prefetch(2)
        for output in self.explainer.run(dataset):
            batch = self.waiting.popleft()
            count = len(batch.x)
            yield batch, {name: value[:count] for name, value in output.items()}

    def raise_error(self):
        if self.error is not None:
            raise self.error


class _Pending:
    """Samples explained but not yet written: at most a shard plus a batch of them."""

    def __init__(self):
        self.parts = []

    def __len__(self):
        return sum(len(batch.x) for batch, _ in self.parts)

    def add(self, batch, output):
        self.parts.append((batch, output))

    def take(self, count):
        """The first ``count`` pending samples: ``(batch, output)``."""
        fields = ("x", "ids", "class_ids", "labels")
        batch = {f: _concat([getattr(b, f) for b, _ in self.parts]) for f in fields}
        output = {name: np.concatenate([o[name] for _, o in self.parts])
                  for name in self.parts[0][1]}
        rest = len(batch["x"]) - count
        self.parts = [] if rest == 0 else [(
            sources.Batch(**{f: None if v is None else v[count:] for f, v in batch.items()}),
            {name: value[count:] for name, value in output.items()})]
        return (sources.Batch(**{f: None if v is None else v[:count] for f, v in batch.items()}),
                {name: value[:count] for name, value in output.items()})


def _concat(arrays):
    return None if arrays[0] is None else np.concatenate(arrays)
