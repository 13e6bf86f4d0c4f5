"""tf_dtd.callbacks.RelevanceMonitor: refreshed heatmaps, one trace, event files read back."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import tf_dtd
from tf_dtd import visualize
from tf_dtd.callbacks import RelevanceMonitor, relevance_scalars
from tf_dtd.errors import InvalidArgumentError

BOX = (0.0, 1.0)
TAGS = {"relevance/heatmaps", "relevance/conservation_error", "relevance/negative_share"}


@pytest.fixture(scope="module")
def digits8():
    data = load_digits()
    return (data.images[:256] / 16.0).astype("float32")[..., None], data.target[:256]


def functional_cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    hidden = keras.layers.ReLU()(keras.layers.BatchNormalization()(hidden))
    hidden = keras.layers.Flatten()(keras.layers.MaxPooling2D()(hidden))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def sequential_cnn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def read_events(log_dir):
    """{tag: [(step, value)]} from the event files, via TF's summary reader."""
    events = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "relevance", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                plugin = value.metadata.plugin_data.plugin_name
                events.setdefault(value.tag, []).append((event.step, plugin, array))
    return events


def decode(image_tensor):
    width, height, png = image_tensor
    rgb = tf.io.decode_png(png).numpy()
    assert rgb.shape == (int(height), int(width), 3)
    return rgb


def test_functional_model_logs_refreshed_heatmaps(digits8, tmp_path):
    x, y = digits8
    model = functional_cnn()
    samples, masks = x[:5], x[:5, ..., 0] > 0.25
    monitor = RelevanceMonitor(samples, "deep_taylor_bounded", input_range=BOX,
                               log_dir=tmp_path, masks=masks, columns=5, scale=2)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[monitor])
    relevance_model = monitor.relevance_model
    first = monitor.heatmaps.copy()
    # After the refresh the heatmaps are those of a relevance model built from the trained
    # weights (BatchNorm folded with the current statistics).
    np.testing.assert_allclose(first, tf_dtd.explain(model, samples, input_range=BOX),
                               rtol=1e-5, atol=1e-6)

    model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[monitor])
    assert monitor.relevance_model is relevance_model       # not rebuilt
    assert monitor.explain_function.experimental_get_tracing_count() == 1   # not retraced
    assert np.abs(monitor.heatmaps - first).max() > 1e-3 * np.abs(first).max()
    fresh, logits = tf_dtd.explain(model, samples, input_range=BOX, return_prediction=True)
    np.testing.assert_allclose(monitor.heatmaps, fresh, rtol=1e-5, atol=1e-6)

    events = read_events(tmp_path)
    assert set(events) == TAGS | {"relevance/mass_in_mask"}
    # Three epochs over two fit() calls: steps = epoch within each call, one file per writer.
    assert [step for step, _, _ in events["relevance/heatmaps"]] == [0, 0, 1]
    step, plugin, image = events["relevance/heatmaps"][-1]
    assert plugin == "images"
    classes = logits.argmax(axis=1)
    expected = visualize.grid(visualize.heatmap_to_rgb(fresh), [f"class {c}" for c in classes],
                              columns=5, scale=2)
    grid = decode(image)
    assert grid.shape == expected.shape and grid.shape[1] == 2 + 5 * (8 * 2 + 2)  # 5 columns
    np.testing.assert_allclose(grid.astype(int), expected.astype(int), atol=1)
    # The Deep Taylor heatmaps are non-negative (white to red): no blue-dominated pixel.
    assert not np.any((grid[..., 2] > 200) & (grid[..., 0] < 100))

    explained = logits[np.arange(5), classes]
    scalars = {tag: events[tag][-1][2] for tag in TAGS - {"relevance/heatmaps"}}
    assert all(events[tag][-1][1] == "scalars" for tag in scalars)
    assert scalars["relevance/conservation_error"] < 1e-5      # z^B + z⁺ conserve the logit
    assert scalars["relevance/negative_share"] == 0.0
    flat = np.maximum(fresh, 0).reshape(5, -1)
    inside = (flat * masks.reshape(5, -1)).sum(1) / flat.sum(1)
    np.testing.assert_allclose(events["relevance/mass_in_mask"][-1][2], inside.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        scalars["relevance/conservation_error"],
        np.mean(np.abs(fresh.reshape(5, -1).sum(1) - explained) / np.abs(explained)), atol=1e-7)


def test_relevance_scalars_by_hand():
    heatmaps = np.array([[[2.0, -1.0], [0.0, 1.0]], [[0.5, 0.5], [0.0, 0.0]]])
    masks = np.array([[[1, 0], [0, 0]], [[1, 1], [1, 1]]])
    scalars = relevance_scalars(heatmaps, np.array([4.0, 1.0]), masks)
    assert scalars == pytest.approx({
        "relevance/conservation_error": (2 / 4 + 0 / 1) / 2,      # sums 2 and 1
        "relevance/negative_share": 1 / 5,                          # |R⁻| 1 of |R| 5
        "relevance/mass_in_mask": (2 / 3 + 1) / 2})                 # R⁺ inside / R⁺


def test_sequential_model_every_second_epoch(digits8, tmp_path):
    x, y = digits8
    model = sequential_cnn()
    monitor = RelevanceMonitor(x[:3], "lrp_epsilon", log_dir=tmp_path, every_n_epochs=2)
    model.fit(x, y, epochs=4, batch_size=64, verbose=0, callbacks=[monitor])
    events = read_events(tmp_path)
    assert set(events) == TAGS
    assert [step for step, _, _ in events["relevance/negative_share"]] == [1, 3]
    negative = events["relevance/negative_share"][-1][2]
    assert 0.0 < negative < 1.0                    # LRP-ε heatmaps have both signs
    fresh = tf_dtd.explain(model, x[:3], "lrp_epsilon")
    np.testing.assert_allclose(monitor.heatmaps, fresh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        negative, np.maximum(-fresh, 0).sum() / np.abs(fresh).sum(), rtol=1e-5)
    width, height, _ = events["relevance/heatmaps"][0][2]
    assert (int(width), int(height)) == (2 + 2 * (8 * 4 + 2), decode(
        events["relevance/heatmaps"][0][2]).shape[0])


def test_sync_weights_changes_heatmaps_without_rebuild(digits8):
    x, y = digits8
    model = functional_cnn()
    arguments = {"rules": "deep_taylor_bounded", "input_range": BOX}
    relevance_model = tf_dtd.relevance_model(model, **arguments)
    before = relevance_model.predict(x[:4], verbose=0)
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    np.testing.assert_array_equal(relevance_model.predict(x[:4], verbose=0), before)
    assert tf_dtd.sync_weights(relevance_model, model) is relevance_model
    after = relevance_model.predict(x[:4], verbose=0)
    assert np.abs(after - before).max() > 1e-3 * np.abs(before).max()
    np.testing.assert_allclose(after, tf_dtd.explain(model, x[:4], **arguments),
                               rtol=1e-5, atol=1e-6)


def test_bad_arguments(digits8, tmp_path):
    x, y = digits8
    with pytest.raises(InvalidArgumentError, match="every_n_epochs to be an integer >= 1"):
        RelevanceMonitor(x[:2], input_range=BOX, every_n_epochs=0)
    with pytest.raises(InvalidArgumentError, match=r"Received: masks of shape \(2, 4, 4\)"):
        RelevanceMonitor(x[:2], input_range=BOX, masks=np.ones((2, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="non-empty numeric batch"):
        RelevanceMonitor(np.array(["a", "b"]))
    monitor = RelevanceMonitor(np.zeros((2, 6, 6, 1)), input_range=BOX, log_dir=tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"Received: shape \(2, 6, 6, 1\)"):
        sequential_cnn().fit(x, y, epochs=1, verbose=0, callbacks=[monitor])
