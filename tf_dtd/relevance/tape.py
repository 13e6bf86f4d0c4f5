"""The gradient trick every relevance layer uses: a vector-Jacobian product under a tape."""

import functools
import operator

import tensorflow as tf
from keras import ops

__all__ = ["add_all", "vjp"]


def add_all(tensors):
    """The sum of a non-empty sequence of tensors (without the ``0 +`` op ``sum`` adds)."""
    return functools.reduce(operator.add, tensors)


def vjp(forward, inputs, cotangent):
    """Run ``forward(*inputs)`` under a tape: ``(inputs, output, Jᵀ cotangent)``.

    ``cotangent`` may be a function of the output (``lambda z: R / z``).
    """
    # Fresh identities: one tensor fed twice (e.g. Concatenate()([a, a])) gets one gradient each.
    inputs = [tf.identity(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        z = forward(*inputs)
    if callable(cotangent):
        cotangent = cotangent(z)
    grads = tape.gradient(z, inputs, output_gradients=ops.cast(cotangent, z.dtype),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return inputs, z, [ops.cast(g, x.dtype) for g, x in zip(grads, inputs)]
