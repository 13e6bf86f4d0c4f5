"""The graph helpers every relevance layer uses: the gradient trick (a vector-Jacobian product
under a tape), and an order on ops that TensorFlow would otherwise run as early as it can."""

import functools
import operator

import tensorflow as tf
from keras import ops

__all__ = ["add_all", "after", "product_terms", "vjp"]


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
    would be computed right after the forward pass and held until relevance reaches it. A sum of
    products (:func:`product_terms`) is waited for by its factors: a layer that reads it only
    through them (ε's fused quotient) then leaves the products unused, and Grappler drops them.
    """
    if tf.executing_eagerly():
        return values
    terms = product_terms(tensor)
    with tf.control_dependencies(
            [t for term in terms for t in term] if terms else [tensor]):
        return tf.nest.map_structure(lambda v: None if v is None else tf.identity(v), values)


# False: product_terms finds none (the plain path, to measure the fused one against).
FUSE_PRODUCTS = True


def product_terms(tensor):
    """``tensor`` as a sum of products in a graph: a list of ``(a, b)`` for a term ``a * b`` and
    ``(t,)`` for any other term ``t``; ``None`` where ``tensor`` is neither a product nor a sum
    with a product among its terms, and when executing eagerly.

    A layer's relevance at its input is mostly such a product (its input times the transposed
    quotient), or a sum of them where several layers read one tensor. The next layer's ε divides
    it by its stabilised ``z``: reading the terms, XLA computes the products, their sum and the
    quotient in one pass over memory instead of two to four.

    Example:

    >>> import tensorflow as tf
    >>> @tf.function
    ... def show(a, b, c):  # printed once, when traced
    ...     print(len(product_terms(a * b + c)), len(product_terms(a * b)), product_terms(a + c))
    ...     return a
    >>> _ = show(tf.ones(2), tf.ones(2), tf.ones(2))
    2 1 None
    """
    if not FUSE_PRODUCTS or tf.executing_eagerly() or not hasattr(tensor, "op"):
        return None
    op = tensor.op
    if op.type == "Mul" and len(op.inputs) == 2:
        return [tuple(op.inputs)]
    if op.type not in ("AddV2", "AddN") or len(op.inputs) < 2:
        return None
    terms = [tuple(t.op.inputs) if t.op.type == "Mul" and len(t.op.inputs) == 2 else (t,)
             for t in op.inputs]
    return terms if any(len(term) == 2 for term in terms) else None
