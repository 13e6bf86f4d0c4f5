"""The models tf_dtd's benchmark explains: keras.applications and the shipped digits model.

Applications are built with ``weights=None``, ``classes=10``, ``classifier_activation=None``
(their output is the logits) and an input of ``size × size × 3`` raw pixels in ``[0, 255]``;
their BatchNorm statistics are set from one batch of random images (see
``benchmarks/applications.py``), so activations have the scale a trained network has. The
weights are cached in ``cache_dir`` so that every worker process explains the same network.
The digits model is ``tf_dtd.digits.load_model()`` (28×28×1 in ``[0, 1]``, a softmax head: its
logits are the Dense layer before the softmax) with its shipped samples repeated to a batch.
"""

import dataclasses
import os
from typing import Callable

import keras
import numpy as np

import tf_dtd
from benchmarks.applications import calibrate_batch_norm, images

__all__ = ["Subject", "build", "logits_function"]

PIXEL_RANGE = (0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class Subject:
    """A model to explain, its input box, its logits and a source of input batches."""

    name: str
    model: keras.Model
    input_range: tuple
    logits: Callable
    inputs: Callable  # batch size -> float32 array


def logits_function(model):
    """``x -> logits`` of ``model``: the model itself, or, when its last layer is a Dense with a
    non-linear activation (softmax), that layer's affine part on the features before it."""
    head = model.layers[-1]
    activation = getattr(head, "activation", None)
    if activation in (None, keras.activations.linear):
        return lambda x: model(x, training=False)
    if not isinstance(head, keras.layers.Dense):
        raise ValueError("Expected a model ending in logits or in a Dense layer with an "
                         f"activation. Received: last layer {head.name!r} "
                         f"({type(head).__name__})")
    features = keras.Model(model.inputs, head.input)

    def logits(x):
        z = keras.ops.matmul(features(x, training=False), head.kernel)
        return z + head.bias if head.use_bias else z
    return logits


def _digits():
    model = tf_dtd.digits.load_model()
    samples = tf_dtd.digits.load_samples()[0]

    def inputs(batch):
        return np.resize(samples, (batch, *samples.shape[1:])).astype("float32")
    return Subject("digits", model, tf_dtd.digits.INPUT_RANGE, logits_function(model), inputs)


def build(name, *, size=224, seed=0, cache_dir=None):
    """The subject ``name``: ``"digits"`` or a keras.applications constructor's name (the
    benchmark uses VGG16, ResNet50, MobileNetV2, EfficientNetB0); see the module doc."""
    if name == "digits":
        return _digits()
    if not hasattr(keras.applications, name):
        raise ValueError("Expected 'digits' or a keras.applications model name. "
                         f"Received: name={name!r}")
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(
        weights=None, classes=10, input_shape=(size, size, 3), classifier_activation=None)
    cached = cache_dir and os.path.join(cache_dir, f"{name}_{size}_{seed}.weights.h5")
    if cached and os.path.exists(cached):
        model.load_weights(cached)
    else:
        calibrate_batch_norm(model, images(8, size, seed + 1))
        if cached:
            model.save_weights(cached)
    return Subject(name, model, PIXEL_RANGE, logits_function(model),
                   lambda batch: images(batch, size, seed + 2))
