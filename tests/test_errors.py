"""Clear tf_dtd errors, and teaching the rewriter a custom layer."""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.relevance import layers as relevance_layers

L = keras.layers


def _head(inputs, h):
    return keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))


@pytest.mark.parametrize("make", [
    lambda h: L.Lambda(lambda t: t * 2, name="my_lambda")(h),
    lambda h: L.LSTM(4, name="my_lstm")(h),
    lambda h: L.Attention(name="my_attention")([h, h]),
])
def test_unsupported_layers_are_named(make):
    inputs = keras.Input((5, 4))
    model = _head(inputs, make(inputs))
    with pytest.raises(tf_dtd.UnsupportedLayerError,
                       match=r"'my_\w+' \(\w+\).*tf_dtd\.register_layer_rule"):
        tf_dtd.relevance_model(model, "lrp_z")


def test_softmax_inside_the_model_is_rejected():
    inputs = keras.Input((6,))
    h = L.Dense(6, activation="softmax", name="inner_softmax")(inputs)
    model = keras.Model(inputs, L.Dense(2)(h))
    with pytest.raises(tf_dtd.UnsupportedLayerError, match=r"'inner_softmax' \(Dense\)"):
        tf_dtd.relevance_model(model, "lrp_z")


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(tf_dtd.UnsupportedModelError, match="subclassed"):
        tf_dtd.relevance_model(net, "lrp_z")


def test_several_inputs_or_outputs_are_rejected():
    a, b = keras.Input((3,)), keras.Input((3,))
    two_in = keras.Model([a, b], L.Dense(2)(L.Concatenate()([a, b])))
    two_out = keras.Model(a, [L.Dense(2)(a), L.Dense(2)(a)])
    for model in (two_in, two_out):
        with pytest.raises(tf_dtd.UnsupportedModelError, match="one input and one output"):
            tf_dtd.relevance_model(model, "lrp_z")


def test_unbuilt_sequential_is_rejected():
    model = keras.Sequential([L.Dense(2)])
    with pytest.raises(tf_dtd.UnsupportedModelError, match="not built"):
        tf_dtd.relevance_model(model, "lrp_z")


def test_argument_errors():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3)(inputs))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="needs the input box.*input_range"):
        tf_dtd.relevance_model(model, "deep_taylor_bounded")
    with pytest.raises(tf_dtd.InvalidArgumentError, match="low < high"):
        tf_dtd.relevance_model(model, input_range=(1.0, 0.0))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="low < high"):
        tf_dtd.rules.ZBox([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"\[0, 3\). Received: target=3"):
        tf_dtd.relevance_model(model, "lrp_z", target=3)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="Received: target=-1"):
        tf_dtd.relevance_model(model, "lrp_z", target=-1)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="Received: target='top'"):
        tf_dtd.relevance_model(model, "lrp_z", target="top")
    with pytest.raises(tf_dtd.InvalidArgumentError, match="Unknown preset"):
        tf_dtd.relevance_model(model, "lrp_magic")
    with pytest.raises(tf_dtd.InvalidArgumentError, match="pair"):
        tf_dtd.relevance_model(model, "lrp_z", input_range=0.0)
    assert issubclass(tf_dtd.UnsupportedLayerError, tf_dtd.TfDtdError)
    assert issubclass(tf_dtd.InvalidArgumentError, ValueError)


def test_zbox_bounds_must_fit_the_input():
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.Conv2D(2, 3)(inputs))))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="does not broadcast"):
        tf_dtd.relevance_model(model, input_range=(np.zeros(5), np.ones(5)))


@keras.saving.register_keras_serializable(package="tf_dtd_tests")
class ChannelScale(L.Layer):
    """A user's layer: multiplies each channel by a learned positive factor."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.scale


def test_register_layer_rule_teaches_a_custom_layer(tmp_path):
    keras.utils.set_random_seed(4)  # fixed weights: no explained logit near 0 (rtol below)
    inputs = keras.Input((6,))
    h = L.Dense(5, activation="relu", use_bias=False)(inputs)
    h = ChannelScale(name="scale")(h)
    model = keras.Model(inputs, L.Dense(3, use_bias=False)(h))
    model.get_layer("scale").set_weights([np.array([0.5, 2.0, 1.0, 3.0, 0.1], "float32")])
    with pytest.raises(tf_dtd.UnsupportedLayerError, match=r"'scale' \(ChannelScale\)"):
        tf_dtd.relevance_model(model, "lrp_z")
    calls = []

    def handler(layer, rule, context):
        calls.append((layer.name, type(rule).__name__, context.nonnegative_inputs))
        return relevance_layers.ProportionalRelevance(layer, name=context.name, dtype=context.dtype)

    tf_dtd.register_layer_rule(ChannelScale, handler)
    x = np.random.default_rng(0).uniform(0, 1, (4, 6)).astype("float32")
    rel_model = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True)
    relevance, logits = rel_model.predict(x, verbose=0)
    assert calls == [("scale", "Z", (True,))]
    np.testing.assert_allclose(relevance.sum(-1), logits.max(-1), rtol=1e-5)
    # gradient×input: the custom layer is linear, so LRP-0 equals it here too
    w1, w2 = model.layers[1].get_weights()[0], model.layers[3].get_weights()[0]
    scale = model.get_layer("scale").get_weights()[0]
    hidden = x @ w1
    mask = (hidden > 0) * scale
    top = logits.argmax(-1)
    grad = np.einsum("ij,bj,jb->bi", w1, mask, w2[:, top])
    np.testing.assert_allclose(relevance, grad * x, rtol=1e-4, atol=1e-6)
    path = str(tmp_path / "custom.keras")
    rel_model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0)[0], relevance, rtol=1e-6)


def test_register_layer_rule_validates_arguments():
    with pytest.raises(tf_dtd.InvalidArgumentError, match="layer class"):
        tf_dtd.register_layer_rule("Dense", lambda *a: None)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="callable"):
        tf_dtd.register_layer_rule(ChannelScale, None)


def test_keras_operation_nodes_are_named():
    a = keras.Input((4,))
    h = L.Dense(4)(a)
    model = keras.Model(a, L.Dense(2)(keras.ops.exp(h)))
    with pytest.raises(tf_dtd.UnsupportedLayerError, match=r"No relevance handler for layer '\w+'"):
        tf_dtd.relevance_model(model, "lrp_z")


def test_explain_checks_per_sample_class_ids():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3)(inputs))
    x = np.ones((5, 4), "float32")
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"\[0, 3\). Received: min 0, max 7"):
        tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1, 2, 0, 7]))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="min -1"):
        tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1, 2, 0, -1]))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="one class id per sample"):
        tf_dtd.explain(model, x, "lrp_z", target=[0, 1])
    with pytest.raises(tf_dtd.InvalidArgumentError, match="integer"):
        tf_dtd.explain(model, x, "lrp_z", target=np.full(5, 0.5))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="pass target=<array"):
        tf_dtd.explain(model, x, "lrp_z", target="input")
    named = tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1, 2, 0, 1]), name="mine")
    assert named.shape == x.shape and np.abs(named).sum() > 0


@pytest.mark.parametrize("input_range", [(np.zeros(2), np.ones(3)), ("a", "b"), (0.0,)])
def test_malformed_input_range_is_a_tf_dtd_error(input_range):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, L.Dense(2)(inputs))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="input_range must be a pair"):
        tf_dtd.relevance_model(model, input_range=input_range)


def test_explain_class_ids_need_an_array_and_accept_numpy_scalars():
    import tensorflow as tf

    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3)(inputs))
    x = np.random.default_rng(0).uniform(0, 1, (4, 4)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(2)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="need x as an array"):
        tf_dtd.explain(model, dataset, "lrp_z", target=np.array([0, 1, 2, 0]))
    np.testing.assert_allclose(tf_dtd.explain(model, x, "lrp_z", target=np.array(2)),
                               tf_dtd.explain(model, x, "lrp_z", target=2))


def test_unknown_by_name_keys_are_an_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(3, name="head")(inputs))
    composite = tf_dtd.Composite(by_name={"haed": tf_dtd.rules.Z()})
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"does not have: \['haed'\]"):
        tf_dtd.relevance_model(model, composite)


def test_bounds_of_the_wrong_shape_are_named_after_the_rule():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(L.ZeroPadding2D(1)(inputs))))
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"ZBox\.(low|high) of shape \(3,\)"):
        tf_dtd.relevance_model(model, input_range=(np.zeros(3), np.ones(3)))
