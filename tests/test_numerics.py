"""Numerical robustness: dead units, zero denominators, extreme logits, determinism, bad samples.

The expectations are exact wherever the maths makes them exact:

- Relevance is finite for every preset and rule on models with dead units (all-zero kernel
  columns, ReLUs that never fire, units that are exactly zero), on all-zero inputs and on all-zero
  samples inside a batch. Zero denominators contribute zero (docs/rules.md, "Zero denominators").
- Every rule is linear in the relevance it receives, so a logit that is exactly zero, a class whose
  kernel column is zero, or a zero input under a rule whose contributions carry the input
  (``z_ij ∝ a_i``) gives relevance that is exactly 0.0, not merely small.
- Logits of ~1e6 or ~1e-6 keep the conservation of ``deep_taylor_bounded`` on a bias-free ReLU
  network, and ``lrp_z`` stays gradient×input there.
- On CPU, repeated evaluation is bitwise reproducible.
- A NaN or Inf sample does not change the relevance of the other samples in its batch.
- An empty batch: what Keras and tf_dtd do is pinned down (see ``test_empty_batch``).

Sums and errors are evaluated in float64 so that the checks add no rounding of their own.
"""

import functools
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dtd
from tf_dtd import rules
from tf_dtd.composites import resolve
from tf_dtd.relevance.plan import decide

L = keras.layers
BOX = (0.0, 1.0)

# Every preset, every rule class (one rule for all kernel layers) and the first-layer rules.
CONFIGS = {name: name for name in tf_dtd.PRESETS}
CONFIGS.update({
    "Z": rules.Z(),
    "Epsilon(1e-6)": rules.Epsilon(1e-6),
    "Epsilon(0.25,relative)": rules.Epsilon(0.25, relative=True),
    "Gamma(0.25)": rules.Gamma(0.25),
    "AlphaBeta(1,0)": rules.AlphaBeta(1, 0),
    "AlphaBeta(2,1)": rules.AlphaBeta(2, 1),
    "ZPlus": rules.ZPlus(),
    "ZBox(0,1)-first": tf_dtd.Composite(default=rules.Z(), first=rules.ZBox(0.0, 1.0)),
    "WSquare-first": tf_dtd.Composite(default=rules.Z(), first=rules.WSquare()),
    "Flat-first": tf_dtd.Composite(default=rules.Z(), first=rules.Flat()),
    # The other layer modes: proportional max-pooling, relevance into the gate branch.
    "ZPlus-proportional-split": tf_dtd.Composite(default=rules.ZPlus(),
                                                 max_pooling="proportional", multiply="split"),
})
CONFIG_IDS = list(CONFIGS)


def first_rule_carries_input(config):
    """Whether the first kernel layer's ``z_ij`` is proportional to its input ``a_i``.

    Then an all-zero sample gets relevance exactly 0. Not so for z^B (``−l w⁺ − h w⁻``), w² and
    Flat, which give relevance to a zero input.
    """
    return resolve(config, BOX).first is None


# --- Models with dead units ---

# The logit layers have 4 classes: 0 and 1 ordinary (0 with bias +3, so that it is the top
# class), ZERO_CLASS with kernel column and bias 0 (its logit is exactly 0 for every input) and
# CONSTANT_CLASS with kernel column 0 and bias 0.5 (logit 0.5 for every input; under z⁺ its
# denominator Σ (a w)⁺ is exactly 0 while its relevance is 0.5).
CLASSES, ZERO_CLASS, CONSTANT_CLASS = 4, 2, 3


def _kill(layer, zero=(), constant=(), never=(), bias=-1e3):
    """Dead units: ``zero`` (kernel column and bias 0: exactly 0), ``constant`` (kernel column 0,
    bias 0.5: a constant that receives relevance but has no input contributions) and ``never``
    (bias ``bias``: a ReLU that never fires)."""
    kernel, *rest = layer.get_weights()
    b = rest[0] if rest else None
    for j in zero:
        kernel[..., j] = 0.0
        if b is not None:
            b[j] = 0.0
    for j in constant:
        kernel[..., j] = 0.0
        b[j] = 0.5
    for j in never:
        b[j] = bias
    layer.set_weights([kernel] + ([b] if b is not None else []))


def _dead_classes(head):
    _kill(head, zero=[ZERO_CLASS], constant=[CONSTANT_CLASS])
    kernel, bias = head.get_weights()
    bias[0] = 3.0
    head.set_weights([kernel, bias])


def _random_batchnorm(layer, rng):
    channels = layer.gamma.shape[0]
    layer.set_weights([rng.uniform(0.5, 2.0, channels), rng.normal(size=channels),
                       rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)])


@functools.lru_cache(maxsize=None)
def conv_model():
    """Conv2D → max-pool → Add(1×1 branch) → BatchNorm (after Add: not foldable) → avg-pool →
    squeeze-and-excitation gate (Multiply) → Dense → LayerNorm → Dense logits, with dead units in
    every kernel layer."""
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    inputs = keras.Input((8, 8, 2))
    h = L.Conv2D(5, 3, padding="same", activation="relu", name="conv")(inputs)
    h = L.MaxPooling2D(2)(h)
    branch = L.Conv2D(5, 1, activation="relu", name="branch")(h)
    h = L.BatchNormalization(name="bn")(L.Add()([h, branch]))
    h = L.AveragePooling2D(2)(h)
    gate = L.Dense(5, activation="sigmoid", name="excite")(L.GlobalAveragePooling2D()(h))
    h = L.Multiply()([h, L.Reshape((1, 1, 5))(gate)])
    h = L.Dense(6, activation="relu", name="dense")(L.Flatten()(h))
    h = L.LayerNormalization(name="ln")(h)
    outputs = L.Dense(CLASSES, name="logits")(h)
    model = keras.Model(inputs, outputs, name="conv_dead")
    _kill(model.get_layer("conv"), zero=[1], constant=[0], never=[2], bias=-100.0)
    _kill(model.get_layer("branch"), zero=[0], never=[1])
    _kill(model.get_layer("dense"), zero=[0], never=[1])
    _dead_classes(model.get_layer("logits"))
    _random_batchnorm(model.get_layer("bn"), rng)
    return model


@functools.lru_cache(maxsize=None)
def dense_model(zero_head=False):
    """Dense (no bias) → BatchNorm (after ReLU: not foldable) → Dense → LayerNorm → Dense, with
    dead units: on an all-zero input every pre-activation of the first layer is exactly 0.
    ``zero_head``: the logit layer has zero kernel and bias, every logit is exactly 0."""
    keras.utils.set_random_seed(12)
    rng = np.random.default_rng(12)
    inputs = keras.Input((10,))
    h = L.Dense(8, activation="relu", use_bias=False, name="fc1")(inputs)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Dense(6, activation="relu", name="fc2")(h)
    h = L.LayerNormalization(name="ln")(h)
    outputs = L.Dense(CLASSES, name="logits")(h)
    model = keras.Model(inputs, outputs, name="dense_dead")
    fc1 = model.get_layer("fc1")
    _kill(fc1, zero=[0])
    (kernel,) = fc1.get_weights()
    kernel[:, 1] = -np.abs(kernel[:, 1])  # never fires on inputs >= 0; exactly 0 at x = 0
    fc1.set_weights([kernel])
    _kill(model.get_layer("fc2"), zero=[0], never=[1])
    _dead_classes(model.get_layer("logits"))
    _random_batchnorm(model.get_layer("bn"), rng)
    if zero_head:
        head = model.get_layer("logits")
        head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    return model


@functools.lru_cache(maxsize=None)
def relu_net():
    """A bias-free ReLU conv net (conv, max-pool, conv, dense, dense): z⁺ and z^B conserve
    exactly here, and LRP-0 is gradient×input."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12, 12, 2))
    h = L.Conv2D(6, 3, activation="relu", use_bias=False)(inputs)
    h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(8, 3, activation="relu", use_bias=False)(h)
    h = L.Dense(16, activation="relu", use_bias=False)(L.Flatten()(h))
    outputs = L.Dense(4, use_bias=False, name="logits")(h)
    return keras.Model(inputs, outputs, name="relu_net")


MODELS = {"conv": conv_model, "dense": dense_model}


def samples(model, n, seed=0):
    """``n`` samples in [0, 1] (strictly inside) for ``model``, as float32."""
    shape = (n, *model.input_shape[1:])
    return np.random.default_rng(seed).uniform(0.05, 0.95, shape).astype("float32")


@functools.lru_cache(maxsize=None)
def relevance_model(model_name, config_name):
    """The cached relevance model (explained class given per sample, logits returned too)."""
    model = MODELS[model_name]()
    return tf_dtd.relevance_model(model, CONFIGS[config_name], input_range=BOX, target="input",
                                  return_prediction=True)


def run(relevance, *inputs):
    """Eager call (cheaper than predict's tracing for a few small batches); NumPy outputs."""
    return [np.asarray(t) for t in relevance(list(inputs) if len(inputs) > 1 else inputs[0])]


def per_sample(a):
    return np.asarray(a, "float64").reshape(len(a), -1)


# --- 1. Dead units and exactly-zero denominators ---

@pytest.mark.parametrize("config", CONFIG_IDS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_dead_units_and_zero_inputs_give_finite_relevance(model_name, config):
    """Finite everywhere. Exactly 0 for the class whose logit is exactly 0. The class with a
    zero kernel column (logit 0.5 from its bias alone) gets 0 where the logit layer's rule lets
    the bias absorb it (LRP-0, ε, γ, α-β with bias), and is spread flat, never lost, where the
    rule has nothing to credit it to (z⁺, α-β without bias). For all-zero inputs where the first
    rule carries the input, 0 too unless a unit spreads relevance flat. Then a batch of all-zero
    inputs."""
    model = MODELS[model_name]()
    relevance = relevance_model(model_name, config)
    x = samples(model, 3)
    x[1] = 0.0  # an all-zero sample inside a batch
    batch = np.concatenate([x, x, x])
    class_ids = np.repeat(np.array([0, ZERO_CLASS, CONSTANT_CLASS], "int32"), 3)
    heatmaps, logits = run(relevance, batch, class_ids)
    assert np.all(np.isfinite(logits))
    assert np.all(np.isfinite(heatmaps)), np.argwhere(~np.isfinite(heatmaps))
    assert np.all(logits[:, 0] > 0.5)
    np.testing.assert_array_equal(logits[:, ZERO_CLASS], 0.0)
    np.testing.assert_array_equal(logits[:, CONSTANT_CLASS], 0.5)
    assert not np.any(heatmaps[3:6]), "a class with logit 0 got relevance"
    if _spreads_flat(model, config, "logits"):
        assert np.all(per_sample(heatmaps[6:]).sum(axis=1) > 0), "the bias-driven logit vanished"
    else:
        assert not np.any(heatmaps[6:]), "a class without input contributions got relevance"
    if first_rule_carries_input(CONFIGS[config]) and not _spreads_any(model, config):
        assert not np.any(heatmaps[1])

    zeros = np.zeros((4, *model.input_shape[1:]), "float32")  # a batch of all-zero inputs
    heatmaps, _ = run(relevance, zeros, np.array([0, 1, ZERO_CLASS, CONSTANT_CLASS], "int32"))
    assert np.all(np.isfinite(heatmaps))
    assert not np.any(heatmaps[2])
    if not _spreads_flat(model, config, "logits"):
        assert not np.any(heatmaps[3])
    if first_rule_carries_input(CONFIGS[config]) and not _spreads_any(model, config):
        assert not np.any(heatmaps)


def _fallback_rules(model, config):
    """{layer name: whether its rule spreads the relevance of uncreditable units flat}."""
    plan = decide(model, CONFIGS[config], input_range=BOX)
    return {step.user_layer.name: any(part.fallback for part in step.rule.parts())
            for step in plan.steps if step.user_layer is not None and step.rule is not None
            and step.rule.applies_to == "linear"}


def _spreads_flat(model, config, layer):
    return _fallback_rules(model, config).get(layer, False)


def _spreads_any(model, config):
    return any(_fallback_rules(model, config).values())


@pytest.mark.parametrize("config", CONFIG_IDS)
def test_zero_logits_give_exactly_zero_relevance(config):
    """Zero head weights: every logit is exactly 0 (so is their RMS, the relative ε), and every
    heatmap is exactly 0, no NaN from 0/0; the explained class is "max" (an argmax of ties)."""
    model = dense_model(zero_head=True)
    relevance = tf_dtd.relevance_model(model, CONFIGS[config], input_range=BOX,
                                       return_prediction=True)
    x = samples(model, 3)
    x[1] = 0.0
    heatmaps, logits = run(relevance, x)
    assert not np.any(logits)
    assert np.all(np.isfinite(heatmaps)) and not np.any(heatmaps)


# --- 2. Large and small logits ---

def scaled_relu_net(scale):
    """A copy of :func:`relu_net` whose head is scaled so that the top logits are ≈ ``scale``."""
    base = relu_net()
    model = keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    top = np.asarray(base(samples(base, 6, seed=1))).max(axis=-1)
    (kernel,) = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * np.float32(scale / np.mean(top))])
    return model


def gradient_times_input(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        top = tf.reduce_max(model(x), axis=-1)
    return (tape.gradient(top, x) * x).numpy()


@pytest.mark.parametrize("scale", [1e6, 1e-6], ids=["logits~1e6", "logits~1e-6"])
def test_extreme_logits_keep_conservation(scale):
    """Head scaled so the top logits are ≈ 1e6 (≈ 1e-6): ``deep_taylor_bounded`` still sums to
    the logit within 1e-5 (float32), and ``lrp_z`` equals gradient×input of the Keras model
    within 1e-4 of the largest value."""
    model = scaled_relu_net(scale)
    x = samples(model, 6, seed=1)

    heatmaps, logits = run(tf_dtd.relevance_model(model, "deep_taylor_bounded", input_range=BOX,
                                                  return_prediction=True), x)
    target = logits.max(axis=-1).astype("float64")
    assert np.all(target > 0) and np.all(np.abs(np.log10(target / scale)) < 1.5)
    assert np.all(np.isfinite(heatmaps))
    conservation = np.abs(per_sample(heatmaps).sum(axis=1) - target) / np.abs(target)
    assert conservation.max() <= 1e-5, conservation

    heatmaps = np.asarray(tf_dtd.relevance_model(model, "lrp_z")(x))
    expected = gradient_times_input(model, x)
    error = np.abs(per_sample(heatmaps) - per_sample(expected)).max(axis=1)
    assert np.all(error <= 1e-4 * np.abs(per_sample(expected)).max(axis=1)), error


@pytest.mark.parametrize("scale", [1e21, 1e-24], ids=["overflow", "underflow"])
def test_relative_epsilon_is_scale_equivariant_at_extreme_logits(scale):
    """Epsilon(ε, relative=True) on the logit layer: scaling the head by s scales z, its RMS and
    the relevance by s, so the heatmap must scale by exactly s (up to rounding)."""
    rule = rules.Epsilon(0.25, relative=True)
    x = samples(relu_net(), 6, seed=1)
    reference = per_sample(tf_dtd.relevance_model(scaled_relu_net(1.0), rule)(x))
    heatmaps = per_sample(tf_dtd.relevance_model(scaled_relu_net(scale), rule)(x)) / scale
    error = np.abs(heatmaps - reference).max(axis=1) / np.abs(reference).max(axis=1)
    assert error.max() <= 1e-4, error


# --- 3. Determinism ---

def test_repeated_evaluation_is_bitwise_identical_on_cpu():
    """CPU determinism (TF's CPU kernels, no GPU/TPU involved): two ``predict`` calls of one
    relevance model, two relevance models built from the same Keras model, and two ``explain``
    calls give bitwise-identical heatmaps, on the shipped digits ResNet (conv, folded BatchNorm,
    residual Add, max- and global average pooling). Not a claim about GPUs, whose reductions
    may be non-deterministic unless TF's op determinism is enabled."""
    model = tf_dtd.digits.load_model()
    images, _ = tf_dtd.digits.load_samples()
    images = images[:8]
    first = tf_dtd.relevance_model(model, "deep_taylor_bounded",
                                   input_range=tf_dtd.digits.INPUT_RANGE)
    a = first.predict(images, verbose=0)
    b = first.predict(images, verbose=0)
    assert a.tobytes() == b.tobytes()
    second = tf_dtd.relevance_model(model, "deep_taylor_bounded",
                                    input_range=tf_dtd.digits.INPUT_RANGE)
    assert second.predict(images, verbose=0).tobytes() == a.tobytes()
    c = tf_dtd.explain(model, images, input_range=tf_dtd.digits.INPUT_RANGE)
    d = tf_dtd.explain(model, images, input_range=tf_dtd.digits.INPUT_RANGE)
    assert c.tobytes() == d.tobytes() == a.tobytes()


# --- 4. One bad sample does not contaminate the others ---

@pytest.mark.parametrize("config", CONFIG_IDS)
def test_a_nan_or_inf_sample_leaves_the_others_unchanged(config):
    """Two copies of a batch of 4 (with an all-zero sample), a pixel of sample 1 NaN in the first
    copy and +Inf in the second, on the dead-unit conv model. The other samples' heatmaps are
    bitwise those of the clean batch, computed by a separate call (which also pins call-to-call
    determinism for every rule). The bad samples' own heatmaps hold no finite value: a rule
    whose batch-wide branch skipped their shares would turn them into plausible zeros (the NaN
    one is entirely NaN for every rule, observed)."""
    relevance = relevance_model("conv", config)
    x = samples(conv_model(), 4)
    x[2] = 0.0
    clean = np.concatenate([x, x])
    poisoned = clean.copy()
    poisoned[1, 3, 4, 0] = np.nan
    poisoned[5, 3, 4, 0] = np.inf
    class_ids = np.array([0, 1, 0, 1] * 2, "int32")
    expected, _ = run(relevance, clean, class_ids)
    heatmaps, _ = run(relevance, poisoned, class_ids)
    others = [0, 2, 3, 4, 6, 7]
    assert heatmaps[others].tobytes() == expected[others].tobytes()
    assert not np.isfinite(heatmaps[[1, 5]]).any()


def test_a_nan_sample_leaves_the_others_unchanged_in_predict_and_explain():
    """The same through ``predict`` (tf.function, target ``"max"``) and ``explain``, and each
    sample explained alone (``batch_size=1``): batch-of-one kernels round differently in float32
    (the user's own model's logits differ by ~2e-7 between batch sizes), hence a tolerance of
    1e-6 relative to the largest relevance there instead of bitwise equality. A NaN input gives
    no ``InputRangeWarning`` (NaN compares false with the box; an Inf input warns)."""
    model = conv_model()
    x = samples(model, 4)
    relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded", input_range=BOX)
    clean = relevance.predict(x, verbose=0)
    poisoned = x.copy()
    poisoned[2, 5, 5, 1] = np.nan
    heatmaps = relevance.predict(poisoned, verbose=0)
    others = [0, 1, 3]
    assert heatmaps[others].tobytes() == clean[others].tobytes()
    alone = relevance.predict(x, batch_size=1, verbose=0)
    np.testing.assert_allclose(heatmaps[others], alone[others], rtol=0,
                               atol=1e-6 * float(np.abs(alone).max()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tf_dtd.InputRangeWarning)
        explained = tf_dtd.explain(model, poisoned, input_range=BOX)
    assert explained.tobytes() == heatmaps.tobytes()


# --- 5. Empty batch ---

def test_empty_batch():
    """Observed with Keras 3.15 / TF 2.21 (the team decides what tf_dtd should promise):

    - ``relevance_model.predict`` on a batch of 0 samples raises Keras' own
      ``UnboundLocalError`` ("cannot access local variable 'batch_outputs'") after a
      ``UserWarning`` "Your input ran out of data" — exactly as ``predict`` of the user's
      model does: a Keras limitation, not something tf_dtd adds (also with ``batch_size``).
    - Calling the relevance model directly and ``predict_on_batch`` return float32 arrays of
      shape ``(0, *sample_shape)``; with ``return_prediction`` the logits are ``(0, classes)``.
    - ``tf_dtd.explain`` returns empty arrays (it special-cases the empty batch).
    """
    model = conv_model()
    empty = np.zeros((0, *model.input_shape[1:]), "float32")
    relevance = tf_dtd.relevance_model(model, input_range=BOX)
    for predictor in (model, relevance):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(UnboundLocalError, match="batch_outputs"):
                predictor.predict(empty, verbose=0)
        assert any("ran out of data" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(UnboundLocalError, match="batch_outputs"):
            relevance.predict(empty, batch_size=4, verbose=0)

    for result in (np.asarray(relevance(empty)), relevance.predict_on_batch(empty)):
        assert result.shape == empty.shape and result.dtype == np.float32
    heatmaps, logits = relevance_model("conv", "deep_taylor_bounded")(
        [empty, np.zeros(0, "int32")])
    assert tuple(heatmaps.shape) == empty.shape and tuple(logits.shape) == (0, CLASSES)

    explained = tf_dtd.explain(model, empty, input_range=BOX)
    assert explained.shape == empty.shape and explained.dtype == np.float32


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e-3, 1e3, 1e6, 1e9])
def test_lrp_zero_heatmap_scales_with_the_input(scale):
    """A bias-free ReLU net is positively homogeneous, and LRP-0 has no stabiliser anywhere (not
    on Add or pooling either): the heatmap of c·x is c times the heatmap of x, c = 1e-9 … 1e9."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=False)(inputs)
    h = L.Add()([h, L.Conv2D(4, 1, activation="relu", use_bias=False)(h)])
    h = L.AveragePooling2D(2)(h)
    h = L.MaxPooling2D(2)(L.Conv2D(6, 3, padding="same", activation="relu", use_bias=False)(h))
    model = keras.Model(inputs, L.Dense(3, use_bias=False)(L.GlobalAveragePooling2D()(h)))
    x = samples(model, 4, seed=2)
    relevance_model = tf_dtd.relevance_model(model, "lrp_z", target=0)
    base = per_sample(relevance_model(x))
    scaled = per_sample(relevance_model(np.float32(scale) * x)) / scale
    assert np.abs(base).max() > 0
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-6 * np.abs(base).max())


_EMPTY_BATCH_SCRIPT = r"""
import json, sys, tempfile
import numpy as np
import keras, tensorflow as tf
import tf_dtd

L = keras.layers
keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 2))
h = L.BatchNormalization()(L.Conv2D(5, 3, padding="same")(inputs))
h = L.Add()([L.ReLU()(h), L.Conv2D(5, 1, activation="relu")(h)])
h = L.MaxPooling2D(2)(L.DepthwiseConv2D(3, padding="same", activation="relu")(h))
model = keras.Model(inputs, L.Dense(4)(L.GlobalAveragePooling2D()(h)))
empty = np.zeros((0, 8, 8, 2), "float32")
shapes = {}
for preset in ("deep_taylor_bounded", "lrp_epsilon", "lrp_epsilon_gamma_box"):
    relevance_model = tf_dtd.relevance_model(model, preset, input_range=(0.0, 1.0),
                                             return_prediction=True)
    heatmaps, logits = relevance_model(empty)
    shapes[preset] = [list(heatmaps.shape), list(logits.shape)]
    shapes[preset + "/predict_on_batch"] = [list(a.shape)
                                            for a in relevance_model.predict_on_batch(empty)]
by_class = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), target="input")
shapes["target=input"] = list(by_class([empty, np.zeros(0, "int32")]).shape)
shapes["explain"] = list(tf_dtd.explain(model, empty, input_range=(0.0, 1.0)).shape)
folder = tempfile.mkdtemp()
tf_dtd.relevance_model(model, input_range=(0.0, 1.0)).export(folder, verbose=False)
loaded = tf.saved_model.load(folder)  # kept: the function references its variables
shapes["savedmodel"] = list(loaded.serve(empty).shape)
print(json.dumps(shapes))
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_empty_batch_in_both_kernel_modes(onednn):
    """An empty batch gives empty results of the right shapes — calling the relevance model,
    predict_on_batch, target="input", explain and the exported SavedModel — with TF's oneDNN
    CPU kernels on and off (they disagree about empty tensors on some CPUs: the relevance model
    never runs its layers on an empty batch). Each mode in a fresh process, the environment set
    before TensorFlow loads."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", _EMPTY_BATCH_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shapes = json.loads(result.stdout.strip().splitlines()[-1])
    for preset in ("deep_taylor_bounded", "lrp_epsilon", "lrp_epsilon_gamma_box"):
        assert shapes[preset] == [[0, 8, 8, 2], [0, 4]], shapes
        assert shapes[preset + "/predict_on_batch"] == [[0, 8, 8, 2], [0, 4]], shapes
    assert shapes["target=input"] == shapes["explain"] == shapes["savedmodel"] == [0, 8, 8, 2]
