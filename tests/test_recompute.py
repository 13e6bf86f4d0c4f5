"""Activations recomputed in the relevance pass: where the builder does it, and the result.

A layer under LRP-ε reads its input ``x = act(z)`` and its own output; where the layer before
reads its ``z`` too, the relevance model recomputes ``act(z)`` when relevance arrives rather
than holding both tensors from the forward pass (tf_dtd.relevance.recompute). Behind a plain
ReLU whose readers send no relevance where it is 0, the layer reads ``relu(z)`` as its ``z``
instead, and nothing is computed again (``reuse.rectified_outputs``).
"""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance.recompute import AfterRelevance

L = keras.layers
EPSILON = 0.25


def _model():
    keras.utils.set_random_seed(3)
    x = keras.Input((5,))
    h = L.Dense(7, activation="elu", name="first")(x)
    h = L.Dense(6, name="second")(h)
    h = L.LeakyReLU(negative_slope=0.2, name="leaky")(h)
    h = L.Dense(6, activation="relu", name="third")(h)
    return keras.Model(x, L.Dense(3, name="head")(h))


def _recomputed(relevance_model):
    """Names of the activations the relevance model computes again."""
    return sorted(layer.name.removesuffix("_input_again") for layer in relevance_model.layers
                  if isinstance(layer, AfterRelevance))


def _epsilon_reference(model, x):
    """float64 LRP-ε (ε on every layer, LRP-0's ``z_j`` plus ``ε·sign z_j``) of the top logit,
    written out: the forward pass with explicit activations, then ``R_i = Σ_j a_i w_ij / z_j R_j``
    layer by layer."""
    def weights(name):
        kernel, bias = model.get_layer(name).get_weights()
        return kernel.astype("float64"), bias.astype("float64")

    activations = [
        lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),  # elu
        lambda z: np.where(z > 0, z, 0.2 * z),  # leaky relu
        lambda z: np.maximum(z, 0),  # relu
        lambda z: z,
    ]
    a, inputs, outputs = x.astype("float64"), [], []
    for name, act in zip(["first", "second", "third", "head"], activations):
        kernel, bias = weights(name)
        inputs.append((a, kernel))
        z = a @ kernel + bias
        outputs.append(z + EPSILON * np.where(z >= 0, 1.0, -1.0))
        a = act(z)
    target = a.argmax(axis=1)
    relevance = np.zeros_like(a)
    relevance[np.arange(len(a)), target] = a[np.arange(len(a)), target]
    for (a_in, kernel), stabilized in zip(reversed(inputs), reversed(outputs)):
        relevance = a_in * ((relevance / stabilized) @ kernel.T)
    return relevance


def test_epsilon_recomputes_the_activations_it_reads():
    relevance_model = tf_dtd.relevance_model(_model(), rules.Epsilon(EPSILON))
    # every activation between two layers that read their outputs (but a plain ReLU, whose
    # output third reads as its z); the pixels are no activation
    assert _recomputed(relevance_model) == ["first_activation", "leaky"]


@pytest.mark.parametrize("preset", ["deep_taylor_bounded", "lrp_alpha_1_beta_0"])
def test_rules_that_do_not_read_the_output_hold_the_activation(preset):
    """z⁺ and z^B read only the input: the forward activation is what the pass holds."""
    relevance_model = tf_dtd.relevance_model(_model(), preset, input_range=(-3.0, 3.0))
    assert _recomputed(relevance_model) == []


def test_recomputed_epsilon_matches_a_float64_reference():
    model = _model()
    x = np.random.default_rng(4).normal(size=(6, 5)).astype("float32")
    actual = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON)).predict(x, verbose=0)
    expected = _epsilon_reference(model, x)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_recomputed_model_saves_and_loads(tmp_path):
    """The activation layer is called twice in the relevance model; .keras keeps both calls."""
    model = _model()
    x = np.random.default_rng(5).normal(size=(4, 5)).astype("float32")
    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    path = str(tmp_path / "epsilon.keras")
    relevance_model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  relevance_model.predict(x, verbose=0))


def _relu_model():
    keras.utils.set_random_seed(6)
    x = keras.Input((5,))
    h = L.Dense(7, activation="relu", name="first")(x)
    h = L.Dense(6, name="second")(h)
    h = L.ReLU(name="plain")(h)
    h = L.Dense(6, name="third")(h)
    h = L.ReLU(max_value=0.5, name="capped")(h)
    return keras.Model(x, L.Dense(3, name="head")(h))


def _z_read_by(relevance_model, name):
    """The layer whose output the relevance call of layer ``name`` reads as its ``z``."""
    nodes = relevance_model.get_layer(f"{name}_relevance")._inbound_nodes
    (call,) = [node for node in nodes if len(node.input_tensors) > 1]
    return call.input_tensors[1]._keras_history.operation.name


def _relu_reference(model, x, flat_third=False):
    """float64 LRP-ε of the top logit through ``_relu_model`` (``third`` under the flat rule:
    ``R_i = Σ_j R_j / n``), written out layer by layer."""
    activations = [lambda z: np.maximum(z, 0), lambda z: np.maximum(z, 0),
                   lambda z: np.clip(z, 0, 0.5), lambda z: z]
    a, steps = x.astype("float64"), []
    for name, act in zip(["first", "second", "third", "head"], activations):
        kernel, bias = (w.astype("float64") for w in model.get_layer(name).get_weights())
        z = a @ kernel + bias
        steps.append((name, a, kernel, z + EPSILON * np.where(z >= 0, 1.0, -1.0)))
        a = act(z)
    rows = np.arange(len(a))
    relevance = np.zeros_like(a)
    relevance[rows, a.argmax(axis=1)] = a[rows, a.argmax(axis=1)]
    for name, a_in, kernel, stabilized in reversed(steps):
        if name == "third" and flat_third:
            relevance = np.repeat(relevance.sum(axis=1, keepdims=True) / len(kernel),
                                  len(kernel), axis=1)
        else:
            relevance = a_in * ((relevance / stabilized) @ kernel.T)
    return relevance


def test_epsilon_reads_the_output_of_a_plain_relu_as_z():
    """first and second read their ReLU's output: ``second`` and ``third`` (ε) send nothing
    where it is 0. The capped ReLU is not ``max(z, 0)``: third reads its own output and the
    capped activation is computed again for head."""
    model = _relu_model()
    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    assert [_z_read_by(relevance_model, name) for name in ["first", "second", "third"]] == [
        "first_activation", "plain", "third_relevance"]
    assert _recomputed(relevance_model) == ["capped"]
    x = np.random.default_rng(7).normal(size=(16, 5)).astype("float32")
    expected = _relu_reference(model, x)
    actual = relevance_model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_reader_that_sends_relevance_to_zero_inputs_keeps_z():
    """The flat rule on third gives relevance to units of ``plain`` that are 0 (z < 0):
    second's ε must divide by its own z there, so it reads z and plain is computed again."""
    model = _relu_model()
    composite = tf_dtd.Composite(default=rules.Epsilon(EPSILON), by_name={"third": rules.Flat()})
    relevance_model = tf_dtd.relevance_model(model, composite)
    assert [_z_read_by(relevance_model, name) for name in ["first", "second"]] == [
        "first_activation", "second_relevance"]
    assert _recomputed(relevance_model) == ["plain"]
    x = np.random.default_rng(8).normal(size=(16, 5)).astype("float32")
    expected = _relu_reference(model, x, flat_third=True)
    actual = relevance_model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


GAMMA = 0.25


def _pooled_model():
    """Two pointwise layers with ReLUs over 6 positions, a global max-pooling, a linear head."""
    keras.utils.set_random_seed(9)
    x = keras.Input((6, 3))
    h = L.Dense(5, activation="relu", name="first")(x)
    h = L.Dense(4, activation="relu", name="second")(h)
    h = L.GlobalMaxPooling1D(name="pool")(h)
    model = keras.Model(x, L.Dense(3, name="head")(h))
    model.get_layer("second").bias.assign([-3.0, 0.1, 0.0, -0.2])  # channel 0: mostly z < 0
    return model


def _gamma_back(a, kernel, bias, relevance):
    """float64 generalised γ: ``a⁺(w + γw⁺) + a⁻(w + γw⁻)`` (bias ``b + γb⁺``) where
    ``z_j ≥ 0``, ``a⁺(w + γw⁻) + a⁻(w + γw⁺)`` (bias ``b + γb⁻``) where ``z_j < 0``."""
    a_pos, a_neg = np.maximum(a, 0), np.minimum(a, 0)
    up = kernel + GAMMA * np.maximum(kernel, 0)
    down = kernel + GAMMA * np.minimum(kernel, 0)
    positive = a @ kernel + bias >= 0
    den_pos = a_pos @ up + a_neg @ down + bias + GAMMA * np.maximum(bias, 0)
    den_neg = a_pos @ down + a_neg @ up + bias + GAMMA * np.minimum(bias, 0)
    den = np.where(positive, den_pos, den_neg)
    share = np.divide(relevance, den, out=np.zeros_like(den), where=den != 0)
    s_pos, s_neg = np.where(positive, share, 0), np.where(positive, 0, share)
    return (a_pos * (s_pos @ up.T + s_neg @ down.T) + a_neg * (s_pos @ down.T + s_neg @ up.T))


def _pooled_reference(model, x, flat_head=False):
    """float64 γ on first and second, winner-take-all pooling (ties share), ε on head (or the
    flat rule, ``R_i = Σ_j R_j / n``), of the top logit, written out."""
    def weights(name):
        return [w.astype("float64") for w in model.get_layer(name).get_weights()]

    a0 = x.astype("float64")
    a1 = np.maximum(a0 @ weights("first")[0] + weights("first")[1], 0)
    a2 = np.maximum(a1 @ weights("second")[0] + weights("second")[1], 0)
    pooled = a2.max(axis=1)
    kernel, bias = weights("head")
    z = pooled @ kernel + bias
    rows, top = np.arange(len(z)), z.argmax(axis=1)
    relevance = np.zeros_like(z)
    relevance[rows, top] = z[rows, top]
    if flat_head:
        relevance = np.repeat(relevance.sum(axis=1, keepdims=True) / len(kernel), len(kernel),
                              axis=1)
    else:
        stabilized = z + EPSILON * np.where(z >= 0, 1.0, -1.0)
        relevance = pooled * ((relevance / stabilized) @ kernel.T)
    ties = (a2 == pooled[:, None, :]).astype("float64")
    relevance = ties * (relevance / ties.sum(axis=1))[:, None, :]
    relevance = _gamma_back(a1, *weights("second"), relevance)
    return _gamma_back(a0, *weights("first"), relevance)


def test_gamma_reads_the_output_of_a_plain_relu_as_z_behind_a_max_pooling():
    """γ reads ``z`` for its sign and denominator only where relevance is: behind a ReLU whose
    readers send none where it is 0 — second's γ, and the max-pooling, whose zeros win only
    windows whose maximum is 0, before an ε head — ``relu(z)`` serves. On signed inputs
    (first) and on inputs ≥ 0 (second, both signs from one convolution)."""
    model = _pooled_model()
    composite = tf_dtd.Composite(default=rules.Gamma(GAMMA),
                                 by_name={"head": rules.Epsilon(EPSILON)})
    relevance_model = tf_dtd.relevance_model(model, composite)
    assert [_z_read_by(relevance_model, name) for name in ["first", "second"]] == [
        "first_activation", "second_activation"]
    assert _recomputed(relevance_model) == []
    x = np.random.default_rng(10).normal(size=(16, 6, 3)).astype("float32")
    expected = _pooled_reference(model, x)
    assert np.abs(expected).max() > 0
    _assert_plain_and_xla_match(relevance_model, model, composite, x, expected)


def _assert_plain_and_xla_match(relevance_model, model, composite, x, expected):
    """The relevance model, and one compiled with XLA (its sign tests are nested conds),
    against the float64 reference."""
    compiled = tf_dtd.relevance_model(model, composite)
    compiled.compile(jit_compile=True)
    for actual in relevance_model.predict(x, verbose=0), compiled.predict(x, verbose=0):
        np.testing.assert_allclose(actual, expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())


def test_a_max_pooling_whose_reader_fills_zeros_keeps_z():
    """The flat rule on the head gives relevance to pooled zeros, which the pooling hands to
    inputs that are 0: second must read its own ``z`` (its sign there), and its units with
    ``z < 0`` that hold relevance take the negative sign's coefficients."""
    model = _pooled_model()
    composite = tf_dtd.Composite(default=rules.Gamma(GAMMA), by_name={"head": rules.Flat()})
    relevance_model = tf_dtd.relevance_model(model, composite)
    assert [_z_read_by(relevance_model, name) for name in ["first", "second"]] == [
        "first_activation", "second_relevance"]
    x = np.random.default_rng(11).normal(size=(16, 6, 3)).astype("float32")
    expected = _pooled_reference(model, x, flat_head=True)
    kernel, bias = model.get_layer("second").get_weights()
    z = np.maximum(x @ model.get_layer("first").get_weights()[0]
                   + model.get_layer("first").get_weights()[1], 0) @ kernel + bias
    assert (z.max(axis=1) < 0).any()  # a channel all negative: its ties hold relevance
    _assert_plain_and_xla_match(relevance_model, model, composite, x, expected)
