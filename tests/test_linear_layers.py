"""DepthwiseConv, ConvTranspose, SeparableConv and UpSampling against float64 NumPy references.

Each layer's explicit matrix is built by loops over output positions and kernel offsets (or by
probing the Keras layer with unit inputs where noted), checked against the Keras forward, and the
rules are applied to it as the papers write them (see ``layer_references``). Then LRP-0 = gradient
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
from layer_references import (  # reference machinery, no tests
    BATCH,
    CLASSES,
    L,
    assert_matches,
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
    rule_step,
    transpose_matrix,
    upsampling_matrix,
)
from test_rules import dense_matrix  # helpers only

import tf_dtd
from tf_dtd import rules

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


def layer_matrix(layer, in_shape):
    """(matrix, bias per flattened output, output sample shape) of a built linear layer."""
    kernel = layer.kernel.numpy().astype("float64")
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
    expected, err = rule_step(rule, flat(x), m, b, r, err, low, high)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


# --- 3. SeparableConv: depthwise (no bias), then pointwise 1×1 with the layer's bias ---

SEPARABLE_CASES = {
    "sep2d_same_s2_m2": (lambda: L.SeparableConv2D(
        3, 3, strides=2, padding="same", depth_multiplier=2, name="sep"), (6, 6, 2)),
    "sep1d_valid_dilated": (lambda: L.SeparableConv1D(
        3, 3, dilation_rate=2, padding="valid", name="sep"), (9, 3)),
}


@functools.lru_cache(maxsize=None)
def separable_case(name):
    factory, in_shape = SEPARABLE_CASES[name]
    model = head_model(lambda x: factory()(x), in_shape, seed=zlib.crc32(name.encode()))
    layer = model.get_layer("sep")
    m_dw, mid_shape = depthwise_matrix(layer.depthwise_kernel.numpy().astype("float64"),
                                       in_shape, layer.strides, layer.padding,
                                       layer.dilation_rate)
    pointwise = layer.pointwise_kernel.numpy().astype("float64")
    m_pw, out_shape = dense_matrix(pointwise.reshape(pointwise.shape[-2:]), mid_shape)
    b = np.broadcast_to(layer.bias.numpy().astype("float64"), out_shape).reshape(-1)
    return model, in_shape, m_dw, m_pw, b, out_shape


def separable_composite(case, layer_class, low, high):
    """case -> (composite, depthwise rule, pointwise rule)."""
    dense_z = {L.Dense: rules.Z()}
    if case == "zplus":
        return tf_dtd.Composite(default=rules.ZPlus(), by_type=dense_z), rules.ZPlus(), \
            rules.ZPlus()
    if case == "z":
        return tf_dtd.Composite(default=rules.Z()), rules.Z(), rules.Z()
    zbox = rules.ZBox(low, high)
    if case == "zbox_first_zplus":
        return (tf_dtd.Composite(default=rules.ZPlus(), first=zbox, by_type=dense_z),
                zbox, rules.ZPlus())
    if case == "zbox_first_by_type_gamma":  # pointwise: by_type[SeparableConv], not default
        composite = tf_dtd.Composite(default=rules.Z(), first=zbox,
                                     by_type={L.Dense: rules.Z(), layer_class: rules.Gamma(0.5)})
        return composite, zbox, rules.Gamma(0.5)
    if case == "by_name_epsilon":  # by_name wins over first: both parts
        composite = tf_dtd.Composite(default=rules.ZPlus(), first=zbox, by_type=dense_z,
                                     by_name={"sep": rules.Epsilon(0.25)})
        return composite, rules.Epsilon(0.25), rules.Epsilon(0.25)
    raise ValueError(case)


@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_matrices_reproduce_keras_layer(name):
    model, in_shape, m_dw, m_pw, b, out_shape = separable_case(name)
    x = np.random.default_rng(4).normal(size=(BATCH,) + in_shape).astype("float32")
    actual = np.asarray(model.get_layer("sep")(x))
    assert actual.shape[1:] == out_shape
    np.testing.assert_allclose(flat(actual), flat(x) @ m_dw @ m_pw + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["zplus", "z", "zbox_first_zplus", "zbox_first_by_type_gamma",
                                  "by_name_epsilon"])
@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_two_parts(name, case):
    model, in_shape, m_dw, m_pw, b, _ = separable_case(name)
    rng = np.random.default_rng(5)
    box_low, box_high, x_box, low, high = box(in_shape, rng)
    is_box = "zbox" in case or case == "by_name_epsilon"
    x = x_box if is_box else rng.normal(size=(BATCH,) + in_shape).astype("float32")
    composite, rule_dw, rule_pw = separable_composite(
        case, type(model.get_layer("sep")), box_low, box_high)
    actual = explain(model, composite, x)
    mid = flat(x) @ m_dw
    assert np.any(mid < 0) and np.any(mid > 0)  # signed intermediate
    r, err = head_step(mid @ m_pw + b, head_kernel(model))
    r, err = rule_step(rule_pw, mid, m_pw, b, r, err)
    expected, err = rule_step(rule_dw, flat(x), m_dw, None, r, err, low, high)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


@pytest.mark.parametrize("name", SEPARABLE_CASES)
def test_separable_reference_lrp0_is_gradient_times_input(name):
    """Self-check of the two-part reference (no tf_dtd)."""
    model, in_shape, m_dw, m_pw, b, _ = separable_case(name)
    x = np.random.default_rng(6).normal(size=(BATCH,) + in_shape).astype("float32")
    mid = flat(x) @ m_dw
    r, err = head_step(mid @ m_pw + b, head_kernel(model))
    r, err = rule_step(rules.Z(), mid, m_pw, b, r, err)
    expected, _ = rule_step(rules.Z(), flat(x), m_dw, None, r, err)
    grad_x = gradient_times_input(model, x)
    np.testing.assert_allclose(expected.reshape(x.shape), grad_x, rtol=1e-4,
                               atol=1e-5 * np.abs(grad_x).max())


def test_separable_is_not_one_layer_zplus():
    """The two-part ZPlus differs from z⁺ on the fused matrix M_dw·M_pw (the test can fail)."""
    model, in_shape, m_dw, m_pw, b, _ = separable_case("sep2d_same_s2_m2")
    x = np.random.default_rng(5).normal(size=(BATCH,) + in_shape).astype("float32")
    composite = tf_dtd.Composite(default=rules.ZPlus(), by_type={L.Dense: rules.Z()})
    actual = explain(model, composite, x)
    r, err = head_step(flat(x) @ m_dw @ m_pw + b, head_kernel(model))
    fused, _ = rule_step(rules.ZPlus(), flat(x), m_dw @ m_pw, b, r, err)
    assert not np.allclose(actual, fused.reshape(x.shape), rtol=1e-2)


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


@pytest.mark.parametrize("name", UPSAMPLING_CASES)
def test_upsampling(name):
    """Nearest: each input gets the sum of its copies' relevance. Bilinear: proportional LRP-0
    ``R_i = Σ_j x_i m_ij R_j / z_j`` (the probed interpolation weights)."""
    model, in_shape, m = upsampling_case(name)
    x = np.random.default_rng(7).normal(size=(BATCH,) + in_shape).astype("float32")
    actual = explain(model, tf_dtd.Composite(default=rules.ZPlus(),
                                             by_type={L.Dense: rules.Z()}), x)
    r, err = head_step(flat(x) @ m, head_kernel(model))
    if UPSAMPLING_CASES[name][2] is None:
        expected, err = proportional_step(flat(x)[:, :, None] * m[None], r, err)
    else:
        expected, err = r @ m.T, err @ m.T  # exact routing: copies' relevance summed
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


# --- Properties on a ReLU net of the new layers ---

def mixed_net(seed, positive_first=False):
    """DepthwiseConv2D → SeparableConv2D → Conv2DTranspose → UpSampling2D → head, ReLU,
    bias-free. ``positive_first``: |kernel| in the first layer (see the ZPlus conservation)."""
    inputs = keras.Input((6, 6, 2))
    h = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="relu",
                          use_bias=False, name="dw")(inputs)
    h = L.SeparableConv2D(4, 3, padding="valid", activation="relu", use_bias=False,
                          name="sep")(h)
    h = L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu", use_bias=False,
                          name="tconv")(h)
    h = L.UpSampling2D(2, name="up")(h)
    outputs = L.Dense(CLASSES, use_bias=False, name="head")(L.Flatten()(h))
    model = randomize(keras.Model(inputs, outputs), seed)
    if positive_first:
        dw = model.get_layer("dw")
        dw.kernel.assign(np.abs(dw.kernel.numpy()))
    return model


def mixed_net_reference(model, x, rule):
    """float64 forward through the explicit matrices, then ``rule`` down every layer (LRP-0 on
    the head): returns relevance at the input (B, I), its error bound and the target logits."""
    dw, sep, tconv = (model.get_layer(n) for n in ("dw", "sep", "tconv"))
    m_dw, s1 = depthwise_matrix(dw.kernel.numpy().astype("float64"), (6, 6, 2), (1, 1), "same",
                                (1, 1))
    m_sd, s2 = depthwise_matrix(sep.depthwise_kernel.numpy().astype("float64"), s1, (1, 1),
                                "valid", (1, 1))
    pointwise = sep.pointwise_kernel.numpy().astype("float64")
    m_sp, s3 = dense_matrix(pointwise.reshape(pointwise.shape[-2:]), s2)
    m_t, s4 = transpose_matrix(tconv.kernel.numpy().astype("float64"), s3, (2, 2), "same")
    m_up, _ = upsampling_matrix(s4, (2, 2))
    a0 = flat(x)
    a1 = np.maximum(a0 @ m_dw, 0.0)
    u = a1 @ m_sd
    a2 = np.maximum(u @ m_sp, 0.0)
    a3 = np.maximum(a2 @ m_t, 0.0)
    logits = (a3 @ m_up) @ head_kernel(model).astype("float64")
    target = int(logits[0].argmax())
    assert np.all(logits.argmax(axis=1) == target)
    r, err = head_step(a3 @ m_up, head_kernel(model), target)
    r, err = r @ m_up.T, err @ m_up.T
    for a, m in ((a2, m_t), (u, m_sp), (a1, m_sd), (a0, m_dw)):
        r, err = rule_step(rule, a, m, None, r, err)
    return r, err, target, logits[:, target]


@pytest.mark.parametrize("rule", [rules.ZPlus(), rules.Z()], ids=["zplus", "z"])
def test_mixed_net_matches_composed_reference(rule):
    """The layers composed: signed inputs, the whole net against the float64 reference. Under
    ZPlus relevance is lost where the separable layer's signed intermediate unit has only
    negative contributions (z⁺ = 0): the reference says how much, and the model must agree."""
    model = mixed_net(28)
    x = np.random.default_rng(29).normal(size=(BATCH, 6, 6, 2)).astype("float32")
    expected, err, target, logit = mixed_net_reference(model, x, rule)
    composite = tf_dtd.Composite(default=rule, by_type={L.Dense: rules.Z()})
    actual = explain(model, composite, x, target=target)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))
    conserved = np.isclose(expected.sum(axis=1), logit, rtol=1e-6)
    assert np.all(conserved) if isinstance(rule, rules.Z) else not np.all(conserved)


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
    """ZPlus conserves where every unit that receives relevance has z⁺ > 0. The separable
    layer's signed intermediate can send relevance to a unit whose contributions are all
    negative, so the first layer here has |kernel| and inputs > 0: its outputs are all > 0, the
    valid 3×3 depthwise windows then see nine positive inputs (and each depthwise filter has a
    positive weight), so z⁺ > 0 wherever relevance arrives."""
    model = mixed_net(27, positive_first=True)
    assert np.all(np.max(model.get_layer("sep").depthwise_kernel.numpy(), axis=(0, 1)) > 0)
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
