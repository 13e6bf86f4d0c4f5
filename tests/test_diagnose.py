"""tf_dtd.diagnose names the Deep Taylor assumptions a model violates, and only those."""

import keras
import numpy as np

import tf_dtd

L = keras.layers


def _kinds(findings):
    return {finding.kind: finding for finding in findings}


def test_a_bias_free_relu_net_violates_nothing():
    inputs = keras.Input((6, 6, 1))
    h = L.Conv2D(2, 3, activation="relu", use_bias=False)(inputs)
    model = keras.Model(inputs, L.Dense(3, use_bias=False)(L.Flatten()(h)))
    x = np.random.default_rng(0).uniform(0, 1, (2, 6, 6, 1))

    findings = tf_dtd.diagnose(model, "deep_taylor_bounded", input_range=(0.0, 1.0), x=x)

    assert findings == []


def test_each_violation_is_reported_once_with_its_layers():
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, padding="same", name="conv")(inputs)
    h = L.Activation("gelu", name="gelu")(h)
    h = L.Add(name="add")([h, L.Conv2D(3, 1, activation="relu", name="side")(inputs)])
    h = L.BatchNormalization(name="loose_bn")(h)   # after an Add: cannot be folded
    gate = L.Dense(3, activation="sigmoid", name="gate")(L.GlobalAveragePooling2D()(h))
    h = L.Multiply(name="excite")([h, L.Reshape((1, 1, 3))(gate)])
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(h)))
    model.get_layer("conv").bias.assign([0.5, -0.5, 0.0])
    x = np.random.default_rng(1).uniform(0, 2, (4, 6, 6, 2))

    findings = _kinds(tf_dtd.diagnose(model, "deep_taylor_bounded", input_range=(0.0, 1.0),
                                      x=x))

    assert set(findings) == {"non_relu_activation", "unfoldable_batch_norm", "positive_bias",
                             "non_linear_interaction", "input_outside_box"}
    gelu = [f for f in tf_dtd.diagnose(model, "deep_taylor", input_range=(0.0, 1.0))
            if "gelu" in f.message]
    assert len(gelu) == 1 and gelu[0].layers == ("gelu",)
    assert findings["unfoldable_batch_norm"].layers == ("loose_bn",)
    assert findings["positive_bias"].layers == ("conv",)
    assert "'conv' (1/3, max 0.5)" in findings["positive_bias"].message
    assert findings["non_linear_interaction"].layers == ("excite",)
    assert "4 of 4 samples" in findings["input_outside_box"].message


def test_non_relu_activations_only_matter_under_deep_taylor_rules():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, use_bias=False)(
        L.Dense(3, activation="tanh", use_bias=False)(inputs)))
    assert "non_relu_activation" in _kinds(tf_dtd.diagnose(model, "deep_taylor"))
    assert tf_dtd.diagnose(model, "lrp_epsilon") == []


def test_unsupported_layers_are_findings_not_errors():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(L.UnitNormalization(name="unit")(inputs)))
    findings = tf_dtd.diagnose(model, "lrp_z")
    assert [(f.kind, f.layers) for f in findings] == [("unsupported_layer", ("unit",))]
