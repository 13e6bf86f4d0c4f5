"""A small CNN trained on real data: scikit-learn's bundled UCI digits (offline)."""

import keras
import numpy as np
import pytest

import tf_dtd

sklearn_datasets = pytest.importorskip("sklearn.datasets")
L = keras.layers


@pytest.fixture(scope="module")
def trained():
    digits = sklearn_datasets.load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    labels = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        L.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images[train], labels[train], epochs=6, batch_size=32, verbose=0)
    return model, images[test], labels[test]


def conservation_error(relevance, logits):
    """|ΣR − f_c| / |f_c| per sample, f_c the explained (top) logit."""
    top = logits.max(axis=-1)
    return np.abs(relevance.reshape(len(top), -1).sum(-1) - top) / np.abs(top)


def test_trained_digits_cnn_heatmaps_conserve(trained):
    model, images, labels = trained
    accuracy = np.mean(model.predict(images, verbose=0).argmax(-1) == labels)
    assert accuracy > 0.85, accuracy  # the model really learned something
    rel_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), return_prediction=True)
    relevance, logits = rel_model.predict(images, batch_size=64, verbose=0)
    assert np.all(np.isfinite(relevance))
    positive = logits.max(-1) > 0  # a negative top logit gives (conserved) negative relevance
    assert positive.mean() > 0.9 and relevance[positive].min() >= 0
    error = conservation_error(relevance, logits)
    print(f"deep_taylor_bounded conservation error on {len(images)} held-out digits with biases:"
          f" median {np.median(error):.2e}, max {error.max():.2e}")
    assert error.max() <= 0.01
    # The heatmap must depend on the image: different digits, different heatmaps.
    assert np.abs(relevance[0] - relevance[1]).sum() > 0.1 * np.abs(relevance[0]).sum()
