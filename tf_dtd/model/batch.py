"""Empty batches without relying on the backend: one dummy sample in, cut off again at the end.

TF's oneDNN CPU kernels return wrong shapes for empty batches on some CPUs; a relevance model
therefore never runs its layers on an empty batch. :class:`NonEmptyBatch` sits right after the
model input and appends one zero sample to an empty batch (any other batch passes unchanged);
:class:`TrimBatch` cuts each output back to the batch the model received.
"""

import keras
from keras import ops

__all__ = ["NonEmptyBatch", "TrimBatch"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


@_register
class NonEmptyBatch(keras.layers.Layer):
    """Append one zero sample to an empty batch; any other batch passes unchanged.

    Every layer behind it then sees at least one sample, whatever the backend's kernels do with
    empty tensors; :class:`TrimBatch` cuts the outputs back to the real batch.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # keep each tensor's dtype
        super().__init__(**kwargs)

    def call(self, inputs):
        missing = ops.maximum(1 - ops.shape(inputs)[0], 0)
        return ops.pad(inputs, [[0, missing]] + [[0, 0]] * (len(inputs.shape) - 1))


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
