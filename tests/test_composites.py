"""Composite precedence, first-layer detection through the graph, and preset resolution."""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd import rules
from tf_dtd.composites import resolve

L = keras.layers


def _rules_by_layer(rel_model):
    """Forward layer name -> the rule its relevance layer applies."""
    return {layer.name.removesuffix("_relevance"): layer.rule for layer in rel_model.layers
            if isinstance(layer, tf_dtd.layers.KernelRelevance)}


def _model():
    inputs = keras.Input((8, 8, 3))
    padded = L.ZeroPadding2D(1)(inputs)
    a = L.Conv2D(4, 3, name="conv_after_padding", activation="relu")(padded)
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same", name="conv_in_nested",
                                          activation="relu")(inner_in), name="inner")
    b = inner(inputs)
    c = L.Conv2D(4, 3, padding="same", name="conv_second", activation="relu")(
        L.Concatenate()([a, b]))
    outputs = L.Dense(3, name="head")(L.Flatten()(c))
    return keras.Model(inputs, outputs)


def test_first_layers_are_found_through_padding_and_nested_models():
    composite = tf_dtd.Composite(default=rules.Z(), first=rules.WSquare())
    assigned = _rules_by_layer(tf_dtd.relevance_model(_model(), composite))
    assert {name for name, rule in assigned.items() if isinstance(rule, rules.WSquare)} == {
        "conv_after_padding", "conv_in_nested"}
    assert isinstance(assigned["conv_second"], rules.Z)
    assert isinstance(assigned["head"], rules.Z)


def test_precedence_by_name_then_first_then_by_type_then_default():
    composite = tf_dtd.Composite(
        default=rules.Z(),
        first=rules.WSquare(),
        by_type={L.Conv2D: rules.ZPlus(), L.Dense: rules.Epsilon(0.5)},
        by_name={"conv_in_nested": rules.Epsilon(0.25)},
    )
    assigned = _rules_by_layer(tf_dtd.relevance_model(_model(), composite))
    assert assigned["conv_in_nested"] == rules.Epsilon(0.25)  # by_name beats first
    assert isinstance(assigned["conv_after_padding"], rules.WSquare)  # first beats by_type
    assert isinstance(assigned["conv_second"], rules.ZPlus)  # by_type beats default
    assert assigned["head"] == rules.Epsilon(0.5)


def test_by_type_follows_the_class_hierarchy():
    class MyDense(L.Dense):
        pass

    composite = tf_dtd.Composite(default=rules.Z(), by_type={L.Dense: rules.ZPlus()})
    layer = MyDense(2, name="mine")
    assert isinstance(composite.rule_for(layer), rules.ZPlus)
    assert isinstance(composite.rule_for(L.Conv2D(2, 1)), rules.Z)


def test_resolve_accepts_presets_rules_and_composites():
    assert isinstance(resolve("deep_taylor").default, rules.ZPlus)
    bounded = resolve("deep_taylor_bounded", (0.0, 1.0))
    assert isinstance(bounded.first, rules.ZBox) and isinstance(bounded.default, rules.ZPlus)
    assert isinstance(resolve("deep_taylor_unbounded").first, rules.WSquare)
    assert resolve(rules.Epsilon(0.1)).default == rules.Epsilon(0.1)
    composite = tf_dtd.Composite()
    assert resolve(composite) is composite
    assert set(tf_dtd.PRESETS) >= {"deep_taylor", "deep_taylor_bounded", "deep_taylor_unbounded",
                                   "lrp_z", "lrp_epsilon"}
    with pytest.raises(tf_dtd.InvalidArgumentError, match="preset name"):
        resolve(42)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="must be a tf_dtd.rules.Rule"):
        tf_dtd.Composite(default="z")
    with pytest.raises(tf_dtd.InvalidArgumentError, match="layer classes"):
        tf_dtd.Composite(by_type={"Dense": rules.Z()})


def test_first_rule_overridden_by_name_is_not_an_error():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="only")(inputs))
    composite = tf_dtd.Composite(default=rules.ZPlus(), first=rules.WSquare(),
                                 by_name={"only": rules.Z()})
    assigned = _rules_by_layer(tf_dtd.relevance_model(model, composite))
    assert assigned == {"only": rules.Z()}


@pytest.mark.parametrize("preset", sorted(tf_dtd.PRESETS))
def test_every_preset_explains_a_small_conv_net(preset):
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 3)).astype("float32")
    relevance, logits = tf_dtd.relevance_model(
        model, preset, input_range=(0.0, 1.0), return_prediction=True).predict(x, verbose=0)
    assert np.all(np.isfinite(relevance))
    assert np.all(np.abs(relevance).reshape(3, -1).sum(-1) > 0)


def test_epsilon_plus_presets_assign_their_rules():
    plus = _rules_by_layer(tf_dtd.relevance_model(_model(), "lrp_epsilon_plus"))
    assert plus["head"] == rules.Epsilon() and isinstance(plus["conv_second"], rules.ZPlus)
    flat = _rules_by_layer(tf_dtd.relevance_model(_model(), "lrp_epsilon_plus_flat"))
    assert isinstance(flat["conv_after_padding"], rules.Flat)
    assert isinstance(flat["conv_in_nested"], rules.Flat)
    assert flat["head"] == rules.Epsilon()


def _pointwise_model():
    """Conv, a Dense on the image tensor (a 1×1 convolution), pooling, two fully connected."""
    inputs = keras.Input((4, 4, 2))
    h = L.Conv2D(3, 3, padding="same", activation="relu", name="conv")(inputs)
    h = L.Dense(3, activation="relu", name="pointwise")(h)
    h = L.Dense(4, activation="relu", name="fc")(L.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, L.Dense(2, name="top")(h))


def test_fully_connected_rule_reaches_only_layers_that_read_flat_features():
    plus = _rules_by_layer(tf_dtd.relevance_model(_pointwise_model(), "lrp_epsilon_plus"))
    assert plus["fc"] == plus["top"] == rules.Epsilon()
    assert isinstance(plus["pointwise"], rules.ZPlus) and isinstance(plus["conv"], rules.ZPlus)
    box = _rules_by_layer(tf_dtd.relevance_model(
        _pointwise_model(), "lrp_epsilon_gamma_box", input_range=(0.0, 1.0)))
    assert box["fc"] == box["top"] == rules.Z()
    assert box["pointwise"] == rules.Gamma(0.25)  # by position: kernel layer 1 of 4
    # precedence: by_type beats fully_connected, fully_connected beats by_index
    composite = tf_dtd.Composite(default=rules.Z(), fully_connected=rules.Epsilon(0.5),
                                 by_type={L.Conv2D: rules.Flat()}, by_name={"top": rules.Z()},
                                 by_index={(0, None): rules.Gamma(0.1)})
    assigned = _rules_by_layer(tf_dtd.relevance_model(_pointwise_model(), composite))
    assert assigned == {"conv": rules.Flat(), "pointwise": rules.Gamma(0.1),
                        "fc": rules.Epsilon(0.5), "top": rules.Z()}
    with pytest.raises(tf_dtd.InvalidArgumentError, match="fully_connected must be"):
        tf_dtd.Composite(fully_connected="epsilon")


def test_epsilon_plus_conserves_where_a_pointwise_dense_cancels_its_bias():
    """ConvNeXt's failure in small: a pointwise Dense whose output p = 1 is 5000.5 − 4999.5
    (input times kernel, plus bias) feeds a residual Add with the negative h = −0.5. The z⁺ shares
    of the Add give p all of the relevance of r = h + p; ε on the pointwise layer would then
    pass on (p − b) / p = 5000 times it. As a 1×1 convolution it takes z⁺ and conserves."""
    inputs = keras.Input((2, 2, 1))
    h = L.Conv2D(1, 1, name="stem", kernel_initializer="ones",
                 bias_initializer=keras.initializers.Constant(-1.0))(inputs)
    p = L.Dense(1, name="pointwise", kernel_initializer=keras.initializers.Constant(10001.0),
                bias_initializer=keras.initializers.Constant(-4999.5))(inputs)
    r = L.ReLU()(L.Add()([h, p]))
    outputs = L.Dense(1, name="top", kernel_initializer="ones")(L.GlobalAveragePooling2D()(r))
    model = keras.Model(inputs, outputs)
    x = np.full((1, 2, 2, 1), 0.5, "float32")
    logit = float(model(x)[0, 0])
    assert logit == pytest.approx(0.5)
    relevance = tf_dtd.explain(model, x, "lrp_epsilon_plus")
    np.testing.assert_allclose(relevance.sum(), logit, rtol=1e-5)
    assert relevance.min() >= 0
    epsilon_everywhere = tf_dtd.Composite(default=rules.ZPlus(), by_type={L.Dense: rules.Epsilon()})
    amplified = tf_dtd.explain(model, x, epsilon_everywhere).sum() / logit
    np.testing.assert_allclose(amplified, 10001.0 * 0.5 / 1.0, rtol=1e-3)


def _chain(depth=6):
    inputs = keras.Input((8, 8, 2))
    h = inputs
    for i in range(depth):
        h = L.Conv2D(2, 3, padding="same", activation="relu", name=f"c{i}")(h)
    return keras.Model(inputs, L.Dense(3, name="top")(L.Flatten()(h)))


def test_by_index_counts_kernel_layers_with_negative_and_fractional_bounds():
    composite = tf_dtd.Composite(
        default=rules.Z(),
        by_index={0: rules.Flat(), -1: rules.Epsilon(0.5), (1, 3): rules.Gamma(0.1),
                  (0.5, 1.0): rules.Gamma(0.2)},
    )
    assigned = _rules_by_layer(tf_dtd.relevance_model(_chain(), composite))
    # 7 kernel layers: c0..c5, top; 0.5 of 7 -> index 3
    assert assigned["c0"] == rules.Flat()
    assert assigned["c1"] == assigned["c2"] == rules.Gamma(0.1)
    assert assigned["c3"] == assigned["c4"] == assigned["c5"] == rules.Gamma(0.2)
    assert assigned["top"] == rules.Epsilon(0.5)  # -1 is listed before (0.5, 1.0)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="ints or \\(start, stop\\) pairs"):
        tf_dtd.Composite(by_index={"c0": rules.Z()})


def test_epsilon_gamma_box_split():
    assigned = _rules_by_layer(tf_dtd.relevance_model(
        _chain(), "lrp_epsilon_gamma_box", input_range=(0.0, 1.0)))
    assert isinstance(assigned["c0"], rules.ZBox)
    assert assigned["c1"] == assigned["c2"] == rules.Gamma(0.25)
    assert assigned["c3"] == assigned["c5"] == rules.Epsilon(0.25, relative=True)
    assert assigned["top"] == rules.Z()


@pytest.mark.parametrize("mode, expected", [
    ("winner_take_all", [0.0, 0.0, 0.0, 4.0]),
    ("proportional", [0.4, 0.8, 1.2, 1.6]),  # a_i / Σ a · R over the window
])
def test_max_pooling_modes(mode, expected):
    inputs = keras.Input((2, 2, 1))
    h = L.Flatten()(L.MaxPooling2D(2)(inputs))
    model = keras.Model(inputs, L.Dense(1, use_bias=False, kernel_initializer="ones")(h))
    x = np.array([[1.0, 2.0], [3.0, 4.0]], "float32").reshape(1, 2, 2, 1)
    composite = tf_dtd.Composite(default=rules.Z(), max_pooling=mode)
    relevance = tf_dtd.explain(model, x, composite)
    np.testing.assert_allclose(relevance.reshape(-1), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="max_pooling must be one of"):
        tf_dtd.Composite(max_pooling="average")


def test_input_box_for_caffe_and_torch_preprocessing():
    caffe_mean = np.array([103.939, 116.779, 123.68])
    low, high = tf_dtd.input_box(caffe_mean)
    pixels = np.random.default_rng(0).uniform(0, 255, (50, 3))
    preprocessed = pixels - caffe_mean  # what vgg16.preprocess_input does (after BGR flip)
    assert np.all(preprocessed >= low) and np.all(preprocessed <= high)
    np.testing.assert_allclose(low, -caffe_mean)
    np.testing.assert_allclose(high, 255.0 - caffe_mean)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    low, high = tf_dtd.input_box(mean, std, pixel_range=(0.0, 1.0))
    np.testing.assert_allclose(low, -mean / std)
    np.testing.assert_allclose(high, (1.0 - mean) / std)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="std > 0"):
        tf_dtd.input_box(0.5, [1.0, 0.0])
    # the box drives z^B: relevance ≥ 0 for inputs inside it
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(
        L.Conv2D(4, 3, activation="relu")(inputs))))
    x = (np.random.default_rng(1).uniform(0, 1, (3, 6, 6, 3)) - mean) / std
    relevance, logits = tf_dtd.relevance_model(
        model, input_range=(low, high), return_prediction=True).predict(x, verbose=0)
    positive = logits.max(-1) > 0
    assert positive.any() and relevance[positive].min() >= -1e-7
