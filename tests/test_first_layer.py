"""The first-layer rules (z^B, w²) read the pixels, also through padding and reshaping."""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd import rules

L = keras.layers


def _same_and_padded(seed=0):
    """Two models computing the same function: a 'same' convolution, and explicit zero padding
    followed by a 'valid' convolution with the same weights (ResNet's stem)."""
    inputs = keras.Input((6, 6, 2))
    conv = L.Conv2D(4, 3, padding="same", activation="relu")
    head = L.Dense(3)
    same = keras.Model(inputs, head(L.Flatten()(conv(inputs))))
    padded_in = keras.Input((6, 6, 2))
    conv_valid = L.Conv2D(4, 3, padding="valid", activation="relu")
    head_copy = L.Dense(3)
    h = conv_valid(L.ZeroPadding2D(1)(padded_in))
    padded = keras.Model(padded_in, head_copy(L.Flatten()(h)))
    rng = np.random.default_rng(seed)
    for source, copy in ((conv, conv_valid), (head, head_copy)):
        weights = [rng.normal(0, 0.5, w.shape).astype("float32") for w in source.get_weights()]
        source.set_weights(weights)
        copy.set_weights(weights)
    return same, padded


@pytest.mark.parametrize("input_range", [
    (-1.0, 1.0),
    (np.array([-1.0, 0.0]), np.array([1.0, 2.0])),  # per channel
    (np.full((6, 6, 2), -1.0), np.linspace(0.5, 2.0, 72).reshape(6, 6, 2)),  # per pixel
])
@pytest.mark.parametrize("preset", ["deep_taylor_bounded", "deep_taylor_unbounded"])
def test_zero_padding_in_front_of_the_first_layer_is_not_an_input(preset, input_range):
    same, padded = _same_and_padded()
    x = np.random.default_rng(1).uniform(-1, 1, (4, 6, 6, 2)).astype("float32")
    expected, logits = tf_dtd.relevance_model(same, preset, input_range=input_range,
                                              return_prediction=True).predict(x, verbose=0)
    actual = tf_dtd.explain(padded, x, preset, input_range=input_range)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(actual.sum(axis=(1, 2, 3)), logits.max(-1), rtol=1e-4)


def test_box_is_carried_through_reshaping_to_a_dense_first_layer():
    inputs = keras.Input((4, 4, 3))
    h = L.Dense(5, activation="relu")(L.Flatten()(L.Cropping2D(1)(L.ZeroPadding2D(1)(inputs))))
    model = keras.Model(inputs, L.Dense(2)(h))
    rng = np.random.default_rng(3)
    model.layers[-2].set_weights([rng.normal(0, 0.5, (48, 5)), np.full(5, 0.5)])
    model.layers[-1].set_weights([rng.uniform(0.1, 1.0, (5, 2)), np.zeros(2)])
    low, high = np.array([0.0, -1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    x = np.random.default_rng(0).uniform(low, high, (5, 4, 4, 3)).astype("float32")
    relevance, logits = tf_dtd.relevance_model(
        model, input_range=(low, high), return_prediction=True).predict(x, verbose=0)
    # reference: z^B on the Dense layer with the box flattened the same way
    w, b = model.layers[-2].get_weights()
    a = x.reshape(5, -1).astype("float64")
    lo = np.broadcast_to(low, (4, 4, 3)).reshape(-1)
    hi = np.broadcast_to(high, (4, 4, 3)).reshape(-1)
    hidden = np.maximum(a @ w + b, 0)
    w2 = model.layers[-1].get_weights()[0]
    top = logits.argmax(-1)
    r_hidden = hidden * np.maximum(w2, 0)[:, top].T
    r_hidden *= (logits.max(-1) / (hidden @ np.maximum(w2, 0))[np.arange(5), top])[:, None]
    z_ij = a[:, :, None] * w - lo[:, None] * np.maximum(w, 0) - hi[:, None] * np.minimum(w, 0)
    expected = (z_ij / z_ij.sum(1, keepdims=True) * r_hidden[:, None, :]).sum(-1)
    np.testing.assert_allclose(relevance.reshape(5, -1), expected, rtol=1e-4, atol=1e-7)


def test_hidden_features_concatenated_with_the_input_do_not_get_the_box():
    inputs = keras.Input((2,))
    hidden = L.Dense(1, activation="relu", use_bias=False, name="hidden")
    mix = L.Dense(1, activation="relu", use_bias=False, name="mix")
    outputs = L.Dense(1, use_bias=False, kernel_initializer="ones")(
        mix(L.Concatenate()([inputs, hidden(inputs)])))
    model = keras.Model(inputs, outputs)
    hidden.set_weights([np.array([[0.0], [5.0]], "float32")])
    mix.set_weights([np.array([[1.0], [0.0], [-0.05]], "float32")])
    rel_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
    assigned = {lay.name: type(lay.rule).__name__ for lay in rel_model.layers
                if isinstance(lay, tf_dtd.layers.KernelRelevance)}
    assert assigned["mix_relevance"] == "ZPlus" and assigned["hidden_relevance"] == "ZBox"
    relevance = rel_model.predict(np.array([[0.5, 0.5]], "float32"), verbose=0)
    assert relevance.min() >= 0


def test_a_first_rule_that_reaches_no_kernel_layer_is_an_error():
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, activation="relu")(L.BatchNormalization(name="input_norm")(inputs))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    with pytest.raises(tf_dtd.InvalidArgumentError,
                       match=r"reaches no Dense or conv.*'input_norm' \(BatchNormalization\)"):
        tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
    # without a first-layer rule the same model is fine
    assert np.isfinite(tf_dtd.explain(model, np.ones((1, 6, 6, 2), "float32"), "deep_taylor")).all()


def test_first_rule_is_saved_with_its_carried_box(tmp_path):
    _, padded = _same_and_padded()
    x = np.random.default_rng(2).uniform(0, 1, (3, 6, 6, 2)).astype("float32")
    rel_model = tf_dtd.relevance_model(padded, tf_dtd.Composite(first=rules.ZBox(0.0, 1.0)))
    expected = rel_model.predict(x, verbose=0)
    path = str(tmp_path / "padded.keras")
    rel_model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).predict(x, verbose=0), expected)


@keras.saving.register_keras_serializable(package="tf_dtd_tests")
class BoxOnly(L.Layer):
    """A user's relevance layer for a user's linear layer: z^B written by hand."""

    constant_inputs = ("high", "low")

    def __init__(self, kernel, **kwargs):
        super().__init__(**kwargs)
        self.kernel = np.asarray(kernel, "float32")

    def call(self, inputs):
        x, relevance, high, low = inputs
        w = keras.ops.convert_to_tensor(self.kernel)
        w_pos, w_neg = keras.ops.maximum(w, 0), keras.ops.minimum(w, 0)
        z = x @ w - low @ w_pos - high @ w_neg
        s = keras.ops.divide_no_nan(relevance, z)
        return x * (s @ keras.ops.transpose(w)) - low * (s @ keras.ops.transpose(w_pos)) - (
            high * (s @ keras.ops.transpose(w_neg)))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


class MyLinear(L.Dense):
    pass


def test_a_users_first_layer_receives_the_carried_box():
    seen = []

    def handler(layer, rule, context):
        seen.append((layer.name, context.is_first, context.input_constants))
        return BoxOnly(keras.ops.convert_to_numpy(layer.kernel), name=context.name)

    tf_dtd.register_layer_rule(MyLinear, handler)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, use_bias=False)(
        MyLinear(3, activation="relu", use_bias=False, name="mine")(inputs)))
    x = np.random.default_rng(0).uniform(0, 1, (3, 4)).astype("float32")
    relevance, logits = tf_dtd.relevance_model(
        model, input_range=(0.0, 1.0), return_prediction=True).predict(x, verbose=0)
    assert seen == [("mine", True, ("high", "low"))]
    top = logits.max(-1)
    np.testing.assert_allclose(relevance.sum(-1)[top > 0], top[top > 0], rtol=1e-5)


@pytest.mark.parametrize("preset", ["deep_taylor_bounded", "deep_taylor_unbounded",
                                    "lrp_epsilon_plus_flat"])
def test_rescaling_and_normalization_front_ends_carry_the_box(preset):
    mean, variance = np.array([0.4, 0.6]), np.array([0.04, 0.09])
    raw = keras.Input((6, 6, 2))
    h = L.Normalization(mean=mean, variance=variance)(L.Rescaling(1 / 255.0)(raw))
    conv = L.Conv2D(3, 3, padding="same", activation="relu")
    head = L.Dense(2)
    with_front_end = keras.Model(raw, head(L.Flatten()(conv(h))))
    normalized = keras.Input((6, 6, 2))
    without = keras.Model(normalized, head(L.Flatten()(conv(normalized))))
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 6, 6, 2)).astype("float32")
    x = ((pixels / 255.0 - mean) / np.sqrt(variance)).astype("float32")
    box = tf_dtd.input_box(mean, np.sqrt(variance), pixel_range=(0.0, 1.0))
    expected = tf_dtd.explain(without, x, preset, input_range=box)
    actual = tf_dtd.explain(with_front_end, pixels, preset, input_range=(0.0, 255.0))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert np.abs(expected).sum() > 0
