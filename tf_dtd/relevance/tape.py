"""The graph helpers every relevance layer uses: the gradient trick (a vector-Jacobian product
under a tape), and an order on ops that TensorFlow would otherwise run as early as it can."""

import functools
import operator

import tensorflow as tf
from keras import ops

from tf_dtd.relevance import expression

__all__ = ["add_all", "after", "vjp"]


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


def after(tensor, values):
    """``values`` (a nested structure) as they are, computed no earlier than ``tensor``.

    In a graph, TensorFlow runs an op as soon as its inputs exist: a layer's modified forward
    (``z⁺``, its modified weights) needs only forward activations, so without this every layer's
    would be computed right after the forward pass and held until relevance reaches it. Where
    ``tensor`` is element-wise arithmetic, they wait for the tensors it is made of instead
    (:func:`~tf_dtd.relevance.expression.capture`): a layer that reads it only through those
    (ε's quotient) then leaves the arithmetic unused, and Grappler drops it.
    """
    if tf.executing_eagerly():
        return values
    made_of = []
    expression.capture(tensor, made_of)
    with tf.control_dependencies(made_of):
        return tf.nest.map_structure(lambda v: None if v is None else tf.identity(v), values)

