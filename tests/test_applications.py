"""Every CNN family of keras.applications rewrites, explains and keeps its logits.

Models are built with ``weights=None``, ``classes=10`` and their smallest input size, with the
BatchNorm statistics set from one random batch (see ``benchmarks/applications.py``, which also
prints the coverage table of docs/architectures.md). The default run explains one residual
family (ResNet50) with ``deep_taylor_bounded``, and checks LRP-0 = gradient×input on ResNet50
and on a concatenation family with pre-activation BatchNorm (DenseNet121); ``-m slow`` runs all
seventeen with both presets (the depthwise families with squeeze-and-excitation gates among
them; the default run has a trained depthwise network in tests/test_trained_depthwise.py and
the gates in tests/test_merges_and_gates.py). LRP-ε with ε's quotient computing again what it
divides (``expression.capture``) against nothing captured: ResNet50 and MobileNetV2 by default,
every family with ``-m slow``.

The models run under a float64 policy here. Deep random networks amplify float32 rounding: the
folded and the original ResNet101 or EfficientNetV2B0 differ by 3e-4 and 9e-2 of the logits in
float32, and by ≤ 3e-12 in float64 — so float64 is what tests the rewrite, not the rounding.
"""

import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from applications import APPLICATIONS, build, images, measure  # noqa: E402

import tf_dtd  # noqa: E402
from tf_dtd.relevance import expression, quotient  # noqa: E402

DEFAULT_RUN = ("ResNet50",)
PRESETS = ("deep_taylor_bounded", "lrp_epsilon_plus")
SAMPLES = 2


def _params():
    """(family, preset) pairs: the default run explains its families with deep_taylor_bounded
    (each takes about a minute on 2 cores in float64); ``-m slow`` adds lrp_epsilon_plus."""
    default = {(name, PRESETS[0]) for name in DEFAULT_RUN}
    return [pytest.param(name, preset, marks=() if (name, preset) in default else pytest.mark.slow)
            for name in APPLICATIONS for preset in PRESETS]


@pytest.fixture(scope="module")
def built():
    cache = {}
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")

    def get(name):
        if name not in cache:
            model = build(name)
            x = images(SAMPLES, model.input_shape[1], seed=2).astype("float64")
            cache[name] = (model, x)
        return cache[name]

    yield get
    keras.config.set_dtype_policy(policy)


@pytest.mark.parametrize("name, preset", _params())
def test_application_rewrites_with_equal_logits(name, preset, built, record_property):
    model, x = built(name)
    weights_before = [w.copy() for w in model.get_weights()]

    result = measure(model, x, preset)

    relevance = result["relevance"]
    assert relevance.shape == x.shape
    assert relevance.dtype == np.float64
    assert np.all(np.isfinite(relevance))
    assert np.any(relevance != 0)
    assert result["logit_error"] <= 1e-4, result["logit_error"]
    error = result["conservation"]
    assert np.all(np.isfinite(error))
    record_property("conservation_error_max", float(error.max()))
    print(f"{name} {preset}: logit error {result['logit_error']:.1e}, conservation error "
          f"median {np.median(error):.2e}, max {error.max():.2e}")
    for before, after in zip(weights_before, model.get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("name", ["ResNet50", "DenseNet121"])
def test_lrp_zero_is_gradient_times_input_on_relu_applications(name, built):
    """On ReLU networks LRP-0 equals gradient×input, biases included: a whole-model check of
    BatchNorm folding, residual Add, Concatenate, pooling and padding on real architectures."""
    model, x = built(name)
    relevance = tf_dtd.explain(model, x, "lrp_z")
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        top = tf.reduce_max(model(tensor), axis=1)
    expected = tape.gradient(top, tensor).numpy() * x
    scale = np.abs(expected).max()
    # 1e-5: the proportional layers' stabiliser ε = 1e-9 (with ε = 0 the match is 4e-8).
    np.testing.assert_allclose(relevance, expected, atol=1e-5 * scale)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in ("ResNet50", "MobileNetV2") else pytest.mark.slow)
    for name in APPLICATIONS])
def test_epsilon_quotient_reads_the_same_values_back(name, built, monkeypatch):
    """LRP-ε with every quotient in XLA, computing again the arithmetic that makes what it
    divides (``expression.capture``: products, sums, ResNet's addend, MobileNet's ReLU6), and
    with nothing captured: in float64 the two agree to rounding on every family (a capture that
    read back the wrong tensor or op would not)."""
    model, x = built(name)
    monkeypatch.setattr(quotient, "XLA_QUOTIENT_MIN_SIZE", 0)
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(expression, "ENABLED", enabled)
        results.append(tf_dtd.relevance_model(model, "lrp_epsilon").predict(x, verbose=0))
    captured, plain = results
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(captured, plain, rtol=0, atol=1e-12 * np.abs(plain).max())
