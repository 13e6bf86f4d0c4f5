"""Float64 NumPy reference machinery for the layers of modern architectures (no tf_dtd inside).

Shared by ``test_linear_layers.py`` and ``test_merges_and_gates.py``. A reference step returns,
next to ``R_i``, a first-order bound of the float32 error of ``R_i`` (rounding ``U`` of each sum,
amplified by ``Σ_i |z_ij| / |z_j|``), so outputs whose denominator nearly cancels only loosen the
tolerance where they actually send relevance. Layers are tested through the public API: a model
``Input → [layer under test] → Flatten → Dense(classes, no bias, "head")`` with random weights,
explained for one target logit; the reference first takes LRP-0 through the head
(``R_i = a_i w_it R_t / z_t`` with ``R_t = z_t``), then the rule through the layer under test.
"""



import keras
import numpy as np
import tensorflow as tf

import tf_dtd
from tf_dtd import rules

L = keras.layers
BATCH = 2
CLASSES = 3
TARGET = 1
U = 1e-6  # float32 rounding of one sum, relative to Σ|terms| (float32 ε ≈ 6e-8)
STABILISER = 1e-9  # the proportional handlers' ε


# --- Reference machinery ---

def flat(a):
    return np.asarray(a, "float64").reshape(len(a), -1)


def sign(z):
    """sign with sign(0) = +1, as the stabilisers use it."""
    return np.where(z >= 0, 1.0, -1.0)


def lrp_step(z_ij, z_j, r, err=None):
    """``R_i = Σ_j z_ij / z_j · R_j`` (a zero ``z_j`` contributes zero) and its error bound.

    ``z_ij``: (B, I, J) contributions, ``z_j``: (B, J) denominators (bias and stabiliser
    included), ``r`` / ``err``: (B, J) relevance and its float32 error bound. The bound of
    ``s_j = R_j / z_j`` is ``|s_j| U (1 + 2 κ_j) + err_j / |z_j|`` with the condition number
    ``κ_j = (Σ_i |z_ij| + |z_j − Σ_i z_ij|) / |z_j|``.
    """
    err = np.zeros_like(r) if err is None else err
    scale = np.abs(z_ij).sum(axis=1) + np.abs(z_j - z_ij.sum(axis=1))
    nonzero = z_j != 0
    den = np.where(nonzero, z_j, 1.0)
    s = np.where(nonzero, r / den, 0.0)
    err_s = np.where(nonzero, np.abs(s) * U * (1 + 2 * scale / np.abs(den)) + err / np.abs(den),
                     0.0)
    return np.einsum("bij,bj->bi", z_ij, s), np.einsum("bij,bj->bi", np.abs(z_ij), err_s)


def rule_terms(rule, x, m, b, low=None, high=None):
    """Contributions ``z_ij`` (B, I, J) and denominators ``z_j`` (B, J) of ``rule`` on the linear
    map ``x @ m + b`` (rules.py's formulas; ``low`` / ``high`` per flattened input for z^B)."""
    a, w = x[:, :, None], m[None]
    w_pos, w_neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
    b = np.zeros(m.shape[1]) if b is None else np.asarray(b, "float64")
    if isinstance(rule, rules.Gamma):
        z_ij = a * (w + rule.gamma * w_pos)
        return z_ij, z_ij.sum(axis=1) + b + rule.gamma * np.maximum(b, 0.0)
    if isinstance(rule, rules.Epsilon):  # also Z (ε = 0)
        assert not rule.relative
        z_ij = a * w
        z_j = z_ij.sum(axis=1) + b
        return z_ij, z_j + rule.epsilon * sign(z_j)
    if isinstance(rule, rules.ZPlus):  # (a·w)⁺ = a⁺w⁺ + a⁻w⁻, bias ignored
        z_ij = np.maximum(a, 0.0) * w_pos + np.minimum(a, 0.0) * w_neg
    elif isinstance(rule, rules.ZBox):
        z_ij = a * w - low[None, :, None] * w_pos - high[None, :, None] * w_neg
    elif isinstance(rule, rules.WSquare):
        z_ij = np.broadcast_to(w**2, (len(x),) + m.shape)
    else:
        raise NotImplementedError(rule)
    return z_ij, z_ij.sum(axis=1)


def rule_step(rule, x, m, b, r, err, low=None, high=None):
    return lrp_step(*rule_terms(rule, x, m, b, low, high), r, err)


def proportional_step(z_ij, r, err):
    """LRP-0 with the handlers' tiny stabiliser: ``z_j = Σ_i z_ij + 1e-9·sign``."""
    z_j = z_ij.sum(axis=1)
    return lrp_step(z_ij, z_j + STABILISER * sign(z_j), r, err)


def head_step(a, head_kernel, target=TARGET):
    """LRP-0 through the bias-free head for ``target``: relevance and error bound at its input."""
    a = flat(a)
    w = head_kernel.astype("float64")[:, target:target + 1]
    z_ij = a[:, :, None] * w[None]
    logit = z_ij.sum(axis=1)
    return lrp_step(z_ij, logit, logit)


def assert_matches(actual, expected, err, rtol=1e-5):
    """|actual − expected| ≤ err + rtol |expected| + 1e-6 max |expected| element-wise."""
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    assert np.abs(expected).max() > 0
    tol = err + rtol * np.abs(expected) + 1e-6 * np.abs(expected).max()
    bad = np.abs(actual - expected) > tol
    if np.any(bad):
        index = np.unravel_index(np.argmax(np.abs(actual - expected) - tol), actual.shape)
        raise AssertionError(
            f"{bad.sum()} of {bad.size} elements differ; worst at {index}: actual "
            f"{actual[index]:.8g}, expected {expected[index]:.8g}, tolerance {tol[index]:.3g}; "
            f"max |expected| = {np.abs(expected).max():.4g}")


def randomize(model, seed, std=0.5):
    """Random normal weights for every layer (bias, LayerNorm β and all)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.normal(0.0, std, w.shape).astype("float32") for w in weights])
    return model


def head_model(body, in_shape, seed):
    """``Input → body → Flatten → Dense(CLASSES, no bias, "head")`` with random weights."""
    inputs = keras.Input(in_shape)
    h = body(inputs)
    if len(h.shape) > 2:
        h = L.Flatten()(h)
    return randomize(keras.Model(inputs, L.Dense(CLASSES, use_bias=False, name="head")(h)), seed)


def explain(model, rule_set, x, target=TARGET, **kwargs):
    relevance = tf_dtd.relevance_model(model, rule_set, target=target, **kwargs)(x)
    return np.asarray(relevance)


def head_kernel(model):
    return model.get_layer("head").kernel.numpy()


def split_rows(n):
    """Operands 0..n-1 of a merge: row k of an (n, F) input, by Cropping1D (exact routing)."""
    return lambda x: [L.Cropping1D((k, n - 1 - k))(x) for k in range(n)]


def gradient_times_input(model, x, target=TARGET):
    """x ∂f_target/∂x of the Keras model (tf.GradientTape): what LRP-0 references must give."""
    x = tf.constant(x, "float32")
    with tf.GradientTape() as tape:
        tape.watch(x)
        logit = model(x)[:, target]
    return (x * tape.gradient(logit, x)).numpy()


# --- Explicit matrices of the new linear layers ---

def conv_geometry(n, k, s, d, padding):
    """(output size, left padding) of a convolution over ``n`` positions, TF conventions."""
    span = (k - 1) * d + 1
    if padding == "valid":
        return (n - span) // s + 1, 0
    out = -(-n // s)
    return out, max((out - 1) * s + span - n, 0) // 2


def depthwise_matrix(kernel, in_shape, strides, padding, dilation):
    """Depthwise convolution: output channel ``c·M + m`` reads input channel ``c`` only with
    ``kernel[k..., c, m]`` (kernel shape (k..., C, M))."""
    spatial, ksize = in_shape[:-1], kernel.shape[:-2]
    channels, mult = kernel.shape[-2:]
    geometry = [conv_geometry(n, k, s, d, padding)
                for n, k, s, d in zip(spatial, ksize, strides, dilation)]
    out_sizes = tuple(g[0] for g in geometry)
    out_shape = out_sizes + (channels * mult,)
    in_index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    out_index = np.arange(int(np.prod(out_shape))).reshape(out_shape)
    m = np.zeros((in_index.size, out_index.size))
    for o in np.ndindex(*out_sizes):
        for k in np.ndindex(*ksize):
            p = tuple(oi * s + ki * d - g[1]
                      for oi, ki, s, d, g in zip(o, k, strides, dilation, geometry))
            if not all(0 <= pi < n for pi, n in zip(p, spatial)):
                continue  # zero padding
            for c in range(channels):
                for mm in range(mult):
                    m[in_index[p + (c,)], out_index[o + (c * mult + mm,)]] = kernel[k + (c, mm)]
    return m, out_shape


def transpose_matrix(kernel, in_shape, strides, padding):
    """Transposed convolution (kernel shape (k..., F, C)): ``y[p·s + k − left, f] +=
    x[p, c] · kernel[k, f, c]``, the adjoint of the convolution mapping the output back to the
    input. Output size: ``valid``: ``(n − 1)s + max(k, s)``, ``same``: ``n·s``; ``left`` is that
    convolution's left padding."""
    spatial, ksize = in_shape[:-1], kernel.shape[:-2]
    filters, channels = kernel.shape[-2:]
    out_sizes, lefts = [], []
    for n, k, s in zip(spatial, ksize, strides):
        out = (n - 1) * s + max(k, s) if padding == "valid" else n * s
        out_sizes.append(out)
        lefts.append(conv_geometry(out, k, s, 1, padding)[1])
    out_shape = tuple(out_sizes) + (filters,)
    in_index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    out_index = np.arange(int(np.prod(out_shape))).reshape(out_shape)
    m = np.zeros((in_index.size, out_index.size))
    for p in np.ndindex(*spatial):
        for k in np.ndindex(*ksize):
            q = tuple(pi * s + ki - left for pi, ki, s, left in zip(p, k, strides, lefts))
            if not all(0 <= qi < n for qi, n in zip(q, out_sizes)):
                continue  # cropped by the padding
            for c in range(channels):
                for f in range(filters):
                    m[in_index[p + (c,)], out_index[q + (f,)]] += kernel[k + (f, c)]
    return m, out_shape


def upsampling_matrix(in_shape, size):
    """Nearest up-sampling as a 0/1 routing matrix: output ``q`` copies input ``q // size``."""
    out_shape = tuple(n * s for n, s in zip(in_shape[:-1], size)) + in_shape[-1:]
    in_index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    out_index = np.arange(int(np.prod(out_shape))).reshape(out_shape)
    m = np.zeros((in_index.size, out_index.size))
    for q in np.ndindex(*out_shape):
        p = tuple(qi // s for qi, s in zip(q[:-1], size)) + q[-1:]
        m[in_index[p], out_index[q]] = 1.0
    return m, out_shape


def probe_matrix(layer, in_shape):
    """The matrix of a linear, bias-free Keras layer, probed with the unit basis inputs
    (used for bilinear up-sampling only, whose interpolation weights Keras defines)."""
    size = int(np.prod(in_shape))
    basis = np.eye(size, dtype="float32").reshape((size,) + in_shape)
    return flat(layer(basis))
