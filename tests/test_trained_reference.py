"""Layer by layer, the shipped trained digits model against a float64 NumPy reference.

Conservation and positivity cannot see misallocated relevance (a swap of z^B's bounds, or an Add
that split relevance equally, would leave every whole-model sum intact): here every layer's
relevance is compared with a reference that runs the trained network as explicit matrices
(``references.conv_matrix``) and applies ``deep_taylor_bounded`` the way the papers write it —
z⁺ ``a_i w⁺_ij / Σ_i a_i w⁺_ij`` (with the spread of units it cannot credit), z^B
``x_i w⁺_ij + (x_i − 1) w⁻_ij`` on the pixels, winner-take-all max-pooling with exact ties shared,
z⁺ on the Adds and the global average pooling (shares of the positive inputs) — and LRP-0 is
checked against gradient×input of the Keras model.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
from references import conv_matrix, reference

import tf_dtd
from tf_dtd.app import digits

SAMPLES = 6
LAYERS = ["stem_conv", "stem_pool", "block1_add", "block1_pool", "widen_conv", "block2_add",
          "gap"]


@functools.lru_cache(maxsize=None)
def shipped():
    model = digits.load_model()
    images, _ = digits.load_samples()
    return model, images[::3][:SAMPLES]


@functools.lru_cache(maxsize=None)
def matrices():
    """name -> (matrix, connectivity (the matrix of an all-ones kernel), output shape)."""
    model, _ = shipped()
    shapes = {"stem": (28, 28, 1), "block1_1": (14, 14, 16), "block1_2": (14, 14, 16),
              "widen": (7, 7, 16), "block2_1": (7, 7, 32), "block2_2": (7, 7, 32)}
    result = {}
    for name, in_shape in shapes.items():
        kernel = model.get_layer(f"{name}_conv").kernel.numpy().astype("float64")
        m, out_shape = conv_matrix(kernel, in_shape, (1, 1), "same", (1, 1), 1)
        c, _ = conv_matrix(np.ones(kernel.shape), in_shape, (1, 1), "same", (1, 1), 1)
        result[name] = (m, c, out_shape)
    return result


def max_pool(a, shape):
    """2×2 / stride 2 max-pooling of flattened (B, H·W·C) activations, and its windows."""
    h, w, c = shape
    windows = a.reshape(len(a), h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(len(a), h // 2, w // 2, c, 4)
    return windows.max(axis=-1).reshape(len(a), -1), windows


def forward_windows(model, x, layer, shape):
    """The pooling windows of ``layer``'s output as the model computes it (float32): which input
    wins a window, and which tie, is decided by the forward pass (float64 would break float32's
    exact ties and make new ones)."""
    import keras

    values = keras.Model(model.inputs, model.get_layer(layer).output).predict(x, verbose=0)
    return max_pool(values.reshape(len(x), -1).astype("float64"), shape)[1]


def max_pool_relevance(windows, r, shape):
    """Winner-take-all: each window's relevance to its maxima, shared equally on ties."""
    h, w, c = shape
    winners = windows == windows.max(axis=-1, keepdims=True)
    shares = winners / winners.sum(axis=-1, keepdims=True)
    spread = shares * r.reshape(len(r), h // 2, w // 2, c, 1)
    spread = spread.reshape(len(r), h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return spread.reshape(len(r), -1)


def positive_shares(operands, r):
    """z⁺ on a sum of nonnegative operands: shares a_m / Σ a, evenly where all are 0."""
    total = sum(operands)
    return [np.where(total > 0, a / np.where(total > 0, total, 1.0), 1.0 / len(operands)) * r
            for a in operands]


def reference_relevance(model, x, add_shares=None):
    """Relevance at the outputs of LAYERS and at the input, and the logits (float64).

    ``add_shares`` replaces the Adds' rule (to show the comparison can see a wrong one).
    """
    add_shares = add_shares or positive_shares
    mats = matrices()

    def conv(name, a):
        return np.maximum(a @ mats[name][0], 0.0)

    windows1 = forward_windows(model, x, "stem_relu", (28, 28, 16))
    windows2 = forward_windows(model, x, "block1_add", (14, 14, 16))
    x = x.reshape(len(x), -1).astype("float64")
    stem = conv("stem", x)
    pool1, _ = max_pool(stem, (28, 28, 16))
    b1 = conv("block1_1", pool1)
    add1 = pool1 + conv("block1_2", b1)
    pool2, _ = max_pool(add1, (14, 14, 16))
    widen = conv("widen", pool2)
    b2 = conv("block2_1", widen)
    add2 = widen + conv("block2_2", b2)
    gap = add2.reshape(len(x), 49, 32).mean(axis=1)
    dense = model.get_layer("logits")
    logits = gap @ dense.kernel.numpy().astype("float64") + dense.bias.numpy()

    def zplus(name, a, r):
        m, c, _ = mats[name]
        return reference("zplus", a, m, 0.0, r, c=c)

    top = logits.argmax(axis=1)
    r = np.zeros_like(logits)
    r[np.arange(len(x)), top] = logits[np.arange(len(x)), top]
    w_dense = dense.kernel.numpy().astype("float64")
    out = {}
    r = reference("zplus", gap, w_dense, 0.0, r, c=np.ones(w_dense.shape))
    out["gap"] = r
    per_position = add2.reshape(len(x), 49, 32)
    r = positive_shares(list(np.moveaxis(per_position, 1, 0)), r)  # GAP: 49 operands
    r = np.stack(r, axis=1).reshape(len(x), -1)
    out["block2_add"] = r
    r_widen, r_b2 = add_shares([widen, add2 - widen], r)
    r_widen = r_widen + zplus("block2_1", widen, zplus("block2_2", b2, r_b2))
    out["widen_conv"] = r_widen
    r = zplus("widen", pool2, r_widen)
    out["block1_pool"] = r
    r = max_pool_relevance(windows2, r, (14, 14, 16))
    out["block1_add"] = r
    r_pool1, r_b1 = add_shares([pool1, add1 - pool1], r)
    r_pool1 = r_pool1 + zplus("block1_1", pool1, zplus("block1_2", b1, r_b1))
    out["stem_pool"] = r_pool1
    r = max_pool_relevance(windows1, r_pool1, (28, 28, 16))
    out["stem_conv"] = r
    m, c, _ = mats["stem"]
    out["input"] = reference("zbox", x, m, 0.0, r, low=np.zeros(784), high=np.ones(784), c=c)
    return out, logits


@functools.lru_cache(maxsize=None)
def expected_relevance():
    """``reference_relevance`` of the shipped model on its samples, computed once."""
    model, x = shipped()
    return reference_relevance(model, x)


def test_reference_runs_the_trained_network():
    """Self-check: the explicit matrices give the model's logits."""
    model, x = shipped()
    _, logits = expected_relevance()
    keras_logits = tf_dtd.evaluate.baselines.predict_logits(model, x)
    np.testing.assert_allclose(logits, keras_logits, rtol=1e-4, atol=1e-4)


def test_every_layer_matches_the_reference():
    model, x = shipped()
    expected, logits = expected_relevance()
    relevance_model = tf_dtd.relevance_model(model, "deep_taylor_bounded",
                                             input_range=digits.INPUT_RANGE, layers=LAYERS)
    actual = relevance_model.predict(x, verbose=0)
    for name in LAYERS:
        got = actual["layers"][name].reshape(len(x), -1)
        scale = np.abs(expected[name]).max()
        np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=name)
    heatmap = actual["relevance"].reshape(len(x), -1)
    np.testing.assert_allclose(heatmap, expected["input"], rtol=1e-4,
                               atol=1e-5 * np.abs(expected["input"]).max())
    # and the whole chain conserves: the heatmap sums to the explained logit
    np.testing.assert_allclose(heatmap.sum(axis=1), logits.max(axis=1), rtol=1e-5)


def test_the_comparison_sees_a_misallocation():
    """Adds that split relevance equally (a plausible bug, invisible to conservation: the sum is
    the same) move relevance between the layers far beyond the tolerance above."""
    model, x = shipped()
    right, _ = expected_relevance()
    wrong, _ = reference_relevance(model, x, add_shares=lambda operands, r: [r / 2, r / 2])
    np.testing.assert_allclose(wrong["input"].sum(axis=1), right["input"].sum(axis=1),
                               rtol=1e-9)
    for name in ("widen_conv", "stem_pool", "input"):
        difference = np.abs(wrong[name] - right[name]).max()
        assert difference > 1e-2 * np.abs(right[name]).max(), name


def test_lrp_zero_is_gradient_times_input_on_the_trained_model():
    """On inputs without exact max-pooling ties (saturated strokes give them: a little noise
    breaks them). At a tie LRP-0 shares the window's relevance, the gradient picks one winner."""
    model, x = shipped()
    x = (x + np.random.default_rng(0).uniform(0, 1e-3, x.shape)).astype("float32")
    relevance = tf_dtd.explain(model, x, "lrp_z")
    logits_model = tf_dtd.evaluate.baselines.logit_model(model)
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        logits = logits_model(tensor)
        top = tf.reduce_max(logits, axis=1)
    expected = (tape.gradient(top, tensor) * tensor).numpy()
    np.testing.assert_allclose(relevance, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("preset", ["deep_taylor", "deep_taylor_bounded", "deep_taylor_unbounded",
                                    "lrp_alpha_1_beta_0"])
def test_deep_taylor_presets_conserve_and_stay_positive(preset):
    model, x = shipped()
    relevance, logits = tf_dtd.relevance_model(
        model, preset, input_range=digits.INPUT_RANGE, return_prediction=True).predict(
            x, verbose=0)
    top = logits.max(axis=1)
    assert np.all(top > 0)
    np.testing.assert_allclose(relevance.reshape(len(x), -1).sum(axis=1), top, rtol=1e-5)
    assert relevance.min() >= -1e-6 * np.abs(relevance).max()
