"""The batch dimension at the entry of a relevance model: never empty, its size never a constant.

TF's oneDNN CPU kernels return wrong shapes for empty batches on some CPUs; a relevance model
therefore never runs its layers on an empty batch. :class:`NonEmptyBatch` sits right after the
model input and appends one zero sample to an empty batch (any other batch passes unchanged);
:class:`TrimBatch` cuts each output back to the batch the model received.

:class:`NonEmptyBatch` also leaves the batch size unknown to the graph as traced behind it.
Where a function is traced for one batch size (the first ``predict`` call, a SavedModel
signature of fixed batch), TensorFlow's graph optimiser turns every op whose value follows from
shapes alone (``zeros_like``, ``ones_like``, a scalar broadcast to a tensor's shape) into a
constant, which the function then holds between calls: ResNet50 under ``deep_taylor_bounded``,
traced for batch 32, held 870 MB that way. Some rewrites at run time still see the size, so the
relevance layers also avoid such ops (``tests/test_graph_constants.py`` checks both).
"""

import keras
import tensorflow as tf
from keras import ops

__all__ = ["NonEmptyBatch", "TrimBatch"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


@_register
class NonEmptyBatch(keras.layers.Layer):
    """Append one zero sample to an empty batch; any other batch passes unchanged.

    Every layer behind it then sees at least one sample, whatever the backend's kernels do with
    empty tensors; :class:`TrimBatch` cuts the outputs back to the real batch. Its output's
    batch size is unknown to the graph even where the input's is known (see the module doc).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # keep each tensor's dtype
        super().__init__(**kwargs)

    def call(self, inputs):
        missing = ops.maximum(1 - ops.shape(inputs)[0], 0)
        padded = ops.pad(inputs, [[0, missing]] + [[0, 0]] * (len(inputs.shape) - 1))
        # An identity whose declared shape leaves the batch size open: no op behind it can be
        # folded into a constant of the batch's size.
        return tf.raw_ops.PlaceholderWithDefault(input=padded, shape=[None, *padded.shape[1:]])


@_register
class TrimBatch(keras.layers.Layer):
    """``values[:len(batch)]``: drop the dummy sample :class:`NonEmptyBatch` added.

    Call arguments:
        inputs: ``[values, batch]``: a tensor computed from the guarded batch, and the batch as
            the model received it.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # keep each tensor's dtype
        super().__init__(**kwargs)

    def call(self, inputs):
        values, batch = inputs
        return values[:ops.shape(batch)[0]]


@_register
class TrimRelevance(TrimBatch):
    """The guard's reverse: ``[batch, relevance] -> relevance[:len(batch)]``."""

    def call(self, inputs):
        batch, relevance = inputs
        return super().call([relevance, batch])
