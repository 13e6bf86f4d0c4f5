"""Every rule of tf_dtd.rules against a float64 NumPy reference written the way the papers write it.

A linear layer (Dense or ConvND) is turned into its dense matrix ``M`` (flattened input sample ×
flattened output sample) by explicit loops over output positions and kernel offsets
(``references.py``). Then every rule is the paper formula: contributions ``z_ij``, denominators
``z_j``, and ``R_i = Σ_j z_ij / z_j · R_j``; a zero denominator contributes zero under LRP-0/ε
and spreads its relevance flat over the receptive field under the Deep Taylor rules.
"""

import numpy as np
import pytest
import tensorflow as tf
from references import (
    BATCH,
    CASES,
    assert_close,
    assert_layer_roundtrip,
    connectivity,
    conv_matrix,
    flat,
    flat_fallback,
    reference,
    relevance_layer,
    setup_case,
)

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance import engine
from tf_dtd.relevance.layers import ConvRelevance, DenseRelevance


def make_bounds(kind, in_shape, rng):
    """(low, high) of ZBox: scalar, per channel (last axis) or per pixel (whole sample)."""
    shape = {"scalar": (), "channel": in_shape[-1:], "pixel": in_shape}[kind]
    low = rng.uniform(-1.5, -0.5, shape).astype("float32")
    high = (low + rng.uniform(1.0, 2.0, shape)).astype("float32")
    return (float(low), float(high)) if kind == "scalar" else (low, high)


RULE_CASES = ["z", "epsilon", "zplus", "zbox_scalar", "zbox_channel", "zbox_pixel", "wsquare"]


def make_rule_and_data(rule_case, in_shape, out_shape, seed):
    """The rule, an input batch x, relevance r_out and the reference's keyword arguments."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.5, 1.5, (BATCH,) + out_shape).astype("float32")
    x = rng.normal(0.0, 1.0, (BATCH,) + in_shape).astype("float32")
    if rule_case == "z":
        return rules.Z(), x, r, dict(rule="z")
    if rule_case.startswith("epsilon"):  # "epsilon" is ε = 0.5, "epsilon0" is ε = 0
        eps = 0.5 if rule_case == "epsilon" else 0.0
        return rules.Epsilon(eps), x, r, dict(rule="z", eps=eps)
    if rule_case == "zplus":
        return rules.ZPlus(), x, r, dict(rule="zplus")
    if rule_case == "wsquare":
        return rules.WSquare(), x, r, dict(rule="wsquare")
    low, high = make_bounds(rule_case.split("_")[1], in_shape, rng)
    lo = np.broadcast_to(np.asarray(low, "float64"), in_shape)
    hi = np.broadcast_to(np.asarray(high, "float64"), in_shape)
    x = (lo + rng.uniform(0.0, 1.0, (BATCH,) + in_shape) * (hi - lo)).astype("float32")
    return rules.ZBox(low, high), x, r, dict(rule="zbox", low=lo.reshape(-1), high=hi.reshape(-1))


def well_conditioned(r, x, m, b):
    """Zero the relevance of outputs whose LRP-0 denominator nearly cancels to zero.

    float32 cannot resolve R_j / z_j there (a 1e-7 error in z_j is amplified by Σ|z_ij| / |z_j|);
    exactly-zero denominators are tested separately below.
    """
    z_ij = x[:, :, None] * m[None]
    z_j = z_ij.sum(axis=1) + b
    scale = np.abs(z_ij).sum(axis=1) + np.abs(b)
    return np.where(np.abs(z_j) > 0.05 * scale, r, 0.0).astype("float32")


def run_case(name, use_bias, rule_case, seed=0):
    _, kernel, bias, m, b, out_shape = setup_case(name, use_bias)
    in_shape = CASES[name][2]
    rule, x, r, ref_kwargs = make_rule_and_data(rule_case, in_shape, out_shape, seed)
    lrp0 = ref_kwargs["rule"] == "z"
    if lrp0:
        r = well_conditioned(flat(r), flat(x), m, b).reshape(r.shape)
    actual = np.asarray(relevance_layer(name, rule, kernel, bias)([x, r]))
    expected, z_j = reference(x=flat(x), m=m, b=b if lrp0 else 0.0, r=flat(r),
                              c=connectivity(name), return_denominator=True, **ref_kwargs)
    return actual, expected.reshape(x.shape), x, r, z_j


# --- Rules against the reference ---

@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_reference_matrix_matches_keras_forward(name, use_bias):
    """Sanity check of the reference itself: x·M + b is the keras layer's output."""
    layer, _, _, m, b, out_shape = setup_case(name, use_bias)
    x = np.random.default_rng(1).normal(size=(BATCH,) + CASES[name][2]).astype("float32")
    expected = flat(x) @ m + b
    actual = np.asarray(layer(x))
    assert actual.shape[1:] == out_shape
    np.testing.assert_allclose(actual.reshape(BATCH, -1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule_case", RULE_CASES)
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_rule_matches_reference(name, use_bias, rule_case):
    actual, expected, _, _, _ = run_case(name, use_bias, rule_case)
    assert_close(actual, expected)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("name", ["dense_2d", "dense_3d", "conv1d_causal_dilated",
                                  "conv2d_same_strided", "conv2d_groups2", "conv3d_same_strided"])
def test_zplus_nonnegative_input_equals_signed_form(name, use_bias):
    _, kernel, bias, m, _, out_shape = setup_case(name, use_bias)
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(BATCH,) + CASES[name][2])).astype("float32")
    x[0].flat[::3] = 0.0
    r = rng.uniform(0.5, 1.5, (BATCH,) + out_shape).astype("float32")
    fast = np.asarray(relevance_layer(name, rules.ZPlus(), kernel, bias,
                                      nonnegative_input=True)([x, r]))
    signed = np.asarray(relevance_layer(name, rules.ZPlus(), kernel, bias)([x, r]))
    c = connectivity(name)
    assert_close(fast, reference("zplus", flat(x), m, 0.0, flat(r), c=c).reshape(x.shape))
    assert_close(signed, fast)
    # the seed's form a_i w⁺_ij on nonnegative inputs (plus the flat spread of dead units)
    _, z_j = reference("z", flat(x), np.maximum(m, 0), 0.0, flat(r), return_denominator=True)
    seed_form = reference("z", flat(x), np.maximum(m, 0), 0.0, flat(r)) + flat_fallback(
        z_j, flat(r), c, flat(x))
    assert_close(fast, seed_form.reshape(x.shape))


# --- Properties ---

@pytest.mark.parametrize("rule_case", ["z", "epsilon0", "zplus", "zbox_channel", "zbox_pixel",
                                       "wsquare"])
@pytest.mark.parametrize("name", ["dense_2d", "dense_3d", "conv1d_causal_dilated",
                                  "conv2d_valid_strided", "conv2d_same_dilated", "conv2d_groups2",
                                  "conv3d_same_strided"])
def test_conservation_without_bias(name, rule_case):
    """Σ R_in = Σ R_out: over the outputs with z_j != 0 for LRP-0, over all outputs for the Deep
    Taylor rules (a unit with z_j = 0, e.g. z⁺ at a causal edge, spreads its relevance flat)."""
    actual, _, _, r, z_j = run_case(name, False, rule_case, seed=5)
    r = r.reshape(BATCH, -1)
    assert np.mean(z_j != 0) > 0.9 and np.any(r != 0)
    kept = np.where(z_j != 0, r, 0.0) if rule_case in ("z", "epsilon0") else r
    np.testing.assert_allclose(actual.reshape(BATCH, -1).sum(axis=1), kept.sum(axis=1),
                               rtol=1e-5)


@pytest.mark.parametrize("rule_case", ["zplus", "zbox_scalar", "zbox_channel", "zbox_pixel",
                                       "wsquare"])
@pytest.mark.parametrize("name", ["dense_2d", "conv1d_same_strided", "conv2d_same_strided",
                                  "conv2d_groups2", "conv3d_same_strided"])
def test_positivity(name, rule_case):
    actual, _, x, _, _ = run_case(name, True, rule_case, seed=7)
    if rule_case == "zplus":
        assert np.any(x < 0)  # signed inputs
    assert actual.min() >= -1e-6 * np.abs(actual).max()
    assert actual.max() > 0


@pytest.mark.parametrize("name", ["dense_2d", "dense_3d", "conv1d_causal_dilated",
                                  "conv2d_valid_strided", "conv2d_groups2", "conv3d_same_strided"])
def test_z_with_bias_is_gradient_times_input(name):
    """LRP-0 with R_j = c_j z_j gives R_i = a_i ∂(Σ_j c_j z_j)/∂a_i (bias absorbs Σ c_j b_j)."""
    layer, kernel, bias, _, _, _ = setup_case(name, True)
    rng = np.random.default_rng(8)
    x = tf.constant(rng.normal(size=(BATCH,) + CASES[name][2]).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        c = tf.constant(rng.uniform(0.5, 1.5, y.shape).astype("float32"))
        objective = tf.reduce_sum(c * y)
    grad_x_input = (x * tape.gradient(objective, x)).numpy()
    actual = np.asarray(relevance_layer(name, rules.Z(), kernel, bias)([x, c * y]))
    assert_close(actual, grad_x_input)
    absorbed = (c.numpy() * np.broadcast_to(bias, y.shape)).reshape(BATCH, -1).sum(axis=1)
    np.testing.assert_allclose(actual.reshape(BATCH, -1).sum(axis=1),
                               tf.reshape(c * y, (BATCH, -1)).numpy().sum(axis=1) - absorbed,
                               rtol=1e-4, atol=1e-4)


# --- Zero denominators: zero relevance, never NaN / Inf ---

@pytest.mark.parametrize("rule", [rules.Z(), rules.Epsilon(0.0), rules.ZPlus(), rules.ZBox(0, 1)],
                         ids=["z", "epsilon0", "zplus", "zbox"])
@pytest.mark.parametrize("name", ["dense_2d", "conv2d_same_strided"])
def test_zero_input(name, rule):
    """x = 0 (= low for ZBox(0, 1), with w >= 0): every z_j is 0. LRP-0/ε give zero relevance;
    z⁺ and z^B spread each unit's relevance evenly over its receptive field, all of whose inputs
    are zero (conserved)."""
    _, kernel, _, _, _, out_shape = setup_case(name, False)
    x = np.zeros((BATCH,) + CASES[name][2], "float32")
    kernel = np.abs(kernel) if isinstance(rule, rules.ZBox) else kernel
    r = np.ones((BATCH,) + out_shape, "float32")
    actual = np.asarray(relevance_layer(name, rule, kernel, None)([x, r]))
    if isinstance(rule, rules.Epsilon):
        np.testing.assert_array_equal(actual, np.zeros_like(x))
        return
    c = connectivity(name)
    expected = flat(r) @ (c / c.sum(axis=0)).T
    assert_close(actual, expected.reshape(x.shape))
    np.testing.assert_allclose(actual.sum(), r.sum(), rtol=1e-5)


def test_cancelling_contributions():
    """z_j = 0 with z_ij != 0: LRP-0 gives 0; ε uses sign(0) = +1, so z_j -> +ε."""
    kernel = np.array([[1.0], [1.0]], "float32")
    x = np.array([[1.0, -1.0], [2.0, 3.0]], "float32")
    r = np.array([[3.0], [5.0]], "float32")
    z = np.asarray(DenseRelevance.from_kernel(rules.Z(), kernel)([x, r]))
    np.testing.assert_allclose(z, [[0.0, 0.0], [2.0, 3.0]], rtol=1e-6)
    eps = np.asarray(DenseRelevance.from_kernel(rules.Epsilon(0.5), kernel)([x, r]))
    np.testing.assert_allclose(eps, [[6.0, -6.0], [2 * 5 / 5.5, 3 * 5 / 5.5]], rtol=1e-6)
    # the bias can cancel the contributions too: 1·1 + (-1) = 0
    biased = DenseRelevance.from_kernel(rules.Z(), kernel, np.array([-1.0], "float32"))
    np.testing.assert_array_equal(biased([np.array([[1.0, 0.0]], "float32"), r[:1]]), [[0, 0]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stabilize_pushes_away_from_zero_with_zero_as_positive(dtype):
    """z + ε·sign(z) with sign(0) = sign(−0.0) = +1, bit for bit; NaN stays NaN, ±inf stays."""
    tiny = np.finfo(dtype).tiny
    z = np.array([0.0, -0.0, tiny, -tiny, 1e-30, -1e-30, 3.0, -3.0, np.inf, -np.inf, np.nan],
                 dtype)
    epsilon = 0.25
    # −0.0 >= 0 holds; NaN + anything is NaN
    expected = z + np.array([epsilon if v >= 0 else -epsilon for v in z.tolist()], dtype)
    actual = np.asarray(rules.stabilize(tf.constant(z), epsilon))
    assert actual.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(np.asarray(rules.stabilize(tf.constant(z), 0.0)), z)


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.WSquare()], ids=["zplus", "wsquare"])
def test_zero_denominator_output_spreads_flat(rule):
    """A filter with z_j = 0 (all-negative contributions for z⁺, an all-zero filter for w²): its
    relevance is spread flat over each unit's receptive field, never lost (a unit driven by its
    bias alone), and the other filters follow the rule."""
    _, kernel, _, m, _, out_shape = setup_case("conv2d_same_dilated", False)
    kernel = kernel.copy()
    x = np.abs(np.random.default_rng(9).normal(size=(BATCH, 6, 6, 2))).astype("float32")
    kernel[..., 0] = -np.abs(kernel[..., 0]) if isinstance(rule, rules.ZPlus) else 0.0
    m = m.copy().reshape(m.shape[0], *out_shape)
    m[..., 0] = 0.0  # with x >= 0 neither rule has a nonzero z_ij for filter 0
    r = np.ones((BATCH,) + out_shape, "float32")
    actual = np.asarray(ConvRelevance.from_kernel(
        rule, kernel, None, strides=(1, 1), padding="same", dilation_rate=(2, 2))([x, r]))
    c = connectivity("conv2d_same_dilated")
    expected = reference("zplus" if isinstance(rule, rules.ZPlus) else "wsquare", flat(x),
                         m.reshape(m.shape[0], -1), 0.0, flat(r), c=c).reshape(x.shape)
    assert_close(actual, expected)
    dead = np.zeros(out_shape)
    dead[..., 0] = 1.0
    spread = flat_fallback(np.where(dead.reshape(1, -1) > 0, 0.0, 1.0), flat(r), c, flat(x))
    assert spread.sum() > 0 and np.all(actual >= spread.reshape(x.shape) - 1e-6)
    np.testing.assert_allclose(spread.sum(), r[..., 0].sum(), rtol=1e-6)  # filter 0, in full
    np.testing.assert_allclose(actual.sum(), r.sum(), rtol=1e-5)


@pytest.mark.parametrize("tested", [True, False], ids=["zero_test", "no_zero_test"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", ["no_zero", "zero_without_relevance", "zero_with_relevance"])
def test_zero_denominators_found_one_channel_wide(case, data_format, tested, monkeypatch):
    """z⁺ through a convolution with one group, where the relevance lost at zero denominators
    is summed over the channels: a batch whose denominators have no zero skips that sum (where
    the layer is large enough for the test to pay: forced here, and off), one whose zeros hold
    no relevance loses none, one whose zeros hold relevance spreads it; with the channels last
    or first, each against the float64 reference."""
    monkeypatch.setattr(engine, "ZERO_TEST_MIN_SIZE", 0 if tested else 10**9)
    _, kernel, _, _, _, out_shape = setup_case("conv2d_same_dilated", False)
    rng = np.random.default_rng(11)
    x = rng.uniform(0.5, 1.0, (BATCH, 6, 6, 2)).astype("float32")
    r = rng.uniform(0.5, 1.5, (BATCH,) + out_shape).astype("float32")
    kernel = np.abs(kernel) + 0.1  # every unit has positive contributions
    if case != "no_zero":
        kernel[..., 0] = -kernel[..., 0]  # filter 0 has none: z⁺ = 0 at each of its units
    if case == "zero_without_relevance":
        r[..., 0] = 0.0
    m, _ = conv_matrix(kernel.astype("float64"), (6, 6, 2), (1, 1), "same", (2, 2), 1)
    expected = reference("zplus", flat(x), m, 0.0, flat(r),
                         c=connectivity("conv2d_same_dilated")).reshape(x.shape)
    layer = ConvRelevance.from_kernel(rules.ZPlus(), kernel, None, strides=(1, 1),
                                      padding="same", dilation_rate=(2, 2),
                                      data_format=data_format)
    first = data_format == "channels_first"
    to_layer = (lambda a: np.moveaxis(a, -1, 1)) if first else (lambda a: a)
    run = tf.function(lambda x, r: layer([x, r]))  # in a graph, as a relevance model runs
    actual = np.asarray(run(to_layer(x), to_layer(r)))
    assert_close(np.moveaxis(actual, 1, -1) if first else actual, expected)
    dead = (x.reshape(BATCH, -1) @ np.maximum(m, 0.0) == 0) & (flat(r) != 0)
    assert dead.any() == (case == "zero_with_relevance")
    np.testing.assert_allclose(actual.sum(), r.sum(), rtol=1e-5)


# --- Validation ---

@pytest.mark.parametrize("low, high", [
    (1.0, 1.0), (2.0, 1.0), ([0.0, 0.0], [1.0, 0.0]), (np.zeros((2, 2, 3)), -np.ones((2, 2, 3))),
])
def test_zbox_requires_low_below_high(low, high):
    with pytest.raises(tf_dtd.InvalidArgumentError, match="low < high"):
        rules.ZBox(low, high)


def test_zbox_bounds_must_broadcast_to_a_sample():
    with pytest.raises(tf_dtd.InvalidArgumentError,
                       match=r"ZBox needs low and high of broadcastable shapes\. "
                             r"Received: low\.shape=\(3,\), high\.shape=\(4,\)"):
        rules.ZBox(np.zeros(3), np.ones(4))
    layer = DenseRelevance.from_kernel(rules.ZBox(np.zeros(3), np.ones(3)), np.ones((5, 2)))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="broadcast"):
        layer([np.zeros((1, 5), "float32"), np.ones((1, 2), "float32")])


@pytest.mark.parametrize("epsilon", [-1, -1e-9, float("nan")])
def test_epsilon_must_be_nonnegative(epsilon):
    with pytest.raises(tf_dtd.InvalidArgumentError, match="epsilon"):
        rules.Epsilon(epsilon)


# --- Serialisation ---

@pytest.mark.parametrize("name", ["dense_3d", "conv2d_same_strided"])
def test_layer_roundtrip_zbox_per_channel(name, tmp_path):
    _, kernel, bias, _, _, out_shape = setup_case(name, True)
    rule, x, r, _ = make_rule_and_data("zbox_channel", CASES[name][2], out_shape, seed=10)
    layer = relevance_layer(name, rule, kernel, bias)
    assert_layer_roundtrip(layer, [x, r], tmp_path)


@pytest.mark.parametrize("rule", [rules.Z(), rules.Epsilon(0.25), rules.ZPlus(), rules.WSquare(),
                                  rules.ZBox([0.0, -1.0], [1.0, 2.0])],
                         ids=["z", "epsilon", "zplus", "wsquare", "zbox"])
def test_rule_config_roundtrip(rule):
    again = rules.deserialize(rules.serialize(rule))
    assert type(again) is type(rule)
    assert again.get_config() == rule.get_config()


def test_nonnegative_input_flag_survives_config():
    _, kernel, bias, _, _, _ = setup_case("conv1d_causal_dilated", True)
    layer = relevance_layer("conv1d_causal_dilated", rules.ZPlus(), kernel, bias,
                            nonnegative_input=True)
    clone = ConvRelevance.from_config(layer.get_config())
    assert clone.nonnegative_input is True
    assert (clone.strides, clone.padding, clone.dilation_rate) == ((1,), "causal", (2,))
