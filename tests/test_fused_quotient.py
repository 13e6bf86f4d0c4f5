"""ε's quotient computing again the arithmetic that makes what it divides (``expression``).

A layer's relevance at its input is its input times the transposed quotient — a product — or a
sum of such products where several layers read one tensor; an addend computed again from its sum
is a difference. The next layer's ε divides the relevance by its stabilised ``z``; in a graph,
XLA then computes the products, sums, differences and the quotient in one pass
(``quotient._quotient``). Checked against a written-out float64 reference, with the capture on
and off, and in an eager call (no graph: nothing captured).
"""

import keras
import numpy as np
import pytest
from references import residual_dense_block, residual_dense_block_epsilon

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance import expression, quotient

EPSILON = 0.25


@pytest.fixture
def quotients(monkeypatch):
    """Every quotient in XLA (``XLA_QUOTIENT_MIN_SIZE`` 0); the ``(share, z)`` expressions the
    quotient was traced with."""
    monkeypatch.setattr(quotient, "XLA_QUOTIENT_MIN_SIZE", 0)
    calls, original = [], quotient._quotient

    def spy(leaves, share, z, *args):
        calls.append((share, z))
        return original(leaves, share, z, *args)

    monkeypatch.setattr(quotient, "_quotient", spy)
    return calls


def _kinds(tree):
    """The op types in a captured expression."""
    return set() if isinstance(tree, int) else {tree[0]}.union(*map(_kinds, tree[1:]))


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "plain"])
def test_epsilon_computes_what_it_divides_in_its_quotient(fuse, quotients, monkeypatch):
    monkeypatch.setattr(expression, "ENABLED", fuse)
    model = residual_dense_block()
    x = np.random.default_rng(22).normal(size=(32, 5)).astype("float32")
    expected = residual_dense_block_epsilon(model, x, EPSILON)
    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    quotients.clear()  # the build traces the layers too; count predict's trace alone
    actual = relevance_model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    shares = [_kinds(share) for share, _ in quotients]
    denominators = [_kinds(z) for _, z in quotients]
    if fuse:
        # third's share is the Add's product, first's third's; stem's is a's two readers'
        # products summed; third's z is computed again from the sum (relu(sum) − a)
        assert {"Mul"} in shares and {"AddV2", "Mul"} in shares
        assert {"Sub"} in denominators
    else:
        assert len(quotients) == 5 and not any(shares) and not any(denominators)


def test_an_eager_call_captures_nothing_and_agrees(quotients):
    model = residual_dense_block()
    x = np.random.default_rng(23).normal(size=(8, 5)).astype("float32")
    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    graph = relevance_model.predict(x, verbose=0)
    quotients.clear()
    eager = relevance_model(x, training=False).numpy()
    assert quotients and not any(_kinds(share) or _kinds(z) for share, z in quotients)
    np.testing.assert_allclose(eager, graph, rtol=1e-5, atol=1e-6 * np.abs(graph).max())
    np.testing.assert_allclose(eager, residual_dense_block_epsilon(model, x, EPSILON), rtol=1e-4,
                               atol=1e-5 * np.abs(graph).max())


def test_an_activation_computed_again_joins_the_quotient(quotients):
    """A ReLU6 after a layer that reads its own output (ε) is computed again from that output
    when relevance arrives (``recompute``); read only as the factor of the next layer's product,
    it joins the quotient and is never written (MobileNet's blocks)."""
    keras.utils.set_random_seed(24)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(7, activation="relu6", name="first")(inputs)
    h = keras.layers.Dense(6, activation="relu6", name="second")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    x = 4 * np.random.default_rng(25).normal(size=(32, 5)).astype("float32")

    def dense(name, a):
        kernel, bias = (w.astype("float64") for w in model.get_layer(name).get_weights())
        return a @ kernel + bias, kernel

    def back(a, kernel, z, relevance):
        stabilized = z + EPSILON * np.where(z >= 0, 1.0, -1.0)
        return a * ((relevance / stabilized) @ kernel.T)

    z_first, k_first = dense("first", x.astype("float64"))
    a_first = np.clip(z_first, 0, 6)
    z_second, k_second = dense("second", a_first)
    a_second = np.clip(z_second, 0, 6)
    logits, k_head = dense("head", a_second)
    assert np.any(z_first > 6) and np.any(z_second > 6) and np.any(z_second < 0)
    rows, top = np.arange(len(x)), logits.argmax(axis=1)
    relevance = np.zeros_like(logits)
    relevance[rows, top] = logits[rows, top]
    at_second = back(a_second, k_head, logits, relevance)
    expected = back(x, k_first, z_first, back(a_first, k_second, z_second, at_second))

    relevance_model = tf_dtd.relevance_model(model, rules.Epsilon(EPSILON))
    quotients.clear()
    actual = relevance_model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert [_kinds(share) for share, _ in quotients].count({"Mul", "Relu6"}) == 2
