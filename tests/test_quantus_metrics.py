"""The real Quantus package on the shipped channels-last digits model, through tf_dtd's adapter.

Each metric of docs/integrations.md runs with the recipe documented there (x_batch in the
model's layout, ``channel_first=False``, ``quantus_explain_func``) and returns finite scores.
Settings are small to keep the default run fast; the full MPRT runs under ``-m slow``.
"""

import keras
import numpy as np
import pytest

from tf_dtd import digits
from tf_dtd.evaluate.quantus import quantus_explain_func
from tf_dtd.model.canonize import logit_model

quantus = pytest.importorskip(
    "quantus", reason="the real Quantus package is not installed (pip install '.[test]')")

BOUNDED = {"rules": "deep_taylor_bounded", "input_range": digits.INPUT_RANGE}
SIGNED = {"rules": "lrp_epsilon"}


def noise_in_box(arr, **kwargs):
    """Quantus' default MaxSensitivity noise, clipped to the z^B box [0, 1] of the digits."""
    return np.clip(quantus.batch_uniform_noise(arr, **kwargs), 0.0, 1.0)


@pytest.fixture(scope="module")
def digits_batch():
    images, labels = digits.load_samples()
    return digits.load_model(), images[:4], labels[:4]


def evaluate(metric, model, x, y, explain_func_kwargs):
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, channel_first=False,
                    explain_func=quantus_explain_func, explain_func_kwargs=explain_func_kwargs)
    values = np.concatenate([np.ravel(np.asarray(s, "float64")) for s in scores])
    assert values.size and np.all(np.isfinite(values)), scores
    return values


METRICS = {
    "FaithfulnessCorrelation": (lambda: quantus.FaithfulnessCorrelation(
        nr_runs=5, subset_size=32, disable_warnings=True), BOUNDED),
    "PixelFlipping": (lambda: quantus.PixelFlipping(
        features_in_step=98, disable_warnings=True), BOUNDED),
    "RegionPerturbation": (lambda: quantus.RegionPerturbation(
        patch_size=8, regions_evaluation=4, disable_warnings=True), BOUNDED),
    "MaxSensitivity": (lambda: quantus.MaxSensitivity(
        nr_samples=2, lower_bound=0.1, perturb_func=noise_in_box, disable_warnings=True),
        BOUNDED),
    "RandomLogit": (lambda: quantus.RandomLogit(num_classes=10, disable_warnings=True), SIGNED),
    "MPRT": (lambda: quantus.MPRT(layer_order="independent", skip_layers=True,
                                  return_last_correlation=True, disable_warnings=True), SIGNED),
    "Sparseness": (lambda: quantus.Sparseness(disable_warnings=True), BOUNDED),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_returns_finite_scores(digits_batch, name):
    make, kwargs = METRICS[name]
    model, x, y = digits_batch
    values = evaluate(make(), model, x, y, kwargs)
    if name == "PixelFlipping":       # one curve of 784 / 98 = 8 steps per sample
        curves = values.reshape(4, 8)
        # The curves are the explained class' softmax output. Blacking out the pixels that the
        # heatmap ranks highest takes the evidence away: after an eighth every sample's output
        # is below 0.6 of what it was, after a quarter below 0.15 (near chance, 0.1); in a
        # random order the outputs stay above 0.99 for a quarter of the pixels.
        original = model.predict(x, verbose=0)[np.arange(4), y]
        assert np.all(original > 0.9)
        assert np.all(curves[:, 0] < 0.6 * original) and np.all(curves[:, 1] < 0.15 * original)
    elif name == "RegionPerturbation":  # one curve of 4 regions per sample
        assert values.shape == (4 * 4,)
    elif name != "FaithfulnessCorrelation":  # aggregated to one number by default
        assert values.shape == (4,)


def test_deep_taylor_relevance_of_another_class_is_nowhere_positive():
    # Why the recipe takes a signed preset for RandomLogit: it explains other classes, whose
    # logits are negative, and Deep Taylor relevance has the sign of the explained logit at
    # every pixel. Quantus refuses attributions that are all below zero.
    model = digits.load_model()
    images, labels = digits.load_samples()
    logits = logit_model(model).predict(images, verbose=0)
    other = (labels + 1) % 10
    negative = logits[np.arange(len(labels)), other] < 0
    assert negative.sum() >= 10
    x, targets = images[negative], other[negative]
    bounded = quantus_explain_func(model, x, targets, **BOUNDED)
    assert bounded.shape == (len(x), 1, 28, 28)
    assert np.all(bounded <= 0) and np.all((bounded < 0).any(axis=(1, 2, 3)))
    signed = quantus_explain_func(model, x, targets, **SIGNED)
    assert np.all((signed > 0).any(axis=(1, 2, 3)))


def test_sequential_multichannel_model():
    keras.utils.set_random_seed(4)
    sequential = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu", padding="same"),
        keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(4).random((3, 8, 8, 3)).astype("float32")
    y = np.array([0, 1, 2])
    summed = {**BOUNDED, "reduce_axes": (1,)}
    metric = quantus.PixelFlipping(features_in_step=16, disable_warnings=True)
    # PixelFlipping asks for softmax outputs; to add the softmax to a model ending in logits,
    # Quantus' TensorFlowModel reads model.input, which a Keras 3 Sequential model lacks.
    with pytest.raises(AttributeError, match="has never been called"):
        evaluate(metric, sequential, x, y, summed)
    model = keras.Model(sequential.inputs, sequential.outputs)   # the documented workaround
    values = evaluate(metric, model, x, y, summed)
    assert values.shape == (3 * 12,)    # 3 * 8 * 8 values flipped 16 at a time
    # Several channels: Quantus checks (N, C, H, W) attributions against the (N, H, W, C)
    # batch it gave explain_func, so the channels must be summed (reduce_axes=(1,)).
    with pytest.raises(AssertionError, match="should correspond in either the first or last"):
        evaluate(metric, model, x, y, BOUNDED)


@pytest.mark.slow
def test_full_mprt_over_every_layer(digits_batch):
    model, x, y = digits_batch
    metric = quantus.MPRT(layer_order="independent", disable_warnings=True)
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, channel_first=False,
                    explain_func=quantus_explain_func, explain_func_kwargs=SIGNED)
    layers = [layer for layer in model.layers if layer.get_weights()]
    assert list(scores) == ["original"] + [layer.name for layer in layers]
    assert all(np.all(np.isfinite(s)) for s in scores.values())
    np.testing.assert_allclose(scores["original"], 1.0)   # the model against itself
