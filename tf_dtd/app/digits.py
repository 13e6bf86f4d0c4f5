"""The shipped default: a small residual CNN trained on scikit-learn's 8×8 digits.

The model reads 32×32×1 images in ``[0, 1]`` (the 8×8 digits upsampled bilinearly) and ends in
a 10-way softmax. It was trained by ``examples/train_digits.py`` on the training part of
:func:`held_out_split`; :func:`load_samples` returns a few held-out digits to explain.

Example:
    >>> import tf_dtd
    >>> from tf_dtd import digits
    >>> model = digits.load_model()
    >>> images, labels = digits.load_samples()
    >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded",
    ...                                    input_range=digits.INPUT_RANGE)
    >>> heatmaps = relevance.predict(images, verbose=0)   # (n, 32, 32, 1)
"""

import os

import numpy as np
from PIL import Image

from tf_dtd.errors import InvalidArgumentError

__all__ = [
    "IMAGE_SIZE",
    "INPUT_RANGE",
    "MODEL_PATH",
    "SAMPLES_PATH",
    "SEED",
    "held_out_split",
    "load_model",
    "load_samples",
    "prepare",
]

IMAGE_SIZE = 32
INPUT_RANGE = (0.0, 1.0)
SEED = 0
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
MODEL_PATH = os.path.join(_DATA, "digits_resnet.keras")
SAMPLES_PATH = os.path.join(_DATA, "digits_samples.npz")


def prepare(images):
    """Turn 8×8 digits (values 0..16) into the model's input.

    Args:
        images: array of shape ``(n, 64)`` or ``(n, 8, 8)``, as in
            ``sklearn.datasets.load_digits()``'s ``data`` or ``images``.

    Returns:
        float32 array ``(n, IMAGE_SIZE, IMAGE_SIZE, 1)`` in ``[0, 1]``, bilinearly upsampled.

    Example:
        >>> x = digits.prepare(np.zeros((2, 64)))   # x.shape == (2, 32, 32, 1)
    """
    images = np.asarray(images, dtype="float32")
    if images.shape[1:] not in ((64,), (8, 8)):
        raise InvalidArgumentError(
            f"Expected digits of shape (n, 64) or (n, 8, 8). Received: shape {images.shape}")
    images = images.reshape(-1, 8, 8) / 16.0
    size = (IMAGE_SIZE, IMAGE_SIZE)
    # A 2-D float32 array is a Pillow mode "F" image: bilinear resampling without quantization.
    out = np.zeros((len(images), *size), "float32")
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return np.clip(out, 0.0, 1.0).astype("float32")[..., None]


def held_out_split(num_samples, held_out_fraction=0.25, seed=SEED):
    """Indices ``(train, held_out)`` of a fixed random split of ``num_samples`` examples.

    The shipped model was trained on ``train`` of ``held_out_split(1797)`` (all of
    ``load_digits()``); ``held_out`` was never seen in training.

    Example:
        >>> train, held_out = digits.held_out_split(1797)   # 1348 and 449 indices
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise InvalidArgumentError(
            f"Expected 0 < held_out_fraction < 1. Received: {held_out_fraction}")
    order = np.random.default_rng(seed).permutation(int(num_samples))
    held_out = int(round(num_samples * held_out_fraction))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _require(path):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"The shipped digits data file {path} is missing. Reinstall tf_dtd, or regenerate it "
            f"with: python examples/train_digits.py")
    return path


def load_model():
    """The shipped trained ``keras.Model``: input ``(None, 32, 32, 1)``, softmax over 10 digits.

    Example:
        >>> digits.load_model().output_shape   # (None, 10)
    """
    import keras  # imported here so that prepare / held_out_split stay light

    return keras.models.load_model(_require(MODEL_PATH))


def load_samples():
    """A few held-out digits ``(images, labels)``: float32 ``(n, 32, 32, 1)`` in ``[0, 1]``, int.

    Example:
        >>> images, labels = digits.load_samples()
    """
    with np.load(_require(SAMPLES_PATH)) as data:
        return data["images"].astype("float32"), data["labels"].astype("int64")
