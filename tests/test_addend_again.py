"""An addend of a sum computed again from the sum instead of held (``reuse.derived_addends``).

Under LRP-0/ε an ``Add`` reads its ``z`` unit by unit and sends relevance as products of its
inputs; an addend that only the ``Add`` reads (ResNet's third convolution) is then computed again
as the ``Add``'s ``z`` minus the other addends when relevance arrives, and the pass holds the
sum and the other addends it holds anyway. Where the ``Add`` reads ``relu(sum)`` as its ``z``,
the addend computed again is wrong at units with ``sum ≤ 0`` — which hold no relevance. Under
z⁺ the ``Add`` reads no output of its own: the pass holds the sum in place of the ReLU after it
and the addend computed again is the held one up to rounding everywhere.
"""

import keras
import numpy as np
import pytest
from references import residual_dense_block, residual_dense_block_epsilon

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance import reuse
from tf_dtd.relevance.recompute import AddendAgain, AfterRelevance

L = keras.layers
EPSILON = 0.25


def _again(relevance_model):
    return sorted(layer.name for layer in relevance_model.layers
                  if isinstance(layer, AddendAgain))


def _reads(relevance_model, name):
    """The layers whose outputs the relevance call of layer ``name`` reads (forward tensors)."""
    nodes = relevance_model.get_layer(f"{name}_relevance")._inbound_nodes
    (call,) = [node for node in nodes if len(node.input_tensors) > 1]
    return [t._keras_history.operation.name for t in call.input_tensors]


@pytest.mark.parametrize("shortcut_dense", [False, True])
def test_epsilon_computes_the_third_layers_output_again(shortcut_dense):
    model = residual_dense_block(shortcut_dense)
    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    assert _again(relevance_model) == ["third_output_again"]
    assert "third_output_again" in _reads(relevance_model, "add")
    assert _reads(relevance_model, "third")[1] == "third_output_again"  # its z
    x = np.random.default_rng(12).normal(size=(32, 5)).astype("float32")
    expected = residual_dense_block_epsilon(model, x, EPSILON, shortcut_dense)
    actual = relevance_model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def _convresidual_dense_block():
    """A ResNet bottleneck: convolutions with BatchNorm (folded), a convolution shortcut."""
    keras.utils.set_random_seed(13)
    x = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(x)
    h = L.Conv2D(4, 1, activation="relu", name="first")(a)
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="third")(h)
    h = L.BatchNormalization(name="third_bn")(h)
    shortcut = L.BatchNormalization(name="shortcut_bn")(L.Conv2D(8, 1, name="shortcut")(a))
    y = L.ReLU(name="out")(L.Add(name="add")([shortcut, h]))
    head = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(y))
    model = keras.Model(x, head)
    rng = np.random.default_rng(14)
    for name in ("third_bn", "shortcut_bn"):
        layer = model.get_layer(name)
        gamma, beta, mean, variance = layer.get_weights()
        layer.set_weights([rng.uniform(0.5, 2.0, gamma.shape), rng.normal(0, 0.5, beta.shape),
                           rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    return model


def _assert_matches_held(derived, model, composite, x, monkeypatch):
    """``derived``'s heatmaps against the same relevance model holding every addend (the
    derivation patched off): within float32 rounding."""
    actual = derived.predict(x, verbose=0)
    monkeypatch.setattr(reuse, "derived_addends", lambda plan, reverse: {})
    held = tf_dtd.relevance_model(model, composite)
    assert _again(held) == []
    expected = held.predict(x, verbose=0)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("flat_pooling", [False, True])
def test_the_addend_computed_again_matches_the_held_one(flat_pooling, monkeypatch):
    """Against the same relevance model holding the addend: within float32 rounding. With the
    flat rule on the pooling the ReLU's zeros get relevance, so the ``Add`` reads its own sum
    (not ``relu``) and the addend computed again is the held one up to rounding everywhere."""
    model = _convresidual_dense_block()
    composite = tf_dtd.Composite(default=rules.Epsilon(EPSILON),
                                 by_name={"gap": rules.Flat()} if flat_pooling else {})
    x = np.random.default_rng(15).uniform(0, 1, size=(16, 8, 8, 3)).astype("float32")
    derived = tf_dtd.relevance_model(model, composite)
    assert _again(derived) == ["third_output_again"]
    assert _reads(derived, "add")[2] == ("add" if flat_pooling else "out")  # its z
    _assert_matches_held(derived, model, composite, x, monkeypatch)


def _recomputed(relevance_model):
    return sorted(layer.name for layer in relevance_model.layers
                  if isinstance(layer, AfterRelevance))


@pytest.mark.parametrize("flat_pooling", [False, True])
@pytest.mark.parametrize("preset", ["lrp_epsilon_plus", "deep_taylor_bounded"])
def test_z_plus_on_the_sum_computes_the_addend_again_from_the_held_sum(preset, flat_pooling,
                                                                       monkeypatch):
    """z⁺ on the Add reads no output of its own: the pass holds the sum in place of the ReLU
    after it, which is computed again when relevance arrives, and the third convolution's
    output is the sum minus the shortcut's — up to rounding everywhere, also where the sum is
    negative (the flat rule on the pooling sends relevance to the ReLU's zeros, and z⁺ on
    the Add spreads what no positive part explains by the addends' magnitudes)."""
    model = _convresidual_dense_block()
    first = {"first": rules.ZBox(0.0, 1.0)} if preset == "deep_taylor_bounded" else {
        "fully_connected": rules.Epsilon()}
    composite = tf_dtd.Composite(default=rules.ZPlus(), **first,
                                 by_name={"gap": rules.Flat()} if flat_pooling else {})
    derived = tf_dtd.relevance_model(model, composite)
    assert _again(derived) == ["third_output_again"]
    assert _recomputed(derived) == ["out_input_again"]
    x = np.random.default_rng(18).uniform(0, 1, size=(16, 8, 8, 3)).astype("float32")
    _assert_matches_held(derived, model, composite, x, monkeypatch)


def test_z_plus_holds_the_addend_where_the_sum_is_not_held():
    """A sum read by a layer that passes relevance through and is not an activation (a
    ``Dropout``) is not held itself: the addend is."""
    keras.utils.set_random_seed(19)
    x = keras.Input((5,))
    a = L.Dense(6, activation="relu", name="stem")(x)
    h = L.Dense(6, name="third")(L.Dense(6, activation="relu", name="first")(a))
    y = L.Dropout(0.5, name="drop")(L.Add(name="add")([a, h]))
    model = keras.Model(x, L.Dense(3, name="head")(y))
    relevance_model = tf_dtd.relevance_model(model, "lrp_epsilon_plus")
    assert _again(relevance_model) == []


def test_an_addend_read_elsewhere_or_added_to_itself_is_held():
    """third's output read by a second head too is held; the second head's output, read by the
    model's final Add alone, is computed again from the logits."""
    assert _again(tf_dtd.relevance_model(residual_dense_block(second_reader=True),
                                         rules.Epsilon(EPSILON))) == ["aside_output_again"]
    epsilon = rules.Epsilon(EPSILON)
    assert _again(tf_dtd.relevance_model(residual_dense_block(twice=True), epsilon)) == []


def test_an_addend_behind_a_dropout_is_held():
    """The Dropout passes relevance through and is an identity at inference: its output frees
    nothing (third's output, which third's ε reads, is what the pass holds), so neither is
    computed again (EfficientNet's drop-connect before each Add)."""
    epsilon = rules.Epsilon(EPSILON)
    assert _again(tf_dtd.relevance_model(residual_dense_block(dropout=True), epsilon)) == []


def test_gamma_on_the_addends_layer_reads_it_computed_again(monkeypatch):
    """γ reads its output's sign and denominator each unit for itself, only where relevance
    is: third's output is computed again, and where rounding flips the sign of a unit near 0
    the relevance it moves is as small as the unit — the held model's heatmaps within float32
    rounding."""
    composite = tf_dtd.Composite(default=rules.Epsilon(EPSILON),
                                 by_name={"third": rules.Gamma(0.25)})
    model = residual_dense_block(shortcut_dense=True)
    x = np.random.default_rng(17).normal(size=(32, 5)).astype("float32")
    derived = tf_dtd.relevance_model(model, composite)
    assert _again(derived) == ["third_output_again"]
    _assert_matches_held(derived, model, composite, x, monkeypatch)


def test_relative_epsilon_on_the_addends_layer_keeps_it():
    """Relative ε scales its stabiliser by a statistic of the sample's whole output, and where
    the ``Add`` reads ``relu(sum)`` the addend computed again is wrong at units with sum ≤ 0,
    which that statistic would read: the other addend (the Dense shortcut's) is computed again
    instead."""
    composite = tf_dtd.Composite(default=rules.Epsilon(EPSILON),
                                 by_name={"third": rules.Epsilon(0.25, relative=True)})
    relevance_model = tf_dtd.relevance_model(residual_dense_block(shortcut_dense=True), composite)
    assert _again(relevance_model) == ["shortcut_output_again"]


def test_the_addend_computed_again_saves_and_loads(tmp_path):
    relevance_model = tf_dtd.relevance_model(_convresidual_dense_block(), rules.Epsilon(EPSILON))
    x = np.random.default_rng(16).uniform(0, 1, size=(4, 8, 8, 3)).astype("float32")
    path = str(tmp_path / "addend.keras")
    relevance_model.save(path)
    loaded = keras.saving.load_model(path)
    assert _again(loaded) == ["third_output_again"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  relevance_model.predict(x, verbose=0))
