"""DepthwiseConv, ConvTranspose, SeparableConv and UpSampling against float64 NumPy references.

Each layer's explicit matrix is built by loops over output positions and kernel offsets (or by
probing the Keras layer with unit inputs where noted), checked against the Keras forward, and the
rules are applied to it as the papers write them (see ``references.py``). Then LRP-0 = gradient
× input and conservation on a ReLU net mixing the new layers.
"""


import functools
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from references import (
    BATCH,
    CLASSES,
    TARGET,
    L,
    assert_matches,
    dense_matrix,
    depthwise_matrix,
    explain,
    flat,
    gradient_times_input,
    head_kernel,
    head_model,
    head_step,
    probe_matrix,
    proportional_step,
    randomize,
    reference,
    rule_step,
    transpose_matrix,
    upsampling_matrix,
)

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance import quotient
from tf_dtd.relevance.layers import DepthwiseConvRelevance

# --- 1, 2. DepthwiseConv and ConvTranspose: ordinary linear layers ---

# name -> (layer factory, input sample shape); the layer is named "layer"
LINEAR_CASES = {
    "dw1d_same_s2_m2": (lambda: L.DepthwiseConv1D(
        3, strides=2, padding="same", depth_multiplier=2, name="layer"), (9, 2)),
    "dw1d_valid_dilated_nobias": (lambda: L.DepthwiseConv1D(
        3, dilation_rate=2, padding="valid", use_bias=False, name="layer"), (9, 3)),
    "dw2d_same_s2_m2": (lambda: L.DepthwiseConv2D(
        (3, 2), strides=2, padding="same", depth_multiplier=2, name="layer"), (6, 5, 2)),
    "dw2d_valid_s2_nobias": (lambda: L.DepthwiseConv2D(
        3, strides=2, padding="valid", use_bias=False, name="layer"), (7, 7, 3)),
    "dw2d_same_dilated_m2": (lambda: L.DepthwiseConv2D(
        3, dilation_rate=2, padding="same", depth_multiplier=2, name="layer"), (6, 6, 2)),
    "tconv1d_valid_s2": (lambda: L.Conv1DTranspose(
        3, 3, strides=2, padding="valid", name="layer"), (5, 2)),
    "tconv1d_same_s1_even": (lambda: L.Conv1DTranspose(
        2, 4, strides=1, padding="same", name="layer"), (6, 3)),
    "tconv2d_same_s2": (lambda: L.Conv2DTranspose(
        3, 3, strides=2, padding="same", name="layer"), (4, 4, 2)),
    "tconv2d_valid_s1": (lambda: L.Conv2DTranspose(
        2, (2, 3), strides=1, padding="valid", name="layer"), (4, 3, 3)),
    "tconv2d_valid_s2_k2": (lambda: L.Conv2DTranspose(
        2, 2, strides=(2, 1), padding="valid", name="layer"), (3, 4, 2)),
    "tconv3d_same_s2": (lambda: L.Conv3DTranspose(
        2, 2, strides=(1, 2, 2), padding="same", name="layer"), (2, 3, 3, 2)),
}


def layer_matrix(layer, in_shape, kernel=None):
    """(matrix, bias per flattened output, output sample shape) of a built linear layer."""
    kernel = layer.kernel.numpy().astype("float64") if kernel is None else kernel
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        m, out_shape = depthwise_matrix(kernel, in_shape, layer.strides, layer.padding,
                                        layer.dilation_rate)
    else:
        assert all(d == 1 for d in layer.dilation_rate)
        m, out_shape = transpose_matrix(kernel, in_shape, layer.strides, layer.padding)
    bias = np.zeros(out_shape[-1]) if layer.bias is None else layer.bias.numpy()
    return m, np.broadcast_to(bias.astype("float64"), out_shape).reshape(-1), out_shape


@functools.lru_cache(maxsize=None)
def linear_case(name):
    factory, in_shape = LINEAR_CASES[name]
    model = head_model(lambda x: factory()(x), in_shape, seed=zlib.crc32(name.encode()))
    layer = model.get_layer("layer")
    return model, in_shape, layer_matrix(layer, in_shape)


@functools.lru_cache(maxsize=None)
def linear_connectivity(name):
    """The layer's matrix with an all-ones kernel: where a unit spreads relevance flat."""
    model, in_shape, _ = linear_case(name)
    layer = model.get_layer("layer")
    return layer_matrix(layer, in_shape, np.ones(layer.kernel.shape))[0]


def box(in_shape, rng):
    """A per-channel box and a batch inside it (flattened bounds for the reference)."""
    low = rng.uniform(-1.5, -0.5, in_shape[-1:]).astype("float32")
    high = (low + rng.uniform(1.0, 2.0, in_shape[-1:])).astype("float32")
    x = (low + rng.uniform(0.0, 1.0, (BATCH,) + in_shape) * (high - low)).astype("float32")
    lo = np.broadcast_to(low.astype("float64"), in_shape).reshape(-1)
    hi = np.broadcast_to(high.astype("float64"), in_shape).reshape(-1)
    return low, high, x, lo, hi


# rule case -> (rule of the layer under test, whether it is given as `first`)
LINEAR_RULES = {
    "z": (rules.Z(), False),
    "epsilon": (rules.Epsilon(0.5), False),
    "zplus": (rules.ZPlus(), False),
    "gamma": (rules.Gamma(0.25), False),
    "zbox_first": (None, True),
    "wsquare_first": (rules.WSquare(), True),
}


@pytest.mark.parametrize("name", LINEAR_CASES)
def test_linear_matrix_reproduces_keras_layer(name):
    """Self-check of the reference: x·M + b is the Keras layer's output."""
    model, in_shape, (m, b, out_shape) = linear_case(name)
    x = np.random.default_rng(1).normal(size=(BATCH,) + in_shape).astype("float32")
    actual = np.asarray(model.get_layer("layer")(x))
    assert actual.shape[1:] == out_shape
    np.testing.assert_allclose(flat(actual), flat(x) @ m + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LINEAR_CASES)
def test_linear_reference_lrp0_is_gradient_times_input(name):
    """Self-check of the reference (no tf_dtd): LRP-0 through head and layer = x ∂f_t/∂x."""
    model, in_shape, (m, b, _) = linear_case(name)
    x = np.random.default_rng(2).normal(size=(BATCH,) + in_shape).astype("float32")
    grad_x = gradient_times_input(model, x)
    a = flat(x) @ m + b
    r, err = head_step(a, head_kernel(model))
    expected, _ = rule_step(rules.Z(), flat(x), m, b, r, err)
    np.testing.assert_allclose(expected.reshape(x.shape), grad_x, rtol=1e-4,
                               atol=1e-5 * np.abs(grad_x).max())


@pytest.mark.parametrize("rule_case", LINEAR_RULES)
@pytest.mark.parametrize("name", LINEAR_CASES)
def test_linear_layer_rule(name, rule_case):
    _check_linear_rule(name, rule_case)


@pytest.mark.parametrize("fused", [True, False], ids=["xla", "tf_kernels"])
@pytest.mark.parametrize("name", LINEAR_CASES)
def test_epsilon_quotient_with_and_without_xla(name, fused, monkeypatch):
    """ε's quotient is one XLA function on layers of many values per sample and TensorFlow's
    kernels on the others (``quotient.XLA_QUOTIENT_MIN_SIZE``): both forms on every layer."""
    monkeypatch.setattr(quotient, "XLA_QUOTIENT_MIN_SIZE", 0 if fused else 2**62)
    _check_linear_rule(name, "epsilon")


def _check_linear_rule(name, rule_case):
    model, in_shape, (m, b, _) = linear_case(name)
    rule, first = LINEAR_RULES[rule_case]
    rng = np.random.default_rng(3)
    low = high = None
    if rule_case == "zbox_first":
        box_low, box_high, x, low, high = box(in_shape, rng)
        rule = rules.ZBox(box_low, box_high)
    else:
        x = rng.normal(size=(BATCH,) + in_shape).astype("float32")
    assert np.any(x < 0)  # signed inputs: ZPlus uses (a·w)⁺ = a⁺w⁺ + a⁻w⁻
    if first:
        composite = tf_dtd.Composite(default=rules.ZPlus(), first=rule,
                                     by_type={L.Dense: rules.Z()})
    else:
        composite = tf_dtd.Composite(default=rule, by_type={L.Dense: rules.Z()})
    actual = explain(model, composite, x)
    r, err = head_step(flat(x) @ m + b, head_kernel(model))
    expected, err = rule_step(rule, flat(x), m, b, r, err, low, high,
                              c=linear_connectivity(name))
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


@pytest.mark.parametrize("nonnegative_input", [False, True], ids=["signed_form", "known_ge_0"])
def test_depthwise_spreads_units_no_input_explains(nonnegative_input, batch=3):
    """Depthwise units with a zero z⁺ denominator keep their relevance: spread by |a| over the
    window, evenly over its real inputs (padding excluded) where the whole window is zero — the
    general spread (no channel sum), with the even count taken on one sample. Both forms of z⁺:
    a⁺w⁺ + a⁻w⁻, and a·w⁺ where the input is known to be ≥ 0 (the spread by size then shares
    the product a·(…) with the rule's, and the even spread is added to it)."""
    rng = np.random.default_rng(5)
    in_shape, strides = (7, 6, 2), (2, 2)  # equal: TF's kernel without oneDNN needs it
    kernel = rng.normal(size=(3, 3, 2, 2))
    kernel[:, :, 0, 1] = -np.abs(kernel[:, :, 0, 1])  # output 1 reads channel 0 with w ≤ 0
    x = np.abs(rng.normal(size=(batch,) + in_shape))
    x[:, :4, :4, 1] = 0.0  # windows of channel 1 (outputs 2, 3) that are all zero
    m, out_shape = depthwise_matrix(kernel, in_shape, strides, "same", (1, 1))
    c = depthwise_matrix(np.ones_like(kernel), in_shape, strides, "same", (1, 1))[0]
    r = rng.uniform(0.5, 1.5, size=(batch,) + out_shape)
    layer = DepthwiseConvRelevance.from_kernel(rules.ZPlus(), kernel.astype("float32"), None,
                                               strides=strides, padding="same",
                                               dilation_rate=(1, 1),
                                               nonnegative_input=nonnegative_input)
    actual = np.asarray(layer([x.astype("float32"), r.astype("float32")]))
    expected = reference("zplus", flat(x), m, 0.0, flat(r), c=c).reshape(x.shape)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    z = flat(x) @ np.maximum(m, 0)
    assert np.any((z == 0) & (flat(x) @ c > 0))  # spread by |a|
    assert np.any(flat(x) @ c == 0)  # spread evenly
    np.testing.assert_allclose(actual.sum(), r.sum(), rtol=1e-5)


def gamma_behind_relu(factory, in_shape, seed, matrix, relu_after=False):
    """γ explaining ``Input → ReLU → layer (→ ReLU) → head`` at inputs ≥ 0 (the first ReLU
    passes them, and relevance, unchanged) against the float64 reference; ``matrix(layer)`` is
    ``(M, b)``. The layer's rule takes its by-sign form there: a·w read from the forward pass,
    one extra map on w⁺ for units of both signs. With ``relu_after`` its units with z < 0 get
    no relevance (the head's LRP-0 reads their activation, 0): the negative sign's transpose is
    skipped."""
    def body(x):
        h = factory()(L.ReLU()(x))
        return L.ReLU()(h) if relu_after else h

    model = head_model(body, in_shape, seed=seed)
    m, b = matrix(model.get_layer(factory().name))
    x = np.abs(np.random.default_rng(seed % 1000).normal(size=(BATCH,) + in_shape))
    x = x.astype("float32")
    composite = tf_dtd.Composite(default=rules.Gamma(0.5), by_type={L.Dense: rules.Z()})
    relevance_model = tf_dtd.relevance_model(model, composite, target=TARGET)
    assert [layer.nonnegative_input for layer in relevance_model.layers
            if getattr(layer, "rule", None) == rules.Gamma(0.5)] == [True]
    actual = np.asarray(relevance_model(x))
    z = flat(x) @ m + b
    assert np.any(z < 0) and np.any(z > 0)
    r, err = head_step(np.maximum(z, 0) if relu_after else z, head_kernel(model))
    expected, err = rule_step(rules.Gamma(0.5), flat(x), m, b, r, err)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


@pytest.mark.parametrize("relu_after", [False, True], ids=["signed_output", "relu_after"])
@pytest.mark.parametrize("name", ["dw2d_same_s2_m2", "dw1d_valid_dilated_nobias",
                                  "tconv2d_same_s2"])
def test_gamma_with_and_without_relevance_on_negative_units(name, relu_after):
    """Depthwise (γ per sign on a combined kernel) and transposed convolutions (shared terms),
    with relevance on units of both signs and on units with z ≥ 0 only."""
    factory, in_shape = LINEAR_CASES[name]
    gamma_behind_relu(factory, in_shape, zlib.crc32(name.encode()),
                      lambda layer: layer_matrix(layer, in_shape)[:2], relu_after)


@pytest.mark.parametrize("name", [name for name in LINEAR_CASES if name.startswith("tconv")])
def test_transposed_gamma_on_inputs_known_nonnegative(name):
    """A transposed convolution (its kernel's output channels second to last)."""
    factory, in_shape = LINEAR_CASES[name]
    gamma_behind_relu(factory, in_shape, zlib.crc32(name.encode()),
                      lambda layer: layer_matrix(layer, in_shape)[:2])


# --- 3. SeparableConv: computed as depthwise then pointwise, explained as the one map they make ---

SEPARABLE_CASES = {
    "sep2d_same_s2_m2": (lambda: L.SeparableConv2D(
        3, 3, strides=2, padding="same", depth_multiplier=2, name="sep"), (6, 6, 2)),
    "sep1d_valid_dilated": (lambda: L.SeparableConv1D(
        3, 3, dilation_rate=2, padding="valid", name="sep"), (9, 3)),
}


def _separable_matrices(layer, in_shape, depthwise, pointwise):
    m_dw, mid_shape = depthwise_matrix(depthwise, in_shape, layer.strides, layer.padding,
                                       layer.dilation_rate)
    m_pw, out_shape = dense_matrix(pointwise.reshape(pointwise.shape[-2:]), mid_shape)
    return m_dw, m_pw, out_shape


@functools.lru_cache(maxsize=None)
def separable_case(name):
    """(model, input shape, M_dw, M_pw, bias, output shape, connectivity of M_dw·M_pw)."""
    factory, in_shape = SEPARABLE_CASES[name]
    model = head_model(lambda x: factory()(x), in_shape, seed=zlib.crc32(name.encode()))
    layer = model.get_layer("sep")
    depthwise = layer.depthwise_kernel.numpy().astype("float64")
    pointwise = layer.pointwise_kernel.numpy().astype("float64")
    m_dw, m_pw, out_shape = _separable_matrices(layer, in_shape, depthwise, pointwise)
    ones_dw, ones_pw, _ = _separable_matrices(layer, in_shape, np.ones(depthwise.shape),
                                              np.ones(pointwise.shape))
    connected = (ones_dw @ ones_pw > 0).astype("float64")  # input i feeds output j
    b = np.broadcast_to(layer.bias.numpy().astype("float64"), out_shape).reshape(-1)
    return model, in_shape, m_dw, m_pw, b, out_shape, connected


def separable_composite(case, layer_class, low, high):
    """case -> (composite, the rule of the separable layer)."""
    dense_z = {L.Dense: rules.Z()}
    if case == "zplus":
        return tf_dtd.Composite(default=rules.ZPlus(), by_type=dense_z), rules.ZPlus()
    if case == "z":
        return tf_dtd.Composite(default=rules.Z()), rules.Z()
    zbox = rules.ZBox(low, high)
    if case == "zbox_first_zplus":
        return tf_dtd.Composite(default=rules.ZPlus(), first=zbox, by_type=dense_z), zbox
    if case == "zbox_first_by_type_gamma":  # it reads the pixels: first wins over by_type
        composite = tf_dtd.Composite(default=rules.Z(), first=zbox,
                                     by_type={L.Dense: rules.Z(), layer_class: rules.Gamma(0.5)})
        return composite, zbox
    if case == "by_type_gamma":
        composite = tf_dtd.Composite(default=rules.Z(),
                                     by_type={L.Dense: rules.Z(), layer_class: rules.Gamma(0.5)})
        return composite, rules.Gamma(0.5)
    if case == "by_name_epsilon":  # by_name wins over first
        composite = tf_dtd.Composite(default=rules.ZPlus(), first=zbox, by_type=dense_z,
                                     by_name={"sep": rules.Epsilon(0.25)})
        return composite, rules.Epsilon(0.25)
    raise ValueError(case)


@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_matrices_reproduce_keras_layer(name):
    model, in_shape, m_dw, m_pw, b, out_shape, _ = separable_case(name)
    x = np.random.default_rng(4).normal(size=(BATCH,) + in_shape).astype("float32")
    actual = np.asarray(model.get_layer("sep")(x))
    assert actual.shape[1:] == out_shape
    np.testing.assert_allclose(flat(actual), flat(x) @ m_dw @ m_pw + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["zplus", "z", "zbox_first_zplus", "zbox_first_by_type_gamma",
                                  "by_type_gamma", "by_name_epsilon"])
@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_is_one_linear_map(name, case):
    """The rule applies to M = M_dw·M_pw with the layer's bias: no rule sees the signed
    intermediate tensor, which never went through an activation."""
    model, in_shape, m_dw, m_pw, b, _, connected = separable_case(name)
    rng = np.random.default_rng(5)
    box_low, box_high, x_box, low, high = box(in_shape, rng)
    is_box = "zbox" in case or case == "by_name_epsilon"
    x = x_box if is_box else rng.normal(size=(BATCH,) + in_shape).astype("float32")
    composite, rule = separable_composite(case, type(model.get_layer("sep")), box_low, box_high)
    actual = explain(model, composite, x)
    mid = flat(x) @ m_dw
    assert np.any(mid < 0) and np.any(mid > 0)  # the intermediate is signed
    m = m_dw @ m_pw
    r, err = head_step(flat(x) @ m + b, head_kernel(model))
    expected, err = rule_step(rule, flat(x), m, b, r, err, low, high, c=connected)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_reference_lrp0_is_gradient_times_input(name):
    """Self-check of the reference (no tf_dtd): LRP-0 on the fused map = x ∂f_t/∂x."""
    model, in_shape, m_dw, m_pw, b, _, _ = separable_case(name)
    x = np.random.default_rng(6).normal(size=(BATCH,) + in_shape).astype("float32")
    r, err = head_step(flat(x) @ m_dw @ m_pw + b, head_kernel(model))
    expected, _ = rule_step(rules.Z(), flat(x), m_dw @ m_pw, b, r, err)
    grad_x = gradient_times_input(model, x)
    np.testing.assert_allclose(expected.reshape(x.shape), grad_x, rtol=1e-4,
                               atol=1e-5 * np.abs(grad_x).max())


def test_separable_is_not_two_layers_of_zplus():
    """z⁺ on the fused map differs from z⁺ applied to the two halves in turn, through the signed
    intermediate (the test can tell them apart)."""
    model, in_shape, m_dw, m_pw, b, _, connected = separable_case("sep2d_same_s2_m2")
    x = np.random.default_rng(5).normal(size=(BATCH,) + in_shape).astype("float32")
    composite = tf_dtd.Composite(default=rules.ZPlus(), by_type={L.Dense: rules.Z()})
    actual = explain(model, composite, x)
    mid = flat(x) @ m_dw
    r, err = head_step(mid @ m_pw + b, head_kernel(model))
    r, err = rule_step(rules.ZPlus(), mid, m_pw, b, r, err)
    two_layers, _ = rule_step(rules.ZPlus(), flat(x), m_dw, None, r, err)
    assert not np.allclose(actual, two_layers.reshape(x.shape), rtol=1e-2)


@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_gamma_on_inputs_known_nonnegative(name):
    factory, in_shape = SEPARABLE_CASES[name]

    def matrix(layer):
        m_dw, m_pw, out_shape = _separable_matrices(
            layer, in_shape, layer.depthwise_kernel.numpy().astype("float64"),
            layer.pointwise_kernel.numpy().astype("float64"))
        bias = layer.bias.numpy().astype("float64")
        return m_dw @ m_pw, np.broadcast_to(bias, out_shape).reshape(-1)

    gamma_behind_relu(factory, in_shape, zlib.crc32(name.encode()), matrix)


# --- 4. UpSampling ---

UPSAMPLING_CASES = {
    "up1d": (lambda: L.UpSampling1D(2, name="layer"), (4, 2), (2,)),
    "up2d": (lambda: L.UpSampling2D((2, 3), name="layer"), (3, 2, 2), (2, 3)),
    "up3d": (lambda: L.UpSampling3D((1, 2, 2), name="layer"), (2, 2, 3, 2), (1, 2, 2)),
    "up2d_bilinear": (lambda: L.UpSampling2D(2, interpolation="bilinear", name="layer"),
                      (3, 4, 2), None),
}


@functools.lru_cache(maxsize=None)
def upsampling_case(name):
    factory, in_shape, size = UPSAMPLING_CASES[name]
    model = head_model(lambda x: factory()(x), in_shape, seed=zlib.crc32(name.encode()))
    if size is None:
        m = probe_matrix(model.get_layer("layer"), in_shape)
    else:
        m = upsampling_matrix(in_shape, size)[0]
    return model, in_shape, m


@pytest.mark.parametrize("name", UPSAMPLING_CASES)
def test_upsampling_matrix_reproduces_keras_layer(name):
    model, in_shape, m = upsampling_case(name)
    x = np.random.default_rng(6).normal(size=(BATCH,) + in_shape).astype("float32")
    np.testing.assert_allclose(flat(model.get_layer("layer")(x)), flat(x) @ m,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", UPSAMPLING_CASES)
def test_upsampling_reference_lrp0_is_gradient_times_input(name):
    """Self-check (no tf_dtd): routing / proportional LRP-0 after an LRP-0 head = x ∂f/∂x."""
    model, in_shape, m = upsampling_case(name)
    x = np.random.default_rng(7).normal(size=(BATCH,) + in_shape).astype("float32")
    r, err = head_step(flat(x) @ m, head_kernel(model))
    if UPSAMPLING_CASES[name][2] is None:
        expected, _ = proportional_step(flat(x)[:, :, None] * m[None], r, err)
    else:
        expected = r @ m.T
    grad_x = gradient_times_input(model, x)
    np.testing.assert_allclose(expected.reshape(x.shape), grad_x, rtol=1e-4,
                               atol=1e-5 * np.abs(grad_x).max())


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.Z()], ids=["zplus", "z"])
@pytest.mark.parametrize("name", UPSAMPLING_CASES)
def test_upsampling(name, rule):
    """Nearest: each input gets the sum of its copies' relevance, whatever the rule. Bilinear: a
    linear map with weights ≥ 0 (the probed interpolation weights m_ij) that takes the rule:
    LRP-0 ``R_i = Σ_j x_i m_ij R_j / z_j``; z⁺ ``Σ_j x⁺_i m_ij R_j / Σ_i x⁺_i m_ij``, a unit
    without positive inputs spreading its relevance in proportion to m_ij."""
    model, in_shape, m = upsampling_case(name)
    x = np.random.default_rng(7).normal(size=(BATCH,) + in_shape).astype("float32")
    actual = explain(model, tf_dtd.Composite(default=rule, by_type={L.Dense: rules.Z()}), x)
    r, err = head_step(flat(x) @ m, head_kernel(model))
    if UPSAMPLING_CASES[name][2] is None:
        expected, err = rule_step(rule, flat(x), m, None, r, err, c=m)
    else:
        expected, err = r @ m.T, err @ m.T  # exact routing: copies' relevance summed
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


# --- Properties on a ReLU net of the new layers ---

def mixed_net(seed):
    """DepthwiseConv2D → SeparableConv2D → Conv2DTranspose → UpSampling2D → head, ReLU,
    bias-free."""
    inputs = keras.Input((6, 6, 2))
    h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu",
                          use_bias=False, name="dw")(inputs)
    h = L.SeparableConv2D(4, 3, padding="valid", activation="relu", use_bias=False,
                          name="sep")(h)
    h = L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu", use_bias=False,
                          name="tconv")(h)
    h = L.UpSampling2D(2, name="up")(h)
    outputs = L.Dense(CLASSES, use_bias=False, name="head")(L.Flatten()(h))
    return randomize(keras.Model(inputs, outputs), seed)


def mixed_net_reference(model, x, rule):
    """float64 forward through the explicit matrices, then ``rule`` down every layer (LRP-0 on
    the head; the separable layer as its fused matrix): returns relevance at the input (B, I),
    its error bound and the target logits."""
    dw, sep, tconv = (model.get_layer(n) for n in ("dw", "sep", "tconv"))

    def matrices(kernels):
        k_dw, k_sd, k_sp, k_t = kernels
        m_dw, s1 = depthwise_matrix(k_dw, (6, 6, 2), (1, 1), "same", (1, 1))
        m_sd, s2 = depthwise_matrix(k_sd, s1, (1, 1), "valid", (1, 1))
        m_sp, s3 = dense_matrix(k_sp.reshape(k_sp.shape[-2:]), s2)
        m_t, s4 = transpose_matrix(k_t, s3, (2, 2), "same")
        return m_dw, m_sd @ m_sp, m_t, upsampling_matrix(s4, (2, 2))[0]

    kernels = [w.numpy().astype("float64") for w in (
        dw.kernel, sep.depthwise_kernel, sep.pointwise_kernel, tconv.kernel)]
    m_dw, m_sep, m_t, m_up = matrices(kernels)
    c_dw, c_sep, c_t, _ = matrices([np.ones(k.shape) for k in kernels])
    a0 = flat(x)
    a1 = np.maximum(a0 @ m_dw, 0.0)
    a2 = np.maximum(a1 @ m_sep, 0.0)
    a3 = np.maximum(a2 @ m_t, 0.0)
    logits = (a3 @ m_up) @ head_kernel(model).astype("float64")
    target = int(logits[0].argmax())
    assert np.all(logits.argmax(axis=1) == target)
    r, err = head_step(a3 @ m_up, head_kernel(model), target)
    r, err = r @ m_up.T, err @ m_up.T
    for a, m, c in ((a2, m_t, c_t), (a1, m_sep, (c_sep > 0) * 1.0), (a0, m_dw, c_dw)):
        r, err = rule_step(rule, a, m, None, r, err, c=c)
    return r, err, target, logits[:, target]


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.Z()], ids=["zplus", "z"])
def test_mixed_net_matches_composed_reference(rule):
    """The layers composed: signed inputs, the whole net against the float64 reference, and the
    logit conserved (bias-free: LRP-0 exactly; z⁺ too, its units without positive contributions
    spreading their relevance flat)."""
    model = mixed_net(28)
    x = np.random.default_rng(29).normal(size=(BATCH, 6, 6, 2)).astype("float32")
    expected, err, target, logit = mixed_net_reference(model, x, rule)
    composite = tf_dtd.Composite(default=rule, by_type={L.Dense: rules.Z()})
    actual = explain(model, composite, x, target=target)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))
    np.testing.assert_allclose(expected.sum(axis=1), logit, rtol=1e-6)


@pytest.fixture(scope="module")
def lrp0_net():
    model = mixed_net(26)
    return model, tf_dtd.relevance_model(model, rules.Z(), return_prediction=True)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_lrp0_is_gradient_times_input(lrp0_net, seed):
    model, rel_model = lrp0_net
    x = tf.constant(np.random.default_rng(seed).normal(size=(BATCH, 6, 6, 2)), "float32")
    relevance, logits = (np.asarray(t) for t in rel_model(x))
    target = logits.argmax(axis=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        selected = tf.gather(model(x), target, axis=1, batch_dims=1)
    grad_x = (x * tape.gradient(selected, x)).numpy()
    assert np.abs(grad_x).max() > 0
    np.testing.assert_allclose(relevance, grad_x, rtol=1e-4, atol=1e-5 * np.abs(grad_x).max())
    # conservation (no bias anywhere): Σ R = the logit, up to float32 cancellation in the sum
    np.testing.assert_array_less(
        np.abs(relevance.reshape(BATCH, -1).sum(axis=1) - logits.max(axis=1)),
        1e-4 * np.abs(logits.max(axis=1)) + 1e-6 * np.abs(relevance).reshape(BATCH, -1).sum(1))


@pytest.fixture(scope="module")
def zplus_net():
    """ZPlus conserves everywhere: a unit that receives relevance without a positive
    contribution spreads it flat over its receptive field."""
    model = mixed_net(27)
    composite = tf_dtd.Composite(default=rules.ZPlus(), by_type={L.Dense: rules.Z()})
    return model, tf_dtd.relevance_model(model, composite, return_prediction=True)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_zplus_conservation(zplus_net, seed):
    _, rel_model = zplus_net
    x = np.random.default_rng(seed).uniform(0.05, 1.0, (BATCH, 6, 6, 2)).astype("float32")
    relevance, logits = (np.asarray(t) for t in rel_model(x))
    logit = logits.max(axis=1)
    total = relevance.reshape(BATCH, -1).sum(axis=1)
    np.testing.assert_array_less(np.abs(total - logit), 1e-4 * np.abs(logit))
