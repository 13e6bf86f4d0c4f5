"""tf_dtd.explain_dataset / load_results: streaming into shards, resuming, refusing to mix runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_dtd
from tf_dtd.app import digits, inputs
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.scale import explainer as explainer_lib


@pytest.fixture(scope="module")
def x():
    images, _ = digits.load_samples()
    noise = np.random.default_rng(0).uniform(0, 0.2, (3, *images.shape[1:]))
    return np.clip(np.concatenate([images, images[:3] * 0.8 + noise]), 0, 1).astype("float32")


def _results(out, **kwargs):
    shards = list(tf_dtd.load_results(out, **kwargs))
    return {name: np.concatenate([s[name] for s in shards]) for name in shards[0]}, shards


def _assert_matches_predict(results, relevance_model, x, inputs_=None):
    expected = relevance_model.predict(x if inputs_ is None else inputs_, verbose=0)
    np.testing.assert_allclose(results["relevance"], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


def test_array_streams_into_shards_equal_to_predict(relevance_model, model, x, tmp_path):
    count = tf_dtd.explain_dataset(relevance_model, x, tmp_path / "out", batch_size=4,
                                   shard_size=10, verbose=0)

    results, shards = _results(tmp_path / "out")
    assert count == len(x) == 23
    assert [len(s["id"]) for s in shards] == [10, 10, 3]
    np.testing.assert_array_equal(results["id"], np.arange(len(x)))
    _assert_matches_predict(results, relevance_model, x)
    logits = model.predict(x, verbose=0)  # softmax of the logits
    np.testing.assert_allclose(np.exp(results["logits"]) / np.exp(results["logits"]).sum(
        axis=1, keepdims=True), logits, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(results["explained_class"], logits.argmax(axis=1))
    np.testing.assert_array_equal(results["predicted_class"], logits.argmax(axis=1))
    np.testing.assert_allclose(results["relevance_sum"],
                               results["relevance"].reshape(len(x), -1).sum(axis=1), rtol=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["samples"] == 23
    assert sorted(os.listdir(tmp_path / "out")) == [
        "manifest.json", "shard-000000.npz", "shard-000001.npz", "shard-000002.npz"]


def test_dataset_forms_ids_labels_and_class_ids(model, relevance_model, x, tmp_path):
    labels = np.arange(len(x)) % 10
    batched = tf.data.Dataset.from_tensor_slices((x, labels)).batch(5)
    tf_dtd.explain_dataset(relevance_model, batched, tmp_path / "pairs", batch_size=8,
                           shard_size=16, verbose=0)
    results, _ = _results(tmp_path / "pairs")
    np.testing.assert_array_equal(results["label"], labels)  # y of a target="max" model
    np.testing.assert_array_equal(results["id"], np.arange(len(x)))
    _assert_matches_predict(results, relevance_model, x)

    names = np.array([f"sample-{i}" for i in range(len(x))])
    by_name = tf.data.Dataset.from_tensor_slices({"x": x, "id": names})
    tf_dtd.explain_dataset(relevance_model, by_name, tmp_path / "named", shard_size=16,
                           verbose=0)
    np.testing.assert_array_equal(_results(tmp_path / "named")[0]["id"], names)

    chosen = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), target="input",
                                    return_prediction=True)
    class_ids = (np.arange(len(x)) * 3) % 10
    pairs = tf.data.Dataset.from_tensor_slices(((x, class_ids),))
    tf_dtd.explain_dataset(chosen, pairs, tmp_path / "chosen", batch_size=8, verbose=0)
    results, _ = _results(tmp_path / "chosen")
    np.testing.assert_array_equal(results["explained_class"], class_ids)
    expected, _ = chosen.predict([x, class_ids], verbose=0)
    np.testing.assert_allclose(results["relevance"], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    with pytest.raises(InvalidArgumentError, match="built with target='input': pass data="):
        tf_dtd.explain_dataset(chosen, x, tmp_path / "missing", verbose=0)


def test_resume_after_failure_redoes_nothing_and_loses_nothing(relevance_model, x, tmp_path,
                                                               monkeypatch):
    fail_at = {"sample": 13}  # mid-shard: after two shards of 5 and part of the third

    def samples():
        for i, sample in enumerate(x):
            if i == fail_at["sample"]:
                raise RuntimeError("injected failure")
            yield sample

    dataset = tf.data.Dataset.from_generator(
        samples, output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
    out = tmp_path / "out"
    with pytest.raises(tf.errors.OpError, match="injected failure"):
        tf_dtd.explain_dataset(relevance_model, dataset, out, batch_size=2, shard_size=5,
                               verbose=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    assert [s["samples"] for s in manifest["shards"]] == [5, 5]
    finished = {name: os.stat(out / name) for name in os.listdir(out) if name.startswith("shard")}
    assert sorted(finished) == ["shard-000000.npz", "shard-000001.npz"]
    with pytest.raises(InvalidArgumentError, match=r"unfinished \(10 samples in 2 shards"):
        tf_dtd.load_results(out)
    partial, _ = _results(out, allow_incomplete=True)
    np.testing.assert_array_equal(partial["id"], np.arange(10))

    explained = []
    original = explainer_lib.Explainer.complete
    monkeypatch.setattr(explainer_lib.Explainer, "complete", lambda self, record, c=None: (
        explained.append(len(record["logits"])), original(self, record, c))[1])
    fail_at["sample"] = None
    count = tf_dtd.explain_dataset(relevance_model, dataset, out, batch_size=2, shard_size=5,
                                   verbose=0)

    assert count == len(x) and sum(explained) == len(x) - 10  # finished shards not redone
    for name, before in finished.items():
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    results, _ = _results(out)
    np.testing.assert_array_equal(results["id"], np.arange(len(x)))  # none lost or doubled
    _assert_matches_predict(results, relevance_model, x)


def test_shard_killed_mid_write_is_never_seen(relevance_model, x, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_savez = np.savez
    calls = {"count": 0}

    def dying_savez(handle, **arrays):
        calls["count"] += 1
        if calls["count"] == 2:
            handle.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt("stopped mid-write")  # in the middle of the write
        real_savez(handle, **arrays)

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt, match="stopped mid-write"):
        tf_dtd.explain_dataset(relevance_model, x, out, batch_size=4, shard_size=8, verbose=0)
    assert sorted(os.listdir(out)) == ["manifest.json", "shard-000000.npz"]

    (out / ".tmp-shard-000001.npz-999-dead").write_bytes(b"left by a killed run")
    tf_dtd.explain_dataset(relevance_model, x, out, batch_size=4, shard_size=8, verbose=0)
    assert sorted(os.listdir(out)) == ["manifest.json"] + [f"shard-00000{i}.npz" for i in range(3)]
    results, _ = _results(out)
    np.testing.assert_array_equal(results["id"], np.arange(len(x)))
    _assert_matches_predict(results, relevance_model, x)


@pytest.mark.parametrize("change", ["shard_size", "batch_size", "rules", "target", "data",
                                    "shuffled"])
def test_resume_with_other_parameters_is_refused(model, relevance_model, x, tmp_path, change):
    out = tmp_path / "out"
    dataset = tf.data.Dataset.from_tensor_slices(x)
    tf_dtd.explain_dataset(relevance_model, dataset, out, batch_size=4, shard_size=8, verbose=0)
    before = sorted(os.listdir(out))
    kwargs = {"batch_size": 4, "shard_size": 8}
    other_model, data = relevance_model, dataset
    if change in ("shard_size", "batch_size"):
        kwargs[change] = 6
    elif change == "rules":
        other_model = tf_dtd.relevance_model(model, "lrp_epsilon")
    elif change == "target":
        other_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), target=3)
    elif change == "data":
        data = tf.data.Dataset.from_tensor_slices(x[::-1].copy())
    else:
        data = dataset.shuffle(len(x), seed=1)
    key = {"rules": "model_sha256", "target": "model_sha256", "data": "data",
           "shuffled": "data"}.get(change, change)
    with pytest.raises(InvalidArgumentError, match=f"holds a run with other parameters.*{key}"):
        tf_dtd.explain_dataset(other_model, data, out, verbose=0, **kwargs)
    assert sorted(os.listdir(out)) == before


def test_image_folder_glob_and_tfrecords(relevance_model, x, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(x[:7]):
        Image.fromarray(np.round(image[..., 0] * 255).astype("uint8")).save(folder / f"{i}.png")
    files = sorted(str(p) for p in folder.iterdir())
    expected_x = inputs.load_inputs(files, (28, 28, 1))[0]

    tf_dtd.explain_dataset(relevance_model, str(folder), tmp_path / "folder", shard_size=3,
                           verbose=0)
    results, _ = _results(tmp_path / "folder")
    assert list(results["id"]) == files
    _assert_matches_predict(results, relevance_model, expected_x)
    tf_dtd.explain_dataset(relevance_model, str(folder / "[0-2].png"), tmp_path / "glob",
                           verbose=0)
    assert list(_results(tmp_path / "glob")[0]["id"]) == files[:3]

    records = tmp_path / "samples.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as writer:
        for i, path in enumerate(files[:4]):
            feature = {"image": _bytes(open(path, "rb").read())} if i % 2 else {
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=expected_x[i].ravel())),
                "id": _bytes(f"sample-{i}".encode())}
            writer.write(tf.train.Example(features=tf.train.Features(
                feature=feature)).SerializeToString())
    tf_dtd.explain_dataset(relevance_model, str(records), tmp_path / "records", verbose=0)
    results, _ = _results(tmp_path / "records")
    assert list(results["id"]) == ["sample-0", f"{records}:1", "sample-2", f"{records}:3"]
    _assert_matches_predict(results, relevance_model, expected_x[:4])


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask(relevance_model, x, tmp_path, umask):
    previous = os.umask(umask)
    try:
        tf_dtd.explain_dataset(relevance_model, x[:3], tmp_path / "out", verbose=0)
    finally:
        os.umask(previous)
    for name in ("manifest.json", "shard-000000.npz"):
        assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == 0o666 & ~umask


def test_bad_arguments(model, relevance_model, x, tmp_path):
    with pytest.raises(InvalidArgumentError, match="shard_size must be an int >= 1. Received: "
                                                   "shard_size=0"):
        tf_dtd.explain_dataset(relevance_model, x, tmp_path / "a", shard_size=0)
    with pytest.raises(InvalidArgumentError, match="Expected a relevance model made by "
                                                   "tf_dtd.relevance_model.*'digits_resnet'"):
        tf_dtd.explain_dataset(model, x, tmp_path / "b")
    with pytest.raises(InvalidArgumentError, match="data must be a tf.data.Dataset.*Received: "
                                                   "data of type int"):
        tf_dtd.explain_dataset(relevance_model, 3, tmp_path / "c")
    with pytest.raises(InvalidArgumentError, match=r"x must be samples of rank 3 or batches of "
                                                   r"rank 4. Received: x of shape \(28, 28\)"):
        tf_dtd.explain_dataset(relevance_model, tf.data.Dataset.from_tensor_slices(x[..., 0]),
                               tmp_path / "d")
    with pytest.raises(InvalidArgumentError, match=r"Expected samples of shape \(28, 28, 1\). "
                                                   r"Received: a batch of shape \(3, 16, 16, 1\)"):
        tf_dtd.explain_dataset(relevance_model, x[:3, :16, :16], tmp_path / "e", verbose=0)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="out must be a new or empty folder"):
        tf_dtd.explain_dataset(relevance_model, x, tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="holds no manifest.json"):
        tf_dtd.load_results(tmp_path / "f")


def test_a_cluster_of_workers_is_refused(relevance_model, x, tmp_path, monkeypatch):
    class TwoWorkerStrategy:  # what MultiWorkerMirroredStrategy exposes under a 2-worker TF_CONFIG
        cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": ["host-a:2222", "host-b:2222"]}))

    monkeypatch.setattr(type(relevance_model), "distribute_strategy",
                        property(lambda self: TwoWorkerStrategy()))
    with pytest.raises(InvalidArgumentError, match="uses the devices of one machine.*Received: a "
                                                   "TwoWorkerStrategy over 2 workers"):
        tf_dtd.explain_dataset(relevance_model, x, tmp_path / "out")


def test_xla_compiled_model_streams(x, tmp_path):
    keras.utils.set_random_seed(3)
    small = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(3, 5, strides=4),
                              keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(4)])
    plain = tf_dtd.relevance_model(small, input_range=(0.0, 1.0), target="input")
    compiled = tf_dtd.relevance_model(small, input_range=(0.0, 1.0), target="input")
    compiled.compile(jit_compile=True)
    class_ids = np.arange(len(x)) % 4
    class_ids[5] = 99  # out of range: an error without XLA, NaN where XLA drops the assert

    tf_dtd.explain_dataset(compiled, (x, class_ids), tmp_path / "xla", batch_size=8, verbose=0)

    results, _ = _results(tmp_path / "xla")
    assert np.isnan(results["relevance"][5]).any()  # so the step did run through XLA
    valid = np.arange(len(x)) != 5
    expected = plain.predict([x[valid], class_ids[valid]], verbose=0)
    np.testing.assert_allclose(results["relevance"][valid], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must lie in"):
        tf_dtd.explain_dataset(plain, (x, class_ids), tmp_path / "plain", verbose=0)


def test_a_run_that_failed_before_its_first_shard_starts_over(relevance_model, x, tmp_path):
    with pytest.raises(InvalidArgumentError, match="Expected samples of shape"):
        tf_dtd.explain_dataset(relevance_model, x[:, :16, :16], tmp_path / "out", verbose=0)
    assert not json.loads((tmp_path / "out" / "manifest.json").read_text())["shards"]

    assert tf_dtd.explain_dataset(relevance_model, x, tmp_path / "out", verbose=0) == len(x)
    with pytest.raises(InvalidArgumentError, match="preprocessing must be one of"):
        tf_dtd.explain_dataset(relevance_model, x, tmp_path / "other", preprocessing="imagenet")


KILLED_RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import tensorflow as tf
    import tf_dtd
    from tf_dtd.app import digits

    def samples():
        for i in range(60):
            time.sleep(0.05)
            yield np.random.default_rng(i).uniform(0, 1, (28, 28, 1)).astype("float32")

    dataset = tf.data.Dataset.from_generator(
        samples, output_signature=tf.TensorSpec((28, 28, 1), tf.float32))
    relevance_model = tf_dtd.relevance_model(digits.load_model(), input_range=(0.0, 1.0))
    tf_dtd.explain_dataset(relevance_model, dataset, sys.argv[1], batch_size=4, shard_size=8,
                           verbose=0)
""")


@pytest.mark.slow
def test_resume_after_the_process_is_killed(relevance_model, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if len(json.loads((out / "manifest.json").read_text())["shards"]) >= 2:
                break
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and 2 <= len(manifest["shards"]) < 8
    finished = {s["file"]: os.stat(out / s["file"]) for s in manifest["shards"]}

    x = np.stack([np.random.default_rng(i).uniform(0, 1, (28, 28, 1)).astype("float32")
                  for i in range(60)])  # what the killed process's generator yields
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(x), output_signature=tf.TensorSpec((28, 28, 1), tf.float32))
    tf_dtd.explain_dataset(relevance_model, dataset, out, batch_size=4, shard_size=8, verbose=0)

    for name, before in finished.items():
        after = os.stat(out / name)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    results, shards = _results(out)
    assert [len(s["id"]) for s in shards] == [8] * 7 + [4]
    np.testing.assert_array_equal(results["id"], np.arange(60))
    _assert_matches_predict(results, relevance_model, x)
