"""Merges, gates, LayerNormalization, scale layers, operation nodes and activations.

Subtract, Average, Maximum, Minimum, InceptionResNetV2's CustomScaleLayer and Keras operation
nodes (``x + 3.0``, ``a - b``); ConvNeXt's LayerScale; LayerNormalization (σ constant, Ali et al.
2022); element-wise activations; Multiply as a squeeze-and-excitation gate or split — each
against a float64 NumPy reference written here (see ``references.py``).
"""


import functools
import math

import keras
import numpy as np
import pytest
from keras.src.applications.convnext import LayerScale
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
from references import (
    BATCH,
    CLASSES,
    TARGET,
    L,
    assert_matches,
    conv_matrix,
    explain,
    flat,
    gradient_times_input,
    head_kernel,
    head_model,
    head_step,
    lrp_step,
    proportional_step,
    randomize,
    rule_step,
    split_rows,
)

import tf_dtd
from tf_dtd import rules

# --- 5, 8, 9. Merges, CustomScaleLayer and operation nodes, on rows split by Cropping1D ---

def merge_body(kind, n):
    def body(x):
        ops_ = split_rows(n)(x)
        if kind == "subtract":
            return L.Subtract(name="merge")(ops_)
        if kind == "average":
            return L.Average(name="merge")(ops_)
        if kind == "maximum":
            return L.Maximum(name="merge")(ops_)
        if kind == "minimum":
            return L.Minimum(name="merge")(ops_)
        if kind == "custom_scale":
            return CustomScaleLayer(0.3, name="merge")(ops_)
        if kind == "op_add":
            return ops_[0] + ops_[1]
        if kind == "op_subtract":
            return ops_[0] - ops_[1]
        raise ValueError(kind)
    return body


# kind -> (number of operands, coefficients c_k of z = Σ_k c_k x_k, or None for winner-take-all)
MERGE_CASES = {
    "subtract": (2, (1.0, -1.0)),
    "average": (3, (1 / 3, 1 / 3, 1 / 3)),
    "custom_scale": (2, (1.0, 0.3)),
    "op_add": (2, (1.0, 1.0)),
    "op_subtract": (2, (1.0, -1.0)),
    "maximum": (3, None),
    "minimum": (2, None),
}

FEATURES = 6


def merge_input(kind, n, rng):
    x = rng.normal(size=(BATCH, n, FEATURES)).astype("float32")
    if kind == "maximum":  # ties: all three; operands 1 = 2 on top; operands 0 = 2 on top
        x[:, :, 0] = 0.7
        x[:, :, 1] = [-1.0, 2.0, 2.0]
        x[:, :, 2] = [2.5, -1.0, 2.5]
    elif kind == "minimum":  # ties: both, and operand 1 alone below
        x[:, :, 0] = -0.4
        x[:, :, 1] = [0.5, -2.0]
    return x


def merge_reference(kind, model, x):
    n, coefficients = MERGE_CASES[kind]
    x64 = x.astype("float64")
    if coefficients is None:
        pick = np.argmax if kind == "maximum" else np.argmin  # first occurrence on ties
        winner = pick(x64, axis=1)
        z = np.take_along_axis(x64, winner[:, None], axis=1)[:, 0]
        r, err = head_step(z, head_kernel(model))
        mask = winner[:, None, :] == np.arange(n)[None, :, None]
        return mask * r[:, None, :], mask * err[:, None, :]
    c = np.asarray(coefficients)[None, :, None]
    r, err = head_step((c * x64).sum(axis=1), head_kernel(model))
    # as a matrix from the flattened (n, F) input to the F outputs
    m = np.kron(np.asarray(coefficients)[:, None], np.eye(FEATURES))
    expected, err = proportional_step(flat(x)[:, :, None] * m[None], r, err)
    return expected.reshape(x.shape), err.reshape(x.shape)


@pytest.mark.parametrize("kind", MERGE_CASES)
def test_merge_reference_lrp0_is_gradient_times_input(kind):
    """Self-check (no tf_dtd), on inputs without ties: the reference is x ∂f/∂x."""
    n = MERGE_CASES[kind][0]
    model = head_model(merge_body(kind, n), (n, FEATURES), seed=8)
    x = np.random.default_rng(10).normal(size=(BATCH, n, FEATURES)).astype("float32")
    expected, _ = merge_reference(kind, model, x)
    grad_x = gradient_times_input(model, x)
    np.testing.assert_allclose(expected, grad_x, rtol=1e-4, atol=1e-5 * np.abs(grad_x).max())


@pytest.mark.parametrize("kind", MERGE_CASES)
def test_merge(kind):
    """LRP-0: ``R_k = c_k x_k · R / z``; Maximum / Minimum: all of R to the operand attaining
    it, the first one (in call order) on exact ties."""
    n, coefficients = MERGE_CASES[kind]
    model = head_model(merge_body(kind, n), (n, FEATURES), seed=8)
    x = merge_input(kind, n, np.random.default_rng(9))
    actual = explain(model, tf_dtd.Composite(default=rules.Z()), x)
    expected, err = merge_reference(kind, model, x)
    if coefficients is None:  # the ties are really there and really receive relevance
        assert np.all(expected[:, :, :2].sum(axis=1) != 0)
    assert_matches(actual, expected, err)


@pytest.mark.parametrize("kind", ["subtract", "average", "custom_scale", "op_add"])
def test_merge_zplus_spreads_what_no_operand_explains(kind):
    """z⁺: ``R_k = (c_k x_k)⁺ / Σ_k (c_k x_k)⁺ · R``. Where no operand contributes positively
    (feature 0) the operands share ``R`` by magnitude ``|x_k| / Σ_k |x_k|``; where all are 0
    (feature 1) evenly — never lost. The head uses w², so relevance arrives at both."""
    n, coefficients = MERGE_CASES[kind]
    model = head_model(merge_body(kind, n), (n, FEATURES), seed=8)
    c = np.asarray(coefficients)[None, :]
    x = np.random.default_rng(9).normal(size=(BATCH, n, FEATURES)).astype("float32")
    x[:, :, 0] = -np.abs(x[:, :, 0]) * np.sign(c)
    x[:, :, 1] = 0.0
    actual = explain(model, tf_dtd.Composite(default=rules.ZPlus(),
                                             by_type={L.Dense: rules.WSquare()}), x)
    w2 = head_kernel(model).astype("float64")[:, TARGET] ** 2
    logit = np.asarray(model(x))[:, TARGET].astype("float64")
    r = (w2[None, :] / w2.sum() * logit[:, None])[:, None, :]
    x64 = x.astype("float64")
    positive = np.maximum(c[:, :, None] * x64, 0.0)
    total = positive.sum(axis=1, keepdims=True)
    sizes = np.abs(x64)
    size_total = sizes.sum(axis=1, keepdims=True)
    spread = np.where(size_total > 0, sizes / np.where(size_total > 0, size_total, 1.0), 1 / n)
    expected = np.where(total > 0, positive / np.where(total > 0, total, 1.0), spread) * r
    assert np.all(total[:, :, :2] == 0) and np.all(r[:, :, :2] != 0)
    assert_matches(actual, expected, np.zeros_like(expected))
    np.testing.assert_allclose(actual.sum(axis=(1, 2)), r.sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("kind", ["subtract", "average", "custom_scale", "op_add"])
def test_merge_zero_operands_give_zero(kind):
    """Under LRP-0, where every operand is 0 (z = 0, no contribution) the operands get 0, never
    NaN. The head uses w² (``R_i = w_it² / Σ w² · R_t``), so relevance does arrive at those
    outputs."""
    n, coefficients = MERGE_CASES[kind]
    model = head_model(merge_body(kind, n), (n, FEATURES), seed=8)
    x = merge_input(kind, n, np.random.default_rng(9))
    x[:, :, :2] = 0.0
    actual = explain(model, tf_dtd.Composite(default=rules.Z(),
                                             by_type={L.Dense: rules.WSquare()}), x)
    w2 = head_kernel(model).astype("float64")[:, TARGET] ** 2
    logit = np.asarray(model(x))[:, TARGET].astype("float64")
    r = w2[None, :] / w2.sum() * logit[:, None]
    assert np.all(r[:, :2] != 0)
    m = np.kron(np.asarray(coefficients)[:, None], np.eye(FEATURES))
    expected, err = proportional_step(flat(x)[:, :, None] * m[None], r, np.zeros_like(r))
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape), rtol=1e-4)
    np.testing.assert_array_equal(actual[:, :, :2], 0.0)


@pytest.mark.parametrize("expression", ["x + 3.0", "x * 2.0", "3.0 + x", "2.0 * x"])
def test_operation_with_constant_passes_relevance(expression):
    """``x + c`` and ``x * c`` on a tensor and a constant: relevance at x is relevance at x + c."""
    fn = {"x + 3.0": lambda x: x + 3.0, "x * 2.0": lambda x: x * 2.0,
          "3.0 + x": lambda x: 3.0 + x, "2.0 * x": lambda x: 2.0 * x}[expression]
    model = head_model(fn, (2, 4), seed=10)
    x = np.random.default_rng(11).normal(size=(BATCH, 2, 4)).astype("float32")
    actual = explain(model, rules.Z(), x)
    expected, err = head_step(fn(x.astype("float64")), head_kernel(model))
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


def test_layer_scale_passes_relevance():
    """ConvNeXt's LayerScale (x·γ per channel) passes relevance through unchanged."""
    model = head_model(lambda x: LayerScale(0.1, 4, name="scale")(x), (3, 4), seed=12)
    gamma = model.get_layer("scale").get_weights()[0]
    assert np.any(gamma < 0) and np.all(gamma != 0)
    x = np.random.default_rng(13).normal(size=(BATCH, 3, 4)).astype("float32")
    actual = explain(model, rules.Z(), x)
    expected, err = head_step(x.astype("float64") * gamma, head_kernel(model))
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


# --- 7. LayerNormalization: σ constant, the mean kept as the linear map it is ---

def layer_norm_terms(x, gamma, beta, epsilon):
    """Contributions ``z_ij = x_j γ_i (δ_ij − 1/N) / σ`` (input j, output i; one block per
    row) and denominators ``z_i = Σ_j z_ij + β_i + 1e-9 sign``, as (B, I, J) and (B, J)."""
    batch, rows, n = x.shape
    sigma = np.sqrt(x.var(axis=-1) + epsilon)  # biased variance
    block = np.eye(n) - 1.0 / n  # [j, i]: δ_ij − 1/N
    z_ij = np.zeros((batch, rows * n, rows * n))
    for b in range(batch):
        for t in range(rows):
            sl = slice(t * n, (t + 1) * n)
            z_ij[b, sl, sl] = x[b, t][:, None] * block * gamma[None, :] / sigma[b, t]
    z_j = z_ij.sum(axis=1) + np.tile(beta, rows)
    return z_ij, z_j


def layer_norm_model(zero_beta, seed=14):
    model = head_model(lambda x: L.LayerNormalization(name="norm")(x), (3, 6), seed=seed)
    norm = model.get_layer("norm")
    if zero_beta:
        norm.beta.assign(np.zeros(6, "float32"))
    return model, norm


def test_layer_norm_reference_matches_keras_and_conserves():
    """Self-check: Σ_j z_ij + β_i is Keras' output; with β = 0 the reference conserves."""
    model, norm = layer_norm_model(zero_beta=True)
    x = np.random.default_rng(15).normal(size=(BATCH, 3, 6))
    gamma, beta = norm.gamma.numpy().astype("float64"), norm.beta.numpy().astype("float64")
    z_ij, z_j = layer_norm_terms(x, gamma, beta, norm.epsilon)
    np.testing.assert_allclose(z_ij.sum(axis=1), flat(norm(x.astype("float32"))),
                               rtol=1e-5, atol=1e-5)
    r = np.random.default_rng(16).normal(size=(BATCH, 18))
    r_in, _ = lrp_step(z_ij, z_j, r)
    np.testing.assert_allclose(r_in.sum(axis=1), r.sum(axis=1), rtol=1e-6)  # ε = 1e-9 only


@pytest.mark.parametrize("zero_beta", [False, True], ids=["beta", "zero_beta"])
def test_layer_norm(zero_beta):
    model, norm = layer_norm_model(zero_beta)
    x = (np.random.default_rng(17).normal(size=(BATCH, 3, 6)) * 2 + 0.5).astype("float32")
    relevance, logits = tf_dtd.relevance_model(model, rules.Z(), target=TARGET,
                                               return_prediction=True)(x)
    actual = np.asarray(relevance)
    gamma, beta = norm.gamma.numpy().astype("float64"), norm.beta.numpy().astype("float64")
    z_ij, z_j = layer_norm_terms(x.astype("float64"), gamma, beta, norm.epsilon)
    r, err = head_step(z_ij.sum(axis=1) + np.tile(beta, 3), head_kernel(model))
    expected, err = lrp_step(z_ij, z_j, r, err)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))
    if zero_beta:  # β = 0: nothing absorbed, Σ R = the logit
        logit = np.asarray(logits)[:, TARGET]
        np.testing.assert_allclose(actual.reshape(BATCH, -1).sum(axis=1), logit, rtol=1e-4,
                                   atol=1e-5 * np.abs(actual).sum())
    else:  # β absorbs relevance: the test can tell β from no β
        assert not np.allclose(actual.reshape(BATCH, -1).sum(axis=1),
                               np.asarray(logits)[:, TARGET], rtol=1e-3)


# --- 10. Element-wise activations pass relevance through ---

def gelu(h):
    return 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))


def sigmoid(h):
    return 1.0 / (1.0 + np.exp(-h))


ACTIVATIONS = {
    "relu6_layer": (lambda: L.ReLU(max_value=6.0, name="act"), lambda h: np.clip(h, 0.0, 6.0)),
    "swish": (lambda: L.Activation("swish", name="act"), lambda h: h * sigmoid(h)),
    "hard_swish": (lambda: L.Activation("hard_swish", name="act"),
                   lambda h: h * np.clip(h + 3.0, 0.0, 6.0) / 6.0),
    "gelu": (lambda: L.Activation("gelu", name="act"), gelu),
    "tanh": (lambda: L.Activation("tanh", name="act"), np.tanh),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_passes_relevance(name):
    """``x → Dense("d") → activation → head`` under LRP-0: R at the activation's input is R at
    its output, then LRP-0 (with bias) through d."""
    factory, fn = ACTIVATIONS[name]
    model = head_model(lambda x: factory()(L.Dense(5, name="d")(x)), (6,), seed=18)
    x = (4.0 * np.random.default_rng(19).normal(size=(4, 6))).astype("float32")
    w, b = (v.astype("float64") for v in model.get_layer("d").get_weights())
    h = x.astype("float64") @ w + b
    y = fn(h)
    np.testing.assert_allclose(np.asarray(model.get_layer("act")(h.astype("float32"))), y,
                               rtol=1e-5, atol=1e-6)
    assert np.any(h > 6) and np.any(h < -3)  # every piece of relu6 / hard_swish is used
    actual = explain(model, rules.Z(), x)
    r, err = head_step(y, head_kernel(model))
    expected, err = rule_step(rules.Z(), x.astype("float64"), w, b, r, err)
    assert_matches(actual, expected, err)


# --- 6. Multiply: gate (squeeze-and-excitation) or split ---

H = W = 5
C = 4
SE_TARGET = 0  # a logit far from 0 in both samples (TARGET nearly cancels in one)


def se_model(gate, gate_first=False, seed=20):
    """x → Conv2D(relu, "conv") = a; g = Reshape(1,1,C)(gate(Dense("excite")(GAP(a))));
    Multiply([a, g]) → head. ``gate``: sigmoid fused in Dense or in a 1×1 Conv2D, hard_sigmoid
    as an Activation, or MobileNetV3's op form ``ReLU(6)(e + 3) * (1/6)``."""
    inputs = keras.Input((H, W, 2))
    a = L.Conv2D(C, 3, padding="same", activation="relu", name="conv")(inputs)
    p = L.GlobalAveragePooling2D(name="squeeze")(a)
    if gate == "sigmoid":
        g = L.Dense(C, activation="sigmoid", name="excite")(p)
    elif gate == "hard_sigmoid":
        g = L.Activation("hard_sigmoid", name="gate")(L.Dense(C, name="excite")(p))
    elif gate == "ops":
        g = L.ReLU(6.0, name="relu6")(L.Dense(C, name="excite")(p) + 3.0) * (1.0 / 6.0)
    elif gate == "conv_sigmoid":  # EfficientNet style: 1×1 Conv2D with fused sigmoid
        g = L.Conv2D(C, 1, activation="sigmoid", name="excite")(L.Reshape((1, 1, C))(p))
    else:
        raise ValueError(gate)
    g = L.Reshape((1, 1, C), name="to_gate")(g)
    product = L.Multiply(name="product")([g, a] if gate_first else [a, g])
    outputs = L.Dense(CLASSES, use_bias=False, name="head")(L.Flatten()(product))
    model = keras.Model(inputs, outputs)
    randomize(model, seed)
    excite = model.get_layer("excite")  # gates away from 0 and 1: sigmoid has range to spare
    excite.bias.assign(np.random.default_rng(seed).uniform(-1.0, 1.0, C).astype("float32"))
    return model


@functools.lru_cache(maxsize=None)
def se_case(gate, gate_first=False):
    model = se_model(gate, gate_first)
    conv = model.get_layer("conv")
    m_c, _ = conv_matrix(conv.kernel.numpy().astype("float64"), (H, W, 2), (1, 1), "same",
                         (1, 1), 1)
    b_c = np.broadcast_to(conv.bias.numpy().astype("float64"), (H, W, C)).reshape(-1)
    return model, m_c, b_c


def se_forward(model, m_c, b_c, gate, x):
    """float64 forward: conv input x (B, I), a (B, HWC), p (B, C), e, g (B, C), product."""
    x = flat(x)
    a = np.maximum(x @ m_c + b_c, 0.0)
    p = a.reshape(len(x), H * W, C).mean(axis=1)
    w_e, b_e = (v.astype("float64") for v in model.get_layer("excite").get_weights())
    w_e = w_e.reshape(C, C)  # a 1×1 Conv2D on (1, 1, C) is a Dense
    e = p @ w_e + b_e
    g = sigmoid(e) if "sigmoid" in gate and gate != "hard_sigmoid" else \
        np.clip(e + 3.0, 0.0, 6.0) / 6.0
    product = (a.reshape(len(x), H * W, C) * g[:, None, :]).reshape(len(x), -1)
    return dict(x=x, a=a, p=p, g=g, w_e=w_e, b_e=b_e, product=product)


SE_COMPOSITES = {
    "z": (tf_dtd.Composite(default=rules.Z()), rules.Z(), rules.Z()),
    "zplus_head_z": (tf_dtd.Composite(default=rules.ZPlus(), by_name={"head": rules.Z()}),
                     rules.ZPlus(), rules.ZPlus()),
}


def test_se_reference_forward_matches_keras():
    for gate in ("sigmoid", "hard_sigmoid", "ops", "conv_sigmoid"):
        model, m_c, b_c = se_case(gate)
        x = np.random.default_rng(21).normal(size=(BATCH, H, W, 2)).astype("float32")
        f = se_forward(model, m_c, b_c, gate, x)
        logits = f["product"] @ head_kernel(model).astype("float64")
        np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=1e-4, atol=1e-5)
        assert 0.02 < f["g"].min() and f["g"].max() < 0.98  # gates strictly inside (0, 1)


@pytest.mark.parametrize("composite", SE_COMPOSITES)
@pytest.mark.parametrize("gate, gate_first", [("sigmoid", False), ("sigmoid", True),
                                              ("hard_sigmoid", False), ("ops", False),
                                              ("conv_sigmoid", False)])
def test_multiply_gate(gate, gate_first, composite):
    """Default ``multiply="gate"``: the gated signal gets all of R, the gate branch nothing."""
    model, m_c, b_c = se_case(gate, gate_first)
    composite, conv_rule, _ = SE_COMPOSITES[composite]
    x = np.random.default_rng(22).normal(size=(BATCH, H, W, 2)).astype("float32")
    actual = explain(model, composite, x, target=SE_TARGET)
    f = se_forward(model, m_c, b_c, gate, x)
    r, err = head_step(f["product"], head_kernel(model), SE_TARGET)
    expected, err = rule_step(conv_rule, f["x"], m_c, b_c, r, err)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))


def se_split_reference(model, m_c, b_c, gate, x, conv_rule, excite_rule):
    """``multiply="split"``: a and g each get R/2 (the (1,1,C) gate summed over H, W); the gate's
    half flows back through Reshape (route), the gate activation (passes), Dense "excite" (its
    rule, with bias) and GAP (``R_i = a_i/(HW) · R_c / (p_c + 1e-9 sign)``), joining a."""
    f = se_forward(model, m_c, b_c, gate, x)
    r, err = head_step(f["product"], head_kernel(model), SE_TARGET)
    r_a, err_a = r / 2, err / 2
    r_g = r.reshape(BATCH, H * W, C).sum(axis=1) / 2
    err_g = err.reshape(BATCH, H * W, C).sum(axis=1) / 2
    r_p, err_p = rule_step(excite_rule, f["p"], f["w_e"], f["b_e"], r_g, err_g)
    gap = np.kron(np.ones((H * W, 1)), np.eye(C)) / (H * W)  # (HWC, C)
    r_gap, err_gap = proportional_step(f["a"][:, :, None] * gap[None], r_p, err_p)
    return rule_step(conv_rule, f["x"], m_c, b_c, r_a + r_gap, err_a + err_gap)


@pytest.mark.parametrize("composite", SE_COMPOSITES)
@pytest.mark.parametrize("gate, gate_first", [("sigmoid", False), ("sigmoid", True),
                                              ("ops", False), ("conv_sigmoid", False)])
def test_multiply_split_with_gate(gate, gate_first, composite):
    model, m_c, b_c = se_case(gate, gate_first)
    base, conv_rule, excite_rule = SE_COMPOSITES[composite]
    split = tf_dtd.Composite(default=base.default, by_name=dict(base.by_name), multiply="split")
    x = np.random.default_rng(23).normal(size=(BATCH, H, W, 2)).astype("float32")
    actual = explain(model, split, x, target=SE_TARGET)
    expected, err = se_split_reference(model, m_c, b_c, gate, x, conv_rule, excite_rule)
    assert_matches(actual, expected.reshape(x.shape), err.reshape(x.shape))
    # and it is not the gate mode (the gate branch really carries relevance)
    assert not np.allclose(actual, explain(model, base, x, target=SE_TARGET), rtol=1e-2)


def product_model(seed=24):
    """Two ReLU features multiplied: neither operand is a gate."""
    inputs = keras.Input((4, 4, 2))
    a = L.Conv2D(3, 3, padding="same", activation="relu", name="c1")(inputs)
    b = L.Conv2D(3, 3, padding="same", activation="relu", name="c2")(inputs)
    product = L.Multiply(name="product")([a, b])
    outputs = L.Dense(CLASSES, use_bias=False, name="head")(L.Flatten()(product))
    return randomize(keras.Model(inputs, outputs), seed)


def test_multiply_of_features_needs_split():
    model = product_model()
    with pytest.raises(tf_dtd.UnsupportedLayerError,
                       match=r"'product' \(Multiply\) multiplies 2 tensors") as info:
        tf_dtd.relevance_model(model, rules.Z())
    message = str(info.value)
    assert "product" in message and 'multiply="split"' in message


def test_multiply_of_features_split():
    model = product_model()
    x = np.random.default_rng(25).normal(size=(BATCH, 4, 4, 2)).astype("float32")
    actual = explain(model, tf_dtd.Composite(default=rules.Z(), multiply="split"), x)
    matrices = []
    for name in ("c1", "c2"):
        layer = model.get_layer(name)
        m, _ = conv_matrix(layer.kernel.numpy().astype("float64"), (4, 4, 2), (1, 1), "same",
                           (1, 1), 1)
        matrices.append((m, np.tile(layer.bias.numpy().astype("float64"), 16)))
    a, b = (np.maximum(flat(x) @ m + bias, 0.0) for m, bias in matrices)
    r, err = head_step(a * b, head_kernel(model))
    expected, total_err = 0.0, 0.0
    for m, bias in matrices:
        r_in, err_in = rule_step(rules.Z(), flat(x), m, bias, r / 2, err / 2)
        expected, total_err = expected + r_in, total_err + err_in
    assert_matches(actual, expected.reshape(x.shape), total_err.reshape(x.shape))
