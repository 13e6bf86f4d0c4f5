"""Float64 NumPy references of the rules, and the layers they are computed on (no tf_dtd inside
the references).

A linear layer is turned into its dense matrix ``M`` (flattened input sample × flattened output
sample) by explicit loops over output positions and kernel offsets; every rule is then the paper
formula: contributions ``z_ij``, denominators ``z_j`` and ``R_i = Σ_j z_ij / z_j · R_j``. A zero
denominator contributes zero, except under the rules that spread such a unit's relevance flat over
its receptive field (z⁺, z^B, w², α-β without bias): :func:`flat_fallback`. γ is the generalised,
sign-aware form.

Shared by the rule and layer tests; a reference step also returns a first-order bound of the
float32 error of ``R_i`` (rounding ``U`` of each sum, amplified by ``Σ_i |z_ij| / |z_j|``), so
outputs whose denominator nearly cancels only loosen the tolerance where they send relevance.
"""

import functools
import zlib

import keras
import numpy as np
import tensorflow as tf

import tf_dtd
from tf_dtd import rules
from tf_dtd.relevance.layers import ConvRelevance, DenseRelevance

L = keras.layers
BATCH = 2
CLASSES = 3
TARGET = 1
U = 1e-6  # float32 rounding of one sum, relative to Σ|terms| (float32 ε ≈ 6e-8)


# name -> (keras layer class, constructor kwargs, input sample shape)
CASES = {
    "dense_2d": (keras.layers.Dense, dict(units=5), (7,)),
    "dense_3d": (keras.layers.Dense, dict(units=4), (3, 5)),
    "conv1d_causal_dilated": (
        keras.layers.Conv1D, dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2),
        (9, 2)),
    "conv1d_same_strided": (
        keras.layers.Conv1D, dict(filters=3, kernel_size=3, strides=2, padding="same"), (8, 3)),
    "conv2d_valid_strided": (
        keras.layers.Conv2D, dict(filters=4, kernel_size=3, strides=2, padding="valid"),
        (7, 7, 3)),
    "conv2d_same_strided": (
        keras.layers.Conv2D, dict(filters=3, kernel_size=(3, 2), strides=(2, 3), padding="same"),
        (6, 7, 2)),
    "conv2d_same_dilated": (
        keras.layers.Conv2D, dict(filters=3, kernel_size=3, dilation_rate=2, padding="same"),
        (6, 6, 2)),
    "conv2d_groups2": (
        keras.layers.Conv2D, dict(filters=4, kernel_size=3, groups=2, padding="same"), (5, 5, 4)),
    "conv3d_same_strided": (
        keras.layers.Conv3D, dict(filters=3, kernel_size=2, strides=(1, 2, 1), padding="same"),
        (3, 4, 4, 2)),
}



# --- Explicit matrices of Dense and ConvND ---

def dense_matrix(kernel, in_shape):
    """Dense acting on the last axis: block-diagonal matrix, one block per leading position."""
    c_in, units = kernel.shape
    lead = in_shape[:-1]
    m = np.zeros((int(np.prod(in_shape)), int(np.prod(lead)) * units))
    for t in range(int(np.prod(lead))):
        for i in range(c_in):
            for j in range(units):
                m[t * c_in + i, t * units + j] = kernel[i, j]
    return m, tuple(lead) + (units,)


def conv_matrix(kernel, in_shape, strides, padding, dilation, groups):
    """Channels-last convolution as a matrix, built by explicit loops."""
    spatial, ksize = in_shape[:-1], kernel.shape[:-2]
    c_group, filters = kernel.shape[-2:]
    f_group = filters // groups
    out_sizes, lefts = [], []
    for n, k, s, d in zip(spatial, ksize, strides, dilation):
        span = (k - 1) * d + 1
        if padding == "valid":
            out, left = (n - span) // s + 1, 0
        elif padding == "same":
            out = -(-n // s)
            left = max((out - 1) * s + span - n, 0) // 2
        else:  # causal: pad span - 1 on the left only, then valid
            out, left = (n - 1) // s + 1, span - 1
        out_sizes.append(out)
        lefts.append(left)
    out_shape = tuple(out_sizes) + (filters,)
    in_index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    out_index = np.arange(int(np.prod(out_shape))).reshape(out_shape)
    m = np.zeros((in_index.size, out_index.size))
    for o in np.ndindex(*out_sizes):
        for k in np.ndindex(*ksize):
            p = tuple(oi * s + ki * d - left
                      for oi, ki, s, d, left in zip(o, k, strides, dilation, lefts))
            if not all(0 <= pi < n for pi, n in zip(p, spatial)):
                continue  # the tap falls into the zero padding
            for g in range(groups):
                for c in range(c_group):
                    for f in range(f_group):
                        i = in_index[p + (g * c_group + c,)]
                        j = out_index[o + (g * f_group + f,)]
                        m[i, j] = kernel[k + (c, g * f_group + f)]
    return m, out_shape


# --- The rules as the papers write them ---

def flat_fallback(z_j, r, c, x):
    """Relevance of units whose denominator is exactly zero, spread over their receptive field in
    proportion to the inputs' magnitude ``|x_i|``, evenly where all are zero: ``c`` (I, J) holds
    the structural weights of the layer with an all-ones kernel, ``x`` (B, I) its inputs."""
    dead = (z_j == 0) & (r != 0)
    if not dead.any():  # nothing to spread (and no (B, I, J) array to build for it)
        return np.zeros_like(x, dtype=np.result_type(x, r))
    weights = np.abs(x)[:, :, None] * c[None]            # (B, I, J)
    count = weights.sum(axis=1)                           # (B, J)
    even = count == 0
    weights = np.where(even[:, None, :], c[None], weights)
    count = weights.sum(axis=1)
    share = np.where(dead, r / np.where(count == 0, 1.0, count), 0.0)
    return np.einsum("bij,bj->bi", weights, share)


def reference(rule, x, m, b, r, low=None, high=None, eps=0.0, c=None, return_denominator=False):
    """R_i = Σ_j z_ij / z_j R_j in float64. x: (B, I), m: (I, J), b: (J,), r: (B, J).

    ``c``: the layer's connectivity (its matrix with an all-ones kernel); given, the units of z⁺,
    z^B and w² with a zero denominator spread their relevance flat over it.
    """
    if rule in ("zplus", "zbox") and (rule == "zbox" or np.all(x >= 0)):
        # z_ij a sum of products u_i v_ij (z⁺ on inputs ≥ 0: a_i w⁺_ij; z^B: (a_i − l_i) w⁺_ij
        # + (a_i − h_i) w⁻_ij): the same sums as matrix products, without a (B, I, J) array.
        if rule == "zplus":
            factors = [(x, np.maximum(m, 0.0))]
        else:
            factors = [(x - low[None], np.maximum(m, 0.0)), (x - high[None], np.minimum(m, 0.0))]
        z_j = sum(u @ v for u, v in factors)
        s = np.where(z_j == 0, 0.0, r / np.where(z_j == 0, 1.0, z_j))
        r_in = sum(u * (s @ v.T) for u, v in factors)
    else:
        a, w = x[:, :, None], m[None]
        if rule == "z":
            z_ij = a * w
        elif rule == "zplus":
            z_ij = np.maximum(a * w, 0.0)
        elif rule == "wsquare":
            z_ij = np.broadcast_to(w**2, (len(x),) + m.shape)
        z_j = z_ij.sum(axis=1)
        if rule == "z":  # LRP-0 / LRP-ε: the bias and the stabiliser (sign(0) = +1) join z_j
            z_j = z_j + b
            z_j = z_j + eps * np.where(z_j >= 0, 1.0, -1.0)
        s = np.where(z_j == 0, 0.0, r / np.where(z_j == 0, 1.0, z_j))
        r_in = (z_ij * s[:, None, :]).sum(axis=2)
    if c is not None and rule != "z":
        r_in = r_in + flat_fallback(z_j, r, c, x)
    return (r_in, z_j) if return_denominator else r_in


@functools.lru_cache(maxsize=None)
def setup_case(name, use_bias):
    """A built keras layer with random kernel/bias, its reference matrix and output shape."""
    cls, kwargs, in_shape = CASES[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}-{use_bias}".encode()))
    layer = cls(**kwargs, use_bias=use_bias)
    layer.build((None,) + in_shape)
    kernel = rng.normal(0.0, 0.5, layer.kernel.shape).astype("float32")
    bias = rng.normal(0.0, 0.5, layer.bias.shape).astype("float32") if use_bias else None
    layer.set_weights([kernel] + ([bias] if use_bias else []))
    if cls is keras.layers.Dense:
        m, out_shape = dense_matrix(kernel.astype("float64"), in_shape)
    else:
        m, out_shape = conv_matrix(
            kernel.astype("float64"), in_shape, layer.strides, layer.padding,
            layer.dilation_rate, layer.groups)
    b = np.zeros(out_shape) if bias is None else np.broadcast_to(bias.astype("float64"), out_shape)
    return layer, kernel, bias, m, b.reshape(-1), out_shape


def relevance_layer(name, rule, kernel, bias, **kwargs):
    keras_layer = setup_case(name, bias is not None)[0]
    if isinstance(keras_layer, keras.layers.Dense):
        return DenseRelevance.from_kernel(rule, kernel, bias, **kwargs)
    return ConvRelevance.from_kernel(
        rule, kernel, bias, strides=keras_layer.strides, padding=keras_layer.padding,
        dilation_rate=keras_layer.dilation_rate, data_format="channels_last", **kwargs)


def flat(a):
    return np.asarray(a, "float64").reshape(len(a), -1)


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def assert_layer_roundtrip(layer, inputs, tmp_path):
    """Config round trip, symbolic call, and .keras save/load in safe mode: identical outputs."""
    expected = np.asarray(layer(inputs))
    clone = type(layer).from_config(layer.get_config())
    clone(inputs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(inputs)), expected)
    assert clone.get_config() == layer.get_config()

    symbolic = [keras.Input(shape=t.shape[1:]) for t in inputs]
    output = layer(symbolic)
    assert tuple(output.shape) == (None,) + inputs[0].shape[1:]
    model = keras.Model(symbolic, output)
    np.testing.assert_allclose(np.asarray(model(inputs)), expected, rtol=1e-6, atol=1e-7)

    path = tmp_path / "relevance.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(model(inputs)))
    assert type(loaded.layers[-1]) is type(layer)



# --- Reference machinery ---

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
    map ``x @ m + b`` (the formulas of tf_dtd.rules; ``low`` / ``high`` per flattened input for
    z^B)."""
    a, w = x[:, :, None], m[None]
    a_pos, a_neg = np.maximum(a, 0.0), np.minimum(a, 0.0)
    w_pos, w_neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
    b = np.zeros(m.shape[1]) if b is None else np.asarray(b, "float64")
    if isinstance(rule, rules.Gamma):  # sign-aware: boost what agrees with the plain z_j
        g = rule.gamma
        up = (x @ m + b >= 0)[:, None, :]
        z_ij = np.where(up, a_pos * (w + g * w_pos) + a_neg * (w + g * w_neg),
                        a_pos * (w + g * w_neg) + a_neg * (w + g * w_pos))
        bias = np.where(up[:, 0], b + g * np.maximum(b, 0.0), b + g * np.minimum(b, 0.0))
        return z_ij, z_ij.sum(axis=1) + bias
    if isinstance(rule, rules.Epsilon):  # also Z (ε = 0)
        assert not rule.relative
        z_ij = a * w
        z_j = z_ij.sum(axis=1) + b
        return z_ij, z_j + rule.epsilon * sign(z_j)
    if isinstance(rule, rules.ZPlus):  # (a·w)⁺ = a⁺w⁺ + a⁻w⁻, bias ignored
        z_ij = a_pos * w_pos + a_neg * w_neg
    elif isinstance(rule, rules.ZBox):
        z_ij = (a - low[None, :, None]) * w_pos + (a - high[None, :, None]) * w_neg
    elif isinstance(rule, rules.WSquare):
        z_ij = np.broadcast_to(w**2, (len(x),) + m.shape)
    else:
        raise NotImplementedError(rule)
    return z_ij, z_ij.sum(axis=1)


def rule_step(rule, x, m, b, r, err, low=None, high=None, c=None):
    """One rule step and its error bound; ``c`` (the connectivity) adds the flat fallback of the
    Deep Taylor rules."""
    z_ij, z_j = rule_terms(rule, x, m, b, low, high)
    r_in, r_err = lrp_step(z_ij, z_j, r, err)
    if c is not None and isinstance(rule, (rules.ZPlus, rules.ZBox, rules.WSquare)):
        r_in = r_in + flat_fallback(z_j, r, c, x)
    return r_in, r_err


def proportional_step(z_ij, r, err):
    """LRP-0 on a layer without a kernel: ``z_j = Σ_i z_ij`` (no stabiliser)."""
    return lrp_step(z_ij, z_ij.sum(axis=1), r, err)


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


# --- References of the rule family ---

def _safe_ratio(r, z):
    """R_j / z_j with zero where z_j = 0 (an empty denominator contributes nothing)."""
    return np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, z))


def ref_gamma(x, m, b, r, gamma):
    """Generalised LRP-γ: where z_j = Σ_i a_i w_ij + b_j ≥ 0, z_ij = a⁺(w + γw⁺) + a⁻(w + γw⁻)
    and the bias b + γb⁺; where z_j < 0, z_ij = a⁺(w + γw⁻) + a⁻(w + γw⁺) and b + γb⁻."""
    a, w = x[:, :, None], m[None]
    a_pos, a_neg = np.maximum(a, 0.0), np.minimum(a, 0.0)
    w_pos, w_neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
    up = (x @ m + b >= 0)[:, None, :]
    z_ij = np.where(up, a_pos * (w + gamma * w_pos) + a_neg * (w + gamma * w_neg),
                    a_pos * (w + gamma * w_neg) + a_neg * (w + gamma * w_pos))
    bias = np.where(up[:, 0], b + gamma * np.maximum(b, 0.0), b + gamma * np.minimum(b, 0.0))
    z_j = z_ij.sum(axis=1) + bias
    return (z_ij * _safe_ratio(r, z_j)[:, None, :]).sum(axis=2)


def ref_gamma_classic(x, m, b, r, gamma):
    """The classic LRP-γ of Montavon et al. (2019): z_ij = a_i (w_ij + γ w⁺_ij), bias b + γb⁺."""
    w = m + gamma * np.maximum(m, 0.0)
    z_ij = x[:, :, None] * w[None]
    z_j = z_ij.sum(axis=1) + (b + gamma * np.maximum(b, 0.0))
    return (z_ij * _safe_ratio(r, z_j)[:, None, :]).sum(axis=2)


def ref_alpha_beta(x, m, b, r, alpha, beta):
    """LRP-αβ with separate denominators; b⁺ only in the positive, b⁻ only in the negative one."""
    a_pos, a_neg = np.maximum(x, 0.0)[:, :, None], np.minimum(x, 0.0)[:, :, None]
    w_pos, w_neg = np.maximum(m, 0.0)[None], np.minimum(m, 0.0)[None]
    zp_ij = a_pos * w_pos + a_neg * w_neg  # (a·w)⁺
    zn_ij = a_pos * w_neg + a_neg * w_pos  # (a·w)⁻
    zp_j = zp_ij.sum(axis=1) + np.maximum(b, 0.0)
    zn_j = zn_ij.sum(axis=1) + np.minimum(b, 0.0)
    positive = (zp_ij * _safe_ratio(r, zp_j)[:, None, :]).sum(axis=2)
    negative = (zn_ij * _safe_ratio(r, zn_j)[:, None, :]).sum(axis=2)
    return alpha * positive - beta * negative


def ref_alpha_beta_conserving(x, m, r, alpha, beta, c):
    """LRP-αβ with the biases ignored; a part without contributions spreads its share flat."""
    a_pos, a_neg = np.maximum(x, 0.0)[:, :, None], np.minimum(x, 0.0)[:, :, None]
    w_pos, w_neg = np.maximum(m, 0.0)[None], np.minimum(m, 0.0)[None]
    result = 0.0
    for coefficient, z_ij in ((alpha, a_pos * w_pos + a_neg * w_neg),
                              (-beta, a_pos * w_neg + a_neg * w_pos)):
        z_j = z_ij.sum(axis=1)
        part = (z_ij * _safe_ratio(r, z_j)[:, None, :]).sum(axis=2) + flat_fallback(
            z_j, r, c, x)
        result = result + coefficient * part
    return result


def ref_flat(c, r):
    """Flat: z_ij = 1 for the inputs i that feed j (connectivity c_ij ∈ {0, 1}), z_j = Σ_i c_ij."""
    z_j = c.sum(axis=0)
    return (c[None] * _safe_ratio(r, z_j[None])[:, None, :]).sum(axis=2)


def ref_epsilon_relative(x, m, b, r, epsilon):
    """ε_sample = epsilon · sqrt(mean_j z_j²); z_j + ε_sample · sign(z_j), sign(0) = +1."""
    z_ij = x[:, :, None] * m[None]
    z_j = z_ij.sum(axis=1) + b
    eps = epsilon * np.sqrt(np.mean(z_j**2, axis=1, keepdims=True))
    den = z_j + eps * np.where(z_j >= 0, 1.0, -1.0)
    return (z_ij * _safe_ratio(r, den)[:, None, :]).sum(axis=2)


def connectivity(name):
    """c_ij = 1 where input position i feeds output j (zero padding and other groups excluded)."""
    layer, kernel, _, _, _, _ = setup_case(name, False)
    in_shape = CASES[name][2]
    ones = np.ones(kernel.shape)
    if isinstance(layer, L.Dense):
        return dense_matrix(ones, in_shape)[0]
    return conv_matrix(ones, in_shape, layer.strides, layer.padding, layer.dilation_rate,
                       layer.groups)[0]


def residual_dense_block(shortcut_dense=False, second_reader=False, twice=False, dropout=False):
    """stem → first (ReLU) → third, added to the stem's output (or a Dense shortcut of it),
    then a ReLU and the head."""
    keras.utils.set_random_seed(11)
    x = keras.Input((5,))
    a = L.Dense(6, activation="relu", name="stem")(x)
    h = L.Dense(6, activation="relu", name="first")(a)
    h = L.Dense(6, name="third")(h)
    if dropout:
        h = L.Dropout(0.5, name="drop")(h)
    shortcut = L.Dense(6, name="shortcut")(a) if shortcut_dense else a
    y = L.Add(name="add")([h, h] if twice else [shortcut, h])
    outputs = L.Dense(3, name="head")(L.ReLU(name="out")(y))
    if second_reader:
        outputs = L.Add(name="heads")([outputs, L.Dense(3, name="aside")(h)])
    return keras.Model(x, outputs)


def residual_dense_block_epsilon(model, x, epsilon, shortcut_dense=False):
    """float64 LRP-ε of the top logit through :func:`residual_dense_block`, written out."""
    def stabilized(z):
        return z + epsilon * np.where(z >= 0, 1.0, -1.0)

    def dense(name, a):
        kernel, bias = (w.astype("float64") for w in model.get_layer(name).get_weights())
        return a @ kernel + bias, kernel

    def back(a, kernel, z, relevance):
        return a * ((relevance / stabilized(z)) @ kernel.T)

    x = x.astype("float64")
    z_stem, k_stem = dense("stem", x)
    a = np.maximum(z_stem, 0)
    z_first, k_first = dense("first", a)
    h = np.maximum(z_first, 0)
    z_third, k_third = dense("third", h)
    shortcut, k_short = dense("shortcut", a) if shortcut_dense else (a, None)
    y = shortcut + z_third
    r = np.maximum(y, 0)
    logits, k_head = dense("head", r)
    rows, top = np.arange(len(x)), logits.argmax(axis=1)
    relevance = np.zeros_like(logits)
    relevance[rows, top] = logits[rows, top]
    at_sum = back(r, k_head, logits, relevance)
    share = at_sum / stabilized(y)
    at_third, at_shortcut = z_third * share, shortcut * share
    at_a = back(a, k_first, z_first, back(h, k_third, z_third, at_third))
    at_a = at_a + (back(a, k_short, shortcut, at_shortcut) if shortcut_dense else at_shortcut)
    return back(x, k_stem, z_stem, at_a)
