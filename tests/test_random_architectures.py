"""Hypothesis-generated Functional models: the rewriter's invariants on architectures nobody wrote.

Each example is a small random DAG of convolutions (strides, padding, dilation), pooling, Add,
Concatenate, fan-out, BatchNorm (foldable or not), nested sub-models and a Dense head, with a
softmax or linear output. Checked on every example:

- the relevance model's logits equal the original model's pre-softmax output;
- LRP-0 equals gradient×input (bias-free ReLU DAGs without unfoldable BatchNorm);
- Deep Taylor (z^B + z⁺) conserves the logit and is non-negative;
- batch invariance, and the user's weights are untouched.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_dtd

L = keras.layers


@st.composite
def architectures(draw):
    """A recipe: a list of block names plus the head; built by :func:`build`."""
    blocks = draw(st.lists(st.sampled_from(
        ["conv", "strided_conv", "dilated_conv", "maxpool", "avgpool", "add", "concat",
         "conv_bn", "nested"]), min_size=1, max_size=4))
    head = draw(st.sampled_from(["flatten", "global_avg", "global_max"]))
    softmax = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return blocks, head, softmax, seed


def build(recipe):
    blocks, head, softmax, seed = recipe
    keras.utils.set_random_seed(seed)
    conv = lambda filters, **kw: L.Conv2D(filters, 3, padding="same", activation="relu",  # noqa: E731
                                          use_bias=False, **kw)
    inputs = keras.Input((8, 8, 2))
    h = inputs
    for block in blocks:
        if block == "conv":
            h = conv(3)(h)
        elif block == "strided_conv":
            h = L.Conv2D(3, 2, strides=2, padding="valid", activation="relu", use_bias=False)(h) \
                if h.shape[1] >= 2 else conv(3)(h)
        elif block == "dilated_conv":
            h = conv(3, dilation_rate=2)(h)
        elif block == "maxpool":
            h = L.MaxPooling2D(2, padding="same")(h)
        elif block == "avgpool":
            h = L.AveragePooling2D(2, strides=1, padding="same")(h)
        elif block == "add":  # fan-out into two branches, merged by Add
            h = L.Add()([conv(3)(h), conv(3)(h)])
        elif block == "concat":
            h = L.Concatenate()([conv(2)(h), h])
        elif block == "conv_bn":  # foldable BatchNorm with random statistics
            h = L.Conv2D(3, 3, padding="same", use_bias=False)(h)
            norm = L.BatchNormalization()
            h = L.ReLU()(norm(h))
            channels = norm.gamma.shape[0]
            rng = np.random.default_rng(seed)
            # zero mean and shift: the folded layer stays bias-free, so z⁺ conserves exactly
            norm.set_weights([rng.uniform(0.5, 1.5, channels), np.zeros(channels),
                              np.zeros(channels), rng.uniform(0.5, 2, channels)])
        elif block == "nested":
            inner_in = keras.Input(tuple(h.shape[1:]))
            h = keras.Model(inner_in, conv(3)(inner_in))(h)
    h = {"flatten": L.Flatten(), "global_avg": L.GlobalAveragePooling2D(),
         "global_max": L.GlobalMaxPooling2D()}[head](h)
    outputs = L.Dense(4, use_bias=False, activation="softmax" if softmax else None)(h)
    return keras.Model(inputs, outputs)


def _logit_model(model):
    head = model.layers[-1]
    return lambda x: keras.Model(model.inputs[0], head.input)(x) @ head.kernel


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=25, **_SETTINGS)
@given(architectures())
def test_rewriter_invariants_on_random_dags(recipe):
    check_invariants(recipe)


@pytest.mark.slow
@settings(max_examples=100, **_SETTINGS)
@given(architectures())
def test_rewriter_invariants_on_many_random_dags(recipe):
    check_invariants(recipe)


def check_invariants(recipe):
    model = build(recipe)
    before = [w.tobytes() for w in model.get_weights()]
    x = np.random.default_rng(recipe[3]).uniform(0, 1, (5, 8, 8, 2)).astype("float32")
    logit_fn = _logit_model(model)
    expected_logits = logit_fn(x).numpy()

    relevance, logits = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True).predict(
        x, verbose=0)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        top = tf.reduce_max(logit_fn(xt), axis=-1)
    gradient_times_input = (tape.gradient(top, xt) * xt).numpy()
    scale = np.abs(gradient_times_input).max() + 1e-12
    np.testing.assert_allclose(relevance, gradient_times_input, rtol=1e-3, atol=1e-5 * scale)

    dtd = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), return_prediction=True)
    heatmaps, logits = dtd.predict(x, batch_size=5, verbose=0)
    positive = logits.max(-1) > 1e-3  # a negative top logit gives negative relevance
    sums = heatmaps.reshape(len(x), -1).sum(-1)
    np.testing.assert_allclose(sums[positive], logits.max(-1)[positive], rtol=1e-3)
    assert not positive.any() or heatmaps[positive].min() >= -1e-7
    single = dtd.predict(x[3:4], verbose=0)[0]
    np.testing.assert_allclose(single, heatmaps[3:4], rtol=1e-5, atol=1e-6 * np.abs(single).max())
    assert [w.tobytes() for w in model.get_weights()] == before


@pytest.mark.parametrize("seed", [0])
def test_builder_makes_every_block(seed):
    """The strategy's builder really produces each block (guards the property test itself)."""
    recipe = (["conv", "strided_conv", "dilated_conv", "maxpool", "avgpool", "add", "concat",
               "conv_bn", "nested"], "flatten", True, seed)
    model = build(recipe)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "MaxPooling2D", "AveragePooling2D", "Add", "Concatenate",
            "BatchNormalization", "Functional", "Flatten", "Dense"} <= kinds
