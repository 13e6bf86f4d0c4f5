"""The ends of a relevance model: where relevance starts, and the input constants of rules.

- :class:`TargetRelevance` starts relevance at the explained logit.
- :class:`InputConstant` broadcasts a rule's constant (the z^B box, w²'s mask) to the input batch.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_dtd import boxes
from tf_dtd.errors import InvalidArgumentError

__all__ = ["InputConstant", "TargetRelevance", "constant_initializer"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


def constant_initializer(value):
    """An initializer that returns ``value`` (saves filling zeros and assigning afterwards)."""
    return lambda shape, dtype=None: ops.cast(value, dtype)


@_register
class InputConstant(keras.layers.Layer):
    """A constant (the z^B box, w²'s ones mask) broadcast to the shape of the input batch.

    Args:
        value_shape: shape of the constant; it must broadcast to one input sample.

    Call arguments:
        inputs: the batch whose shape the output takes.
    """

    def __init__(self, value_shape, **kwargs):
        super().__init__(**kwargs)
        self.value_shape = tuple(value_shape)
        self._initial_value = None

    @classmethod
    def from_value(cls, value, **kwargs):
        value = np.asarray(value)
        layer = cls(value.shape, **kwargs)
        layer._initial_value = value
        return layer

    def build(self, input_shape):
        boxes.check_broadcastable(self.value_shape, input_shape[1:], f"Constant {self.name!r}")
        initial = self._initial_value
        self.value = self.add_weight(
            name="value", shape=self.value_shape, trainable=False,
            initializer="zeros" if initial is None else constant_initializer(initial),
        )
        self._initial_value = None

    def call(self, inputs):
        return ops.broadcast_to(ops.cast(self.value, inputs.dtype), ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "value_shape": list(self.value_shape)}


@_register
class TargetRelevance(keras.layers.Layer):
    """Start relevance at one logit per sample: ``R = one_hot(class) · logits``.

    Args:
        target: ``"max"`` (the top logit), an ``int`` class index, or ``"input"`` (the layer is
            then called on ``[logits, class_ids]``).

    Returns:
        A tensor shaped like the logits, zero but at the explained class.
    """

    def __init__(self, target="max", **kwargs):
        super().__init__(**kwargs)
        if not (target in ("max", "input") or isinstance(target, (int, np.integer))):
            raise InvalidArgumentError(
                f"target must be 'max', 'input' or an int. Received: target={target!r}"
            )
        self.target = target if isinstance(target, str) else int(target)

    def call(self, inputs):
        if self.target == "input":
            logits, class_ids = inputs
            class_ids = ops.reshape(ops.cast(class_ids, "int32"), (-1,))
            # the logits of an empty batch hold one dummy sample (model.batch): pad to match
            missing = ops.shape(logits)[0] - ops.shape(class_ids)[0]
            class_ids = ops.pad(class_ids, [[0, missing]])
            return _checked_start(logits, class_ids)
        else:
            logits = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
            if self.target == "max":
                class_ids = ops.argmax(logits, axis=-1)
            else:
                class_ids = ops.full((ops.shape(logits)[0],), self.target, dtype="int32")
        return ops.one_hot(class_ids, logits.shape[-1], dtype=logits.dtype) * logits

    def compute_output_shape(self, input_shape):
        return input_shape[0] if self.target == "input" else input_shape

    def get_config(self):
        return {**super().get_config(), "target": self.target}


def _checked_start(logits, class_ids):
    """``one_hot · logits`` for class ids given at predict time, which must be in range: an
    out-of-range id raises (an Assert op); where asserts are compiled away (XLA) its sample's
    relevance is NaN — never a silent all-zero heatmap."""
    classes = logits.shape[-1]
    valid = ops.logical_and(class_ids >= 0, class_ids < classes)
    check = tf.debugging.Assert(
        ops.all(valid), [f"tf_dtd: class ids must lie in [0, {classes}). Received:", class_ids])
    with tf.control_dependencies([check]):
        start = ops.one_hot(class_ids, classes, dtype=logits.dtype) * logits
    return ops.where(ops.expand_dims(valid, -1), start, ops.full_like(start, float("nan")))

