"""The rule family Gamma, AlphaBeta, Flat, Pass and relative Epsilon.

Each rule is checked against a float64 NumPy reference written the way the papers write it:
contributions ``z_ij``, denominators ``z_j`` and ``R_i = Σ_j z_ij / z_j · R_j`` (a zero
denominator contributes zero), on the explicit layer matrices of ``test_rules`` (Dense, Conv1D,
Conv2D strided / same / dilated / grouped, Conv3D), with signed inputs and with bias. Then the
equivalences between rules on a small ReLU network, an α-β regression with a negative bias, the
validation of the hyper-parameters, serialisation, and the Pass rule in a composite.
"""

import keras
import numpy as np
import pytest
from references import (
    BATCH,
    CASES,
    assert_close,
    connectivity,
    conv_matrix,
    flat,
    flat_fallback,
    ref_alpha_beta,
    ref_alpha_beta_conserving,
    ref_epsilon_relative,
    ref_flat,
    ref_gamma,
    ref_gamma_classic,
    reference,
    relevance_layer,
    setup_case,
)

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance.layers import ConvRelevance, DenseRelevance

L = keras.layers


def mask_ill_conditioned(r, x, m, b, tol):
    """Zero R_j where the float64 denominator nearly cancels: float32 cannot resolve R_j / z_j.

    Returns the masked relevance; the caller checks that most outputs are kept.
    """
    z_ij = x[:, :, None] * m[None]
    z_j = z_ij.sum(axis=1) + b
    scale = np.abs(z_ij).sum(axis=1) + np.abs(b)
    keep = np.abs(z_j) > tol * scale
    assert keep.mean() > 0.75
    return np.where(keep, r, 0.0)


LAYER_CASES = list(CASES)  # Dense 2d/3d, Conv1D, Conv2D (strided/same/dilated/groups), Conv3D

RULE_CASES = ["gamma0.25", "gamma1", "alphabeta2_1", "alphabeta1_0", "alphabeta3_2",
              "alphabeta2_1_nobias", "alphabeta1_0_nobias", "flat", "epsilon_relative"]


def make_rule(rule_case):
    if rule_case.startswith("gamma"):
        return rules.Gamma(float(rule_case[5:]))
    if rule_case.startswith("alphabeta"):
        alpha, beta = (float(v) for v in rule_case[9:].split("_")[:2])
        return rules.AlphaBeta(alpha, beta, bias=not rule_case.endswith("_nobias"))
    if rule_case == "flat":
        return rules.Flat()
    return rules.Epsilon(0.25, relative=True)


def expected_relevance(rule_case, name, x, m, b, r):
    """The float64 reference, after masking ill-conditioned outputs of the signed-sum rules."""
    if rule_case.startswith("gamma"):
        # the sign of the plain z_j picks the formula: mask where float32 could pick the other
        r = mask_ill_conditioned(r, x, m, b, 1e-3)
        return r, ref_gamma(x, m, b, r, float(rule_case[5:]))
    if rule_case.startswith("alphabeta"):
        alpha, beta = (float(v) for v in rule_case[9:].split("_")[:2])
        if rule_case.endswith("_nobias"):
            return r, ref_alpha_beta_conserving(x, m, r, alpha, beta, connectivity(name))
        return r, ref_alpha_beta(x, m, b, r, alpha, beta)
    if rule_case == "flat":
        return r, ref_flat(connectivity(name), r)
    # relative ε keeps |z_j ± ε| ≥ ε; only outputs whose sign float32 could flip are masked
    r = mask_ill_conditioned(r, x, m, b, 1e-3)
    return r, ref_epsilon_relative(x, m, b, r, 0.25)


def make_data(name, seed):
    _, _, _, _, _, out_shape = setup_case(name, False)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (BATCH,) + CASES[name][2]).astype("float32")
    r = rng.uniform(-0.5, 1.5, (BATCH,) + out_shape).astype("float32")  # signed relevance too
    return x, r


# --- 1. Rules against the reference, layer by layer ---

@pytest.mark.parametrize("rule_case", RULE_CASES)
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_new_rule_matches_reference(name, use_bias, rule_case):
    _, kernel, bias, m, b, _ = setup_case(name, use_bias)
    x, r = make_data(name, seed=11)
    assert np.any(x < 0) and np.any(x > 0)
    r64, expected = expected_relevance(rule_case, name, flat(x), m, b, flat(r))
    r = r64.astype("float32").reshape(r.shape)
    actual = np.asarray(relevance_layer(name, make_rule(rule_case), kernel, bias)([x, r]))
    assert np.abs(expected).max() > 0
    assert_close(actual, expected.reshape(x.shape))


@pytest.mark.parametrize("rule", [rules.AlphaBeta(2, 1), rules.AlphaBeta(1, 0),
                                  rules.AlphaBeta(1.5, 0.5)], ids=["2_1", "1_0", "1.5_0.5"])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", ["dense_2d", "dense_3d", "conv1d_causal_dilated",
                                  "conv2d_same_strided", "conv2d_same_dilated", "conv2d_groups2",
                                  "conv3d_same_strided"])
def test_alpha_beta_nonnegative_input_equals_signed_form(name, use_bias, rule):
    _, kernel, bias, m, b, _ = setup_case(name, use_bias)
    x, r = make_data(name, seed=12)
    x = np.abs(x)
    x[0].flat[::3] = 0.0
    fast = np.asarray(relevance_layer(name, rule, kernel, bias, nonnegative_input=True)([x, r]))
    signed = np.asarray(relevance_layer(name, rule, kernel, bias)([x, r]))
    expected = ref_alpha_beta(flat(x), m, b, flat(r), rule.alpha, rule.beta).reshape(x.shape)
    assert_close(fast, expected)
    assert_close(signed, fast)


@pytest.mark.parametrize("gamma", [0.25, 1.0])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_gamma_nonnegative_input_matches_reference(name, use_bias, gamma):
    """Inputs known ≥ 0 take the by-sign form: a·w read from the forward pass, one extra map
    on w⁺ for units of both signs ((1 + γ)·a·w − γ·a·w⁺ where z_j < 0). Same float64 reference
    as the signed form, on units of both signs."""
    _, kernel, bias, m, b, _ = setup_case(name, use_bias)
    x, r = make_data(name, seed=13)
    x = np.abs(x)
    x[0].flat[::3] = 0.0
    z_j = flat(x) @ m + b
    assert np.any(z_j > 0) and np.any(z_j < 0)
    r = mask_ill_conditioned(flat(r), flat(x), m, b, 1e-3).astype("float32").reshape(r.shape)
    layer = relevance_layer(name, rules.Gamma(gamma), kernel, bias, nonnegative_input=True)
    assert layer.rule.parts(nonnegative_input=True)[0].by_sign is not None  # the fast form
    fast = np.asarray(layer([x, r]))
    expected = ref_gamma(flat(x), m, b, flat(r), gamma).reshape(x.shape)
    assert_close(fast, expected)
    signed = np.asarray(relevance_layer(name, rules.Gamma(gamma), kernel, bias)([x, r]))
    assert_close(signed, fast)


def test_alpha_beta_bias_goes_to_its_own_denominator():
    """Hand-computed Dense: b⁺ only enlarges z⁺, b⁻ only z⁻ (never the other part)."""
    kernel = np.array([[2.0, 1.0], [-1.0, -3.0]], "float32")  # 2 inputs, 2 outputs
    bias = np.array([1.0, -2.0], "float32")
    x = np.array([[1.0, -1.0]], "float32")
    r = np.array([[1.0, 1.0]], "float32")
    actual = np.asarray(DenseRelevance.from_kernel(rules.AlphaBeta(2, 1), kernel, bias)([x, r]))
    # output 0: contributions 2, 1 (both positive) -> z⁺ = 3 + b⁺(1) = 4, z⁻ = 0 + b⁻(0) = 0
    #   R_i = 2·[2, 1]/4 - 0 = [1, 0.5]
    # output 1: contributions 1, 3 (both positive) -> z⁺ = 4 + 0 = 4, z⁻ = 0 - 2 = -2
    #   negative part has no contributions: R_i = 2·[1, 3]/4 - 1·[0, 0]/(-2) = [0.5, 1.5]
    np.testing.assert_allclose(actual, [[1.5, 2.0]], rtol=1e-6)


def test_alpha_beta_empty_negative_part_contributes_zero():
    """All contributions positive, no bias: z⁻ = 0, the β part of Bach's form is zero, never
    NaN; without bias the β part's −R is spread flat instead, and relevance is conserved."""
    kernel = np.abs(setup_case("conv2d_same_dilated", False)[1])
    x = np.abs(make_data("conv2d_same_dilated", seed=13)[0]) + 0.1
    r = np.ones((BATCH, 6, 6, 3), "float32")
    layer = ConvRelevance.from_kernel(rules.AlphaBeta(2, 1), kernel, None, strides=(1, 1),
                                      padding="same", dilation_rate=(2, 2))
    actual = np.asarray(layer([x, r]))
    assert np.all(np.isfinite(actual))
    # α · LRP-0 (the positive part is all of z); relevance is doubled, not conserved
    _, _, _, m, _, _ = setup_case("conv2d_same_dilated", False)
    expected = 2.0 * reference("z", flat(x), np.abs(m), 0.0, flat(r)).reshape(x.shape)
    assert_close(actual, expected)
    np.testing.assert_allclose(actual.sum(), 2.0 * r.sum(), rtol=1e-5)
    conserving = ConvRelevance.from_kernel(rules.AlphaBeta(2, 1, bias=False), kernel, None,
                                           strides=(1, 1), padding="same", dilation_rate=(2, 2))
    actual = np.asarray(conserving([x, r]))
    c = connectivity("conv2d_same_dilated")
    spread = flat_fallback(np.zeros((BATCH, c.shape[1])), flat(r), c, flat(x))  # every unit
    assert_close(actual, expected - spread.reshape(x.shape))
    np.testing.assert_allclose(actual.sum(), r.sum(), rtol=1e-5)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_generalised_gamma_is_classic_gamma_for_nonnegative_inputs_and_outputs(name, use_bias):
    """On inputs ≥ 0 and units with z_j ≥ 0 the sign-aware γ is a_i (w_ij + γ w⁺_ij); on signed
    inputs the two forms differ (so the reference can tell them apart)."""
    _, kernel, bias, m, b, _ = setup_case(name, use_bias)
    x, r = make_data(name, seed=14)
    positive = np.abs(x)
    up = (flat(positive) @ m + b >= 0).astype("float32")
    r_up = (flat(np.abs(r)) * up).reshape(r.shape).astype("float32")
    layer = relevance_layer(name, rules.Gamma(0.5), kernel, bias)
    expected = ref_gamma_classic(flat(positive), m, b, flat(r_up), 0.5).reshape(x.shape)
    assert_close(np.asarray(layer([positive, r_up])), expected)
    r_all = np.abs(r)
    signed = ref_gamma(flat(x), m, b, flat(r_all), 0.5)
    classic = ref_gamma_classic(flat(x), m, b, flat(r_all), 0.5)
    assert np.abs(signed - classic).max() > 1e-3 * np.abs(signed).max()


def test_flat_ignores_inputs_and_bias_and_conserves():
    name = "conv1d_causal_dilated"
    _, kernel, bias, _, _, _ = setup_case(name, True)
    x, r = make_data(name, seed=14)
    layer = relevance_layer(name, rules.Flat(), kernel, bias)
    a = np.asarray(layer([x, r]))
    b = np.asarray(layer([np.zeros_like(x), r]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.reshape(BATCH, -1).sum(axis=1),
                               r.reshape(BATCH, -1).sum(axis=1), rtol=1e-5)
    # causal padding does not count: the first position feeds fewer outputs' sums, so the
    # relevance is not uniform even for uniform R (the wrong "padding counts" variant would be)
    uniform = np.asarray(layer([x, np.ones_like(r)]))
    assert not np.allclose(uniform[:, 0], uniform[:, -1])


def test_epsilon_relative_is_scale_invariant_and_absolute_is_not():
    """ε ∝ rms(z): scaling the input (no bias) leaves relative-ε relevance unchanged."""
    name = "conv2d_same_strided"
    _, kernel, _, m, _, _ = setup_case(name, False)
    x, r = make_data(name, seed=15)
    rel = relevance_layer(name, rules.Epsilon(0.5, relative=True), kernel, None)
    absolute = relevance_layer(name, rules.Epsilon(0.5), kernel, None)
    for scale in (1e-3, 1e3):
        np.testing.assert_allclose(np.asarray(rel([scale * x, r])), np.asarray(rel([x, r])),
                                   rtol=1e-4, atol=1e-6)
    small = np.asarray(absolute([1e-3 * x, r]))
    assert not np.allclose(small, np.asarray(absolute([x, r])), rtol=1e-2)
    # and it is not the absolute ε = 0.5 either, at scale 1
    expected = ref_epsilon_relative(flat(x), m, 0.0, flat(r), 0.5).reshape(x.shape)
    assert_close(np.asarray(rel([x, r])), expected)
    assert not np.allclose(expected, reference("z", flat(x), m, 0.0, flat(r), eps=0.5)
                           .reshape(x.shape), rtol=1e-3)


def test_epsilon_relative_zero_sample_gives_zero_not_nan():
    name = "dense_2d"
    _, kernel, _, _, _, _ = setup_case(name, False)
    x, r = make_data(name, seed=16)
    x[0] = 0.0  # z = 0 in sample 0: ε = 0 there too, denominator exactly zero
    actual = np.asarray(relevance_layer(name, rules.Epsilon(0.25, relative=True), kernel,
                                        None)([x, r]))
    assert np.all(np.isfinite(actual))
    np.testing.assert_array_equal(actual[0], 0.0)
    assert np.abs(actual[1]).sum() > 0


def test_epsilon_relative_sign_of_zero_is_positive():
    """Hand-computed Dense: z = [0, 1], rms = 1/√2, ε = 0.5/√2; z_0 = 0 is pushed to +ε."""
    kernel = np.array([[1.0, 1.0], [1.0, 0.0]], "float32")
    x = np.array([[1.0, -1.0]], "float32")
    r = np.array([[3.0, 5.0]], "float32")
    actual = np.asarray(DenseRelevance.from_kernel(rules.Epsilon(0.5, relative=True),
                                                   kernel)([x, r]))
    eps = 0.5 * np.sqrt((0.0**2 + 1.0**2) / 2)
    expected = [[3 / eps + 5 / (1 + eps), -3 / eps]]
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


# --- 2. α-β regression: a negative bias and a one-sided sample ---

def test_alpha_beta_negative_bias_regression():
    """w = [1, -1], b = -1, x = [1, 1]: f(x) = -1.

    z⁺ = 1·1 (+ b⁺ = 0) = 1, z⁻ = 1·(-1) + b⁻ = -2, R = -1:
    R_1 = α·1/1·R - β·0 = -2; R_2 = α·0 - β·(-1)/(-2)·R = 0.5.
    """
    inputs = keras.Input((2,))
    model = keras.Model(inputs, L.Dense(1)(inputs))
    model.layers[-1].set_weights([np.array([[1.0], [-1.0]], "float32"),
                                  np.array([-1.0], "float32")])
    x = np.array([[1.0, 1.0]], "float32")
    alpha, beta, w, b = 2.0, 1.0, np.array([1.0, -1.0]), -1.0
    out = float(x[0] @ w + b)
    assert out == -1.0
    contributions = x[0] * w
    z_pos = np.maximum(contributions, 0).sum() + max(b, 0.0)
    z_neg = np.minimum(contributions, 0).sum() + min(b, 0.0)
    by_hand = (alpha * np.maximum(contributions, 0) / z_pos
               - beta * np.minimum(contributions, 0) / z_neg) * out
    np.testing.assert_allclose(by_hand, [-2.0, 0.5])
    actual = tf_dtd.explain(model, x, rules.AlphaBeta(alpha, beta))
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, [by_hand], rtol=1e-6)


# --- 3. Equivalences on a small ReLU conv net ---

def _conv_net(zero_bias=False, seed=21):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((7, 7, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    h = L.Conv2D(5, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    outputs = L.Dense(3, name="head")(L.Flatten()(h))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            kernel = rng.normal(0.0, 0.5, layer.kernel.shape).astype("float32")
            bias = (np.zeros(layer.bias.shape) if zero_bias
                    else rng.normal(0.0, 0.2, layer.bias.shape)).astype("float32")
            layer.set_weights([kernel, bias])
    return model


def _explain(model, x, rule):
    return np.asarray(tf_dtd.relevance_model(model, rule)(x))


@pytest.fixture(scope="module")
def conv_net():
    return _conv_net()


@pytest.fixture(scope="module")
def signed_x():
    return np.random.default_rng(22).normal(size=(3, 7, 7, 2)).astype("float32")


def test_gamma_zero_equals_z(conv_net, signed_x):
    z = _explain(conv_net, signed_x, rules.Z())
    assert np.abs(z).sum() > 0
    np.testing.assert_allclose(_explain(conv_net, signed_x, rules.Gamma(0.0)), z,
                               rtol=1e-6, atol=1e-7 * np.abs(z).max())
    # γ > 0 really changes something (the test could fail)
    assert not np.allclose(_explain(conv_net, signed_x, rules.Gamma(0.5)), z, rtol=1e-2)


def test_tiny_epsilon_equals_z(conv_net, signed_x):
    z = _explain(conv_net, signed_x, rules.Z())
    np.testing.assert_allclose(_explain(conv_net, signed_x, rules.Epsilon(1e-12)), z,
                               rtol=1e-5, atol=1e-6 * np.abs(z).max())
    np.testing.assert_allclose(
        _explain(conv_net, signed_x, rules.Epsilon(1e-12, relative=True)), z,
        rtol=1e-5, atol=1e-6 * np.abs(z).max())


@pytest.mark.parametrize("input_range", [None, (0.0, 1.0)])
def test_alpha1_beta0_equals_zplus_without_bias(input_range):
    model = _conv_net(zero_bias=True, seed=23)
    x = np.random.default_rng(24).uniform(0, 1, (3, 7, 7, 2)).astype("float32")
    zplus = np.asarray(tf_dtd.relevance_model(model, rules.ZPlus(), input_range=input_range)(x))
    ab = np.asarray(tf_dtd.relevance_model(model, rules.AlphaBeta(1, 0),
                                           input_range=input_range)(x))
    assert np.abs(zplus).sum() > 0
    np.testing.assert_allclose(ab, zplus, rtol=1e-5, atol=1e-6 * np.abs(zplus).max())


def _forward64(model, x):
    """Float64 forward pass through the explicit matrices: activations and layer matrices."""
    c1, c2, head = (model.get_layer(n) for n in ("c1", "c2", "head"))
    m1, s1 = conv_matrix(c1.kernel.numpy().astype("float64"), (7, 7, 2), c1.strides,
                         c1.padding, c1.dilation_rate, 1)
    m2, s2 = conv_matrix(c2.kernel.numpy().astype("float64"), s1, c2.strides, c2.padding,
                         c2.dilation_rate, 1)
    b1 = np.broadcast_to(c1.bias.numpy().astype("float64"), s1).reshape(-1)
    b2 = np.broadcast_to(c2.bias.numpy().astype("float64"), s2).reshape(-1)
    w3, b3 = head.kernel.numpy().astype("float64"), head.bias.numpy().astype("float64")
    a0 = flat(x)
    a1 = np.maximum(a0 @ m1 + b1, 0)
    a2 = np.maximum(a1 @ m2 + b2, 0)
    logits = a2 @ w3 + b3
    ones1 = conv_matrix(np.ones(c1.kernel.shape), (7, 7, 2), c1.strides, c1.padding,
                        c1.dilation_rate, 1)[0]
    ones2 = conv_matrix(np.ones(c2.kernel.shape), s1, c2.strides, c2.padding,
                        c2.dilation_rate, 1)[0]
    return dict(a=(a0, a1, a2), m=(m1, m2, w3), b=(b1, b2, b3), ones=(ones1, ones2),
                logits=logits)


@pytest.mark.parametrize("flat_layers", [("c1",), ("c2",), ("c1", "c2")])
def test_flat_in_model_matches_reference(flat_layers):
    """Flat on 'same' convolutions, as first layer (input constants) and deeper (ones_like)."""
    model = _conv_net(seed=25)
    x = np.random.default_rng(26).normal(size=(2, 7, 7, 2)).astype("float32")
    # the other convolutions get z⁺ (LRP-0 there would amplify float32 rounding wherever a
    # denominator nearly cancels, since the relevance Flat sends back is not ∝ z_j); head: LRP-0
    composite = tf_dtd.Composite(default=rules.ZPlus(), by_type={L.Dense: rules.Z()},
                                 by_name={n: rules.Flat() for n in flat_layers})
    actual = np.asarray(tf_dtd.relevance_model(model, composite)(x))

    f = _forward64(model, x)
    target = f["logits"].argmax(axis=1)
    r = np.zeros_like(f["logits"])
    r[np.arange(len(x)), target] = f["logits"][np.arange(len(x)), target]
    r = reference("z", f["a"][2], f["m"][2], f["b"][2], r)  # Z through the head
    arriving = {}
    for k, name in ((1, "c2"), (0, "c1")):
        arriving[name] = r
        if name in flat_layers:
            r = ref_flat(f["ones"][k], r)
        else:
            r = reference("zplus", f["a"][k], f["m"][k], 0.0, r)
    expected = r.reshape(x.shape)
    assert np.abs(expected).sum() > 0
    assert_close(actual, expected)
    if flat_layers == ("c1",):  # conservation through the first-layer Flat ('same' padding)
        np.testing.assert_allclose(actual.reshape(len(x), -1).sum(axis=1),
                                   arriving["c1"].sum(axis=1), rtol=1e-5)


def test_flat_conserves_through_padding_in_model():
    """Flat everywhere but a bias-free Z head: Σ R_in = the explained logit (padding gets none).

    The first conv reads the input through ZeroPadding2D (its ones mask is carried through the
    padding: padding is not an input), the second has 'same' padding and stride 2.
    """
    keras.utils.set_random_seed(27)
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, activation="relu", name="c1")(L.ZeroPadding2D(1)(inputs))
    h = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    outputs = L.Dense(3, use_bias=False, name="head")(L.Flatten()(h))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(28).normal(size=(3, 6, 6, 2)).astype("float32")
    composite = tf_dtd.Composite(default=rules.Z(), by_name={"c1": rules.Flat(),
                                                             "c2": rules.Flat()})
    relevance, logits = tf_dtd.relevance_model(model, composite, return_prediction=True)(x)
    relevance, logits = np.asarray(relevance), np.asarray(logits)
    np.testing.assert_allclose(relevance.reshape(3, -1).sum(axis=1), logits.max(axis=1),
                               rtol=1e-5)
    # the same kernel as a standalone 'same' conv against the reference on its connectivity
    c1 = model.get_layer("c1")
    ones1, s1 = conv_matrix(np.ones(c1.kernel.shape), (6, 6, 2), (1, 1), "same", (1, 1), 1)
    r_uniform = np.ones((1, int(np.prod(s1))))
    single = tf_dtd.layers.ConvRelevance.from_kernel(
        rules.Flat(), c1.kernel.numpy(), None, strides=(1, 1), padding="same",
        dilation_rate=(1, 1))
    np.testing.assert_allclose(
        np.asarray(single([x[:1], r_uniform.reshape((1,) + s1).astype("float32")])),
        ref_flat(ones1, r_uniform).reshape((1, 6, 6, 2)), rtol=1e-5)


# --- 4. Validation and serialisation ---

def test_alpha_beta_needs_alpha_minus_beta_one():
    with pytest.raises(tf_dtd.InvalidArgumentError, match="alpha - beta == 1"):
        rules.AlphaBeta(2, 0.5)


@pytest.mark.parametrize("alpha, beta", [(0.5, -0.5), (0.0, -1.0), (1.0, float("nan"))])
def test_alpha_beta_needs_nonnegative_beta(alpha, beta):
    with pytest.raises(tf_dtd.InvalidArgumentError, match="beta"):
        rules.AlphaBeta(alpha, beta)


@pytest.mark.parametrize("gamma", [-1, -1e-9, float("nan")])
def test_gamma_must_be_nonnegative(gamma):
    with pytest.raises(tf_dtd.InvalidArgumentError, match="gamma"):
        rules.Gamma(gamma)


@pytest.mark.parametrize("rule", [rules.Gamma(0.5), rules.AlphaBeta(2, 1), rules.AlphaBeta(1, 0),
                                  rules.Flat(), rules.Pass(), rules.Epsilon(0.25, relative=True)],
                         ids=["gamma", "alphabeta2_1", "alphabeta1_0", "flat", "pass",
                              "epsilon_relative"])
def test_new_rule_serialize_roundtrip(rule):
    config = rules.serialize(rule)
    again = rules.deserialize(config)
    assert type(again) is type(rule)
    assert again == rule
    assert again.get_config() == rule.get_config()
    assert rules.serialize(again) == config


@pytest.mark.parametrize("rule", [rules.AlphaBeta(2, 1), rules.Epsilon(0.25, relative=True)],
                         ids=["alphabeta2_1", "epsilon_relative"])
def test_relevance_model_keras_save_load(rule, conv_net, signed_x, tmp_path):
    rel_model = tf_dtd.relevance_model(conv_net, rule)
    expected = np.asarray(rel_model(signed_x))
    assert np.abs(expected).sum() > 0
    path = tmp_path / "relevance.keras"
    rel_model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(signed_x)), expected)
    loaded_rules = [layer.rule for layer in loaded.layers
                    if isinstance(layer, tf_dtd.layers.KernelRelevance)]
    assert len(loaded_rules) == 3 and all(r == rule for r in loaded_rules)


# --- 5. Pass ---

def _pass_model(mid_units):
    keras.utils.set_random_seed(31)
    inputs = keras.Input((4,))
    h = L.Dense(mid_units, name="mid")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="out")(h))
    rng = np.random.default_rng(31)
    for layer in model.layers[1:]:
        layer.set_weights([rng.normal(size=layer.kernel.shape).astype("float32"),
                           rng.normal(0, 0.3, layer.bias.shape).astype("float32")])
    return model


def test_pass_hands_relevance_through_unchanged():
    model = _pass_model(4)
    x = np.random.default_rng(32).normal(size=(5, 4)).astype("float32")
    composite = tf_dtd.Composite(default=rules.Z(), by_name={"mid": rules.Pass()})
    actual = np.asarray(tf_dtd.relevance_model(model, composite)(x))

    w1, b1 = (v.astype("float64") for v in model.get_layer("mid").get_weights())
    w2, b2 = (v.astype("float64") for v in model.get_layer("out").get_weights())
    h = x.astype("float64") @ w1 + b1
    logits = h @ w2 + b2
    c = logits.argmax(axis=1)
    rows = np.arange(len(x))
    # LRP-0 through 'out' for the top logit: R_k = h_k w_kc / (Σ_k h_k w_kc + b_c) · f_c
    at_mid = h * w2[:, c].T / logits[rows, c][:, None] * logits[rows, c][:, None]
    np.testing.assert_allclose(actual, at_mid, rtol=1e-5, atol=1e-6 * np.abs(at_mid).max())
    # Z on 'mid' would have redistributed it: the test can tell the difference
    z_everywhere = np.asarray(tf_dtd.relevance_model(model, rules.Z())(x))
    assert not np.allclose(z_everywhere, at_mid, rtol=1e-2)


def test_pass_on_shape_changing_layer_raises():
    model = _pass_model(6)
    composite = tf_dtd.Composite(default=rules.Z(), by_name={"mid": rules.Pass()})
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"Pass\(\) keeps relevance unchanged"):
        tf_dtd.relevance_model(model, composite)

