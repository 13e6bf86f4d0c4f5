"""tf_dtd.evaluate.quantus: the explain_func contract of Quantus (no Quantus needed).

The real package runs in tests/test_quantus_metrics.py.
"""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate.quantus import quantus_explain_func


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 5, 2)), keras.layers.Conv2D(3, 3, activation="relu", padding="same"),
        keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")])


def test_channels_first_in_channels_first_out(cnn):
    rng = np.random.default_rng(0)
    x = rng.random((3, 6, 5, 2)).astype("float32")          # the model's channels-last layout
    x_quantus = np.moveaxis(x, -1, -3)                       # what Quantus passes: (N, C, H, W)
    y = np.array([1, 3, 0])
    # Quantus calls explain_func with keywords, adding device= when it was given one.
    a = quantus_explain_func(model=cnn, inputs=x_quantus, targets=y, device="cpu",
                             input_range=(0.0, 1.0))
    assert isinstance(a, np.ndarray) and a.shape == x_quantus.shape == (3, 2, 6, 5)
    expected = tf_dtd.explain(cnn, x, "deep_taylor_bounded", input_range=(0.0, 1.0), target=y)
    np.testing.assert_allclose(a, np.moveaxis(expected, -1, 1), rtol=1e-6, atol=1e-7)
    # Positional call with other rules, explicit layout, and a summed channel axis.
    a_eps = quantus_explain_func(cnn, x_quantus, y, rules="lrp_epsilon", channel_first=True,
                                 reduce_axes=(1,))
    expected = tf_dtd.explain(cnn, x, "lrp_epsilon", target=y)
    assert a_eps.shape == (3, 1, 6, 5)
    np.testing.assert_allclose(a_eps[:, 0], expected.sum(axis=-1), rtol=1e-5, atol=1e-6)


def test_channels_last_inputs_come_back_channels_first(cnn):
    # Metric.explain_batch hands over the model's own (channels-last) layout; Quantus' metrics
    # still compare the attributions with their channels-first x_batch.
    x = np.random.default_rng(1).random((2, 6, 5, 2)).astype("float32")
    a = quantus_explain_func(cnn, x, np.array([2, 2]), rules="lrp_z")   # inferred: as is
    assert a.shape == (2, 2, 6, 5)
    expected = tf_dtd.explain(cnn, x, "lrp_z", target=np.array([2, 2]))
    np.testing.assert_allclose(a, np.moveaxis(expected, -1, 1), rtol=1e-6)
    explicit = quantus_explain_func(cnn, x, np.array([2, 2]), rules="lrp_z", channel_first=False)
    np.testing.assert_array_equal(explicit, a)
    one = quantus_explain_func(cnn, np.moveaxis(x[:1], -1, 1), 2, rules="lrp_z")
    np.testing.assert_allclose(one, a[:1], rtol=1e-6)


def test_channels_first_model_is_not_transposed():
    # A model that takes (C, H, W) inputs (a Permute in front, as a channels_first Conv2D does
    # internally; TF's CPU kernels lack channels_first convolutions without oneDNN).
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((2, 6, 5)), keras.layers.Permute((2, 3, 1)),
        keras.layers.Conv2D(3, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(2)])
    x = np.random.default_rng(3).random((2, 2, 6, 5)).astype("float32")
    expected = tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1]))
    a = quantus_explain_func(model, x, np.array([0, 1]), rules="lrp_z", model_channel_first=True)
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    # Without the flag the inputs count as the channels-last layout and come back transposed.
    moved = quantus_explain_func(model, x, np.array([0, 1]), rules="lrp_z")
    np.testing.assert_allclose(moved, np.moveaxis(expected, -1, 1), rtol=1e-6)


def test_one_dimensional_signals():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((7, 3)), keras.layers.Conv1D(2, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    x = np.random.default_rng(2).random((2, 7, 3)).astype("float32")
    a = quantus_explain_func(model, np.moveaxis(x, -1, -2), np.array([0, 1]), rules="lrp_z")
    assert a.shape == (2, 3, 7)
    np.testing.assert_allclose(
        a, np.moveaxis(tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1])), -1, 1),
        rtol=1e-6)


def test_ambiguous_and_wrong_layouts():
    model = keras.Sequential([keras.Input((4, 4, 4)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    x = np.zeros((1, 4, 4, 4), "float32")
    with pytest.raises(InvalidArgumentError, match="pass channel_first=True or False"):
        quantus_explain_func(model, x, np.array([0]), rules="lrp_z")
    a = quantus_explain_func(model, x, np.array([0]), rules="lrp_z", channel_first=True)
    assert a.shape == x.shape
    with pytest.raises(InvalidArgumentError, match=r"Received: inputs of shape \(N, 3, 4, 4\)"):
        quantus_explain_func(model, np.zeros((1, 3, 4, 4)), np.array([0]), rules="lrp_z")
    with pytest.raises(InvalidArgumentError, match="without the batch axis"):
        quantus_explain_func(model, x, np.array([0]), rules="lrp_z", channel_first=False,
                             reduce_axes=(0,))
