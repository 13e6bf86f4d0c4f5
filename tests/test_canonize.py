"""The canonical copy: BatchNorm folded into every linear layer kind, SeparableConv one layer.

Folding must keep the logits, and a SeparableConv is one linear map to the composite (computed
as depthwise then pointwise, explained with the fused kernel): ``by_name`` / ``by_type`` /
``first`` give it one rule, and ``by_index`` counts it once.
"""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd import rules
from tf_dtd.model import canonize, graph

L = keras.layers


def _randomise_batch_norm(model, rng):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            mean, variance = layer.moving_mean.shape, layer.moving_variance.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, mean))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, variance))
            layer.gamma.assign(rng.uniform(-1.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0, 0.5, layer.beta.shape))


FOLDABLE = {
    "depthwise_conv2d": lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
    "depthwise_conv1d": lambda: L.DepthwiseConv1D(3, padding="same", use_bias=False),
    "separable_conv2d": lambda: L.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=False),
    "separable_conv1d": lambda: L.SeparableConv1D(4, 3, strides=2, padding="same"),
    "conv2d_transpose": lambda: L.Conv2DTranspose(3, 3, strides=2, padding="same"),
    "conv1d_transpose": lambda: L.Conv1DTranspose(3, 2, strides=2, use_bias=False),
}


@pytest.mark.parametrize("kind", sorted(FOLDABLE))
def test_batch_norm_folds_into_every_linear_layer_kind(kind):
    rng = np.random.default_rng(3)
    shape = (6, 6, 3) if "2d" in kind else (8, 3)
    x = keras.Input(shape)
    h = FOLDABLE[kind]()(x)
    h = L.BatchNormalization(name="norm")(h)
    h = L.ReLU()(h)
    model = keras.Model(x, L.Dense(4)(L.Flatten()(h)))
    _randomise_batch_norm(model, rng)
    images = rng.normal(size=(3,) + shape).astype("float32")

    canonical = canonize.canonical_model(graph.trace(model), name="canonical").model

    assert not any(isinstance(layer, L.BatchNormalization) for layer in canonical.layers)
    np.testing.assert_allclose(canonical.predict(images, verbose=0),
                               model.predict(images, verbose=0), rtol=1e-5, atol=1e-5)


def _separable_model():
    x = keras.Input((6, 6, 2))
    h = L.SeparableConv2D(3, 3, name="sep", use_bias=False)(x)
    h = L.ReLU()(h)
    h = L.Conv2D(2, 1, name="conv", use_bias=False)(h)
    return keras.Model(x, L.Dense(3, name="dense", use_bias=False)(L.Flatten()(h)))


def _rule_of(relevance_model, name):
    return relevance_model.get_layer(f"{name}_relevance").rule


def test_separable_conv_is_one_linear_layer_with_the_separable_rule():
    model = _separable_model()
    composite = tf_dtd.Composite(default=rules.Z(), first=rules.ZBox(-1.0, 1.0),
                                 by_type={L.SeparableConv2D: rules.Gamma(0.5)})

    relevance_model = tf_dtd.relevance_model(model, composite)

    assert isinstance(_rule_of(relevance_model, "sep"), rules.ZBox)  # reads the pixels
    assert _rule_of(relevance_model, "conv") == rules.Z()
    assert not [layer.name for layer in relevance_model.layers
                if "depthwise" in layer.name or "pointwise" in layer.name]

    relevance_model = tf_dtd.relevance_model(
        model, tf_dtd.Composite(default=rules.Z(), by_type={L.SeparableConv2D: rules.Gamma(0.5)}))
    assert _rule_of(relevance_model, "sep") == rules.Gamma(0.5)
    by_name = tf_dtd.Composite(default=rules.Z(), by_name={"sep": rules.ZPlus()})
    assert _rule_of(tf_dtd.relevance_model(model, by_name), "sep") == rules.ZPlus()


def test_separable_conv_counts_once_in_by_index():
    model = _separable_model()  # kernel layers: sep, conv, dense
    composite = tf_dtd.Composite(default=rules.Z(), by_index={1: rules.ZPlus(),
                                                              -1: rules.Epsilon(0.5)})

    relevance_model = tf_dtd.relevance_model(model, composite)

    assert _rule_of(relevance_model, "sep") == rules.Z()
    assert _rule_of(relevance_model, "conv") == rules.ZPlus()
    assert _rule_of(relevance_model, "dense") == rules.Epsilon(0.5)


def test_separable_conv_keeps_lrp_zero_equal_to_gradient_times_input():
    import tensorflow as tf

    model = _separable_model()
    images = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")

    relevance = tf_dtd.explain(model, images, "lrp_z", target=1)

    tensor = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        logit = model(tensor)[:, 1]
    expected = tape.gradient(logit, tensor).numpy() * images
    np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-6)
