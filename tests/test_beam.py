"""tf_dtd.beam on Beam's DirectRunner: the handler in RunInference and the ready pipeline."""

import csv
import importlib
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_dtd
from tf_dtd.app import digits, inputs
from tf_dtd.errors import InvalidArgumentError, MissingDependencyError

NO_BEAM = "apache-beam is not installed (pip install 'tf_dtd[beam]'; CI installs the test extra)"


@pytest.fixture(scope="module")
def beam():
    return pytest.importorskip("apache_beam", reason=NO_BEAM)


@pytest.fixture(scope="module")
def images():
    return digits.load_samples()[0][:5]


def test_missing_apache_beam_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "tf_dtd.beam" or m.startswith("tf_dtd.beam.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # import apache_beam fails
    with pytest.raises(MissingDependencyError,
                       match=r'tf_dtd.beam needs Apache Beam.*pip install "tf_dtd\[beam\]"'):
        importlib.import_module("tf_dtd.beam")
    assert issubclass(MissingDependencyError, ImportError)


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_handler_in_run_inference(beam, model, images, tmp_path):
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.testing.util import assert_that

    from tf_dtd.beam import RelevanceModelHandler

    model.save(tmp_path / "classifier.keras")
    chosen = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), target="input",
                                    return_prediction=True)
    class_ids = np.array([3, 1, 4, 1, 5])
    expected_chosen, logits = chosen.predict([images, class_ids], verbose=0)
    exported = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), return_prediction=True)
    exported.export(str(tmp_path / "savedmodel"), verbose=False)
    expected_max = exported.predict(images, verbose=0)[0]

    def check(expected, explained):
        def matcher(results):
            results = dict(results)
            assert sorted(results) == list(range(len(images)))
            for i, result in results.items():
                assert result.inference["relevance"].shape == images[i].shape
                _assert_close(result.inference["relevance"], expected[i])
                _assert_close(result.inference["logits"], logits[i])
                if explained is None:
                    assert "explained_class" not in result.inference
                else:
                    assert result.inference["explained_class"] == explained[i]
        return matcher

    with beam.Pipeline(runner="DirectRunner") as pipeline:
        pairs = pipeline | "Pairs" >> beam.Create(
            [(i, (images[i], class_ids[i])) for i in range(len(images))])
        keras_results = pairs | "Keras" >> RunInference(KeyedModelHandler(RelevanceModelHandler(
            str(tmp_path / "classifier.keras"), "deep_taylor_bounded", input_range=(0.0, 1.0),
            target="input", batch_size=2)))
        assert_that(keras_results, check(expected_chosen, class_ids), label="CheckKeras")
        singles = pipeline | "Images" >> beam.Create([(i, image) for i, image in enumerate(images)])
        saved_results = singles | "SavedModel" >> RunInference(KeyedModelHandler(
            RelevanceModelHandler(str(tmp_path / "savedmodel"), batch_size=4)))
        assert_that(saved_results, check(expected_max, None), label="CheckSavedModel")


def test_handler_refuses_what_it_cannot_serve(beam, model, tmp_path):
    from tf_dtd.beam import RelevanceModelHandler

    class RelevanceOnly(tf.Module):  # a SavedModel that serves relevance without logits
        @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32, "image")])
        def serve(self, image):
            return {"output_0": image}

    relevance_only = RelevanceOnly()
    tf.saved_model.save(relevance_only, str(tmp_path / "plain"),
                        signatures={"serving_default": relevance_only.serve})
    with pytest.raises(InvalidArgumentError, match="returns relevance only.*return_prediction"):
        RelevanceModelHandler(str(tmp_path / "plain")).load_model()
    with pytest.raises(InvalidArgumentError, match="an exported relevance SavedModel: its rules.*"
                                                   "Received: {'rules': 'lrp_epsilon'}"):
        RelevanceModelHandler(str(tmp_path / "plain"), "lrp_epsilon").load_model()
    handler = RelevanceModelHandler(digits.MODEL_PATH, input_range=(0.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="takes no inference_args.*Received: "
                                                   r"\['scale'\]"):
        handler.validate_inference_args({"scale": 2})
    loaded = handler.load_model()
    with pytest.raises(InvalidArgumentError, match=r"images of shape \(28, 28, 1\). Received: "
                                                   r"shapes \[\(8, 8\)\]"):
        handler.run_inference([np.zeros((8, 8))], loaded)


def _read_outputs(out):
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    dead = [json.loads(line) for line in (out / "dead_letter.jsonl").read_text().splitlines()]
    return rows, dead


def test_pipeline_on_images_with_a_bad_file(beam, relevance_model, images, tmp_path):
    from tf_dtd.beam.pipeline import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images[:3]):
        Image.fromarray(np.round(image[..., 0] * 255).astype("uint8")).save(folder / f"d{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    files = sorted(str(folder / f"d{i}.png") for i in range(3))
    expected = relevance_model.predict(inputs.load_inputs(files, (28, 28, 1))[0], verbose=0)

    status = main(["--input", str(folder / "*.png"), "--output", str(tmp_path / "out"),
                   "--model", digits.MODEL_PATH, "--runner", "DirectRunner"])

    assert status == 0
    rows, dead = _read_outputs(tmp_path / "out")
    assert sorted(row["id"] for row in rows) == files
    for row in rows:
        heatmap = np.load(tmp_path / "out" / row["heatmap"].replace(".png", ".npy"))
        _assert_close(heatmap, expected[files.index(row["id"])])
        assert os.path.getsize(tmp_path / "out" / row["heatmap"]) > 0
        assert float(row["relevance_sum"]) == pytest.approx(heatmap.sum(), rel=1e-5)
        assert row["explained_class"] == row["predicted_class"]
    assert [(d["id"], d["stage"]) for d in dead] == [(str(folder / "broken.png"), "read")]
    assert "cannot identify image file" in dead[0]["error"]


def test_pipeline_on_tfrecords_with_bad_records(beam, relevance_model, images, tmp_path):
    from tf_dtd.beam.pipeline import main

    path = str(tmp_path / "samples.tfrecord")

    def example(**feature):
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def text(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

    with tf.io.TFRecordWriter(path) as writer:
        for i in range(3):
            writer.write(example(x=floats(images[i].ravel()), id=text(f"sample-{i}")))
        writer.write(example(x=floats(np.zeros(10)), id=text("too-short")))
        writer.write(b"not an example")
    expected = relevance_model.predict(images[:3], verbose=0)

    status = main(["--input", path, "--output", str(tmp_path / "out"), "--model",
                   digits.MODEL_PATH, "--batch-size", "2", "--runner", "DirectRunner"])

    assert status == 0
    rows, dead = _read_outputs(tmp_path / "out")
    assert sorted(row["id"] for row in rows) == ["sample-0", "sample-1", "sample-2"]
    for row in rows:
        heatmap = np.load(tmp_path / "out" / row["heatmap"].replace(".png", ".npy"))
        _assert_close(heatmap, expected[int(row["id"][-1])])
    dead = sorted(dead, key=lambda d: d["id"])
    assert [d["stage"] for d in dead] == ["read", "read"]
    assert dead[0]["id"] == f"{path}:3"  # where it is: a malformed record's id is not trusted
    assert "'x' (id 'too-short') must hold 784 floats" in dead[0]["error"]
    assert dead[1]["id"] == f"{path}:4" and "not a tf.train.Example" in dead[1]["error"]
