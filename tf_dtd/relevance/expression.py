"""Element-wise arithmetic read back from a traced graph, to be computed again in one XLA pass.

A relevance layer sends its input times the transposed quotient — a product — and relevance
reaching a tensor that several layers read is a sum of such products; ResNet's addend computed
again from its sum is a difference, and MobileNet's ReLU6, computed again from the held
pre-activation, is that product's factor. The next layer's ε divides these by its stabilised
``z``. :func:`capture` reads such a tensor back as an expression over the tensors it is made
of, and :func:`evaluate` computes it again, inside the XLA function of the quotient
(:mod:`tf_dtd.relevance.quotient`): the products, sums, differences and activations then run in
the same pass over memory as the quotient, and Grappler drops the ops that made them where
nothing else reads them. :func:`tf_dtd.relevance.tape.after` waits on the captured tensors for
the same reason.

Example:

>>> import tensorflow as tf
>>> @tf.function
... def show(a, b, c):  # printed once, when traced
...     leaves = []
...     print(capture(a * b + c, leaves), capture(a * (b - c), leaves), len(leaves))
...     return evaluate(("Mul", 0, 1), leaves)
>>> show(tf.ones(2), 2 * tf.ones(2), tf.ones(2)).numpy()
('AddV2', ('Mul', 0, 1), 2) ('Mul', 0, ('Sub', 1, 2)) 3
array([2., 2.], dtype=float32)
"""

import functools
import operator

import tensorflow as tf

__all__ = ["ARITHMETIC", "capture", "evaluate"]

# The ops captured (Identity is looked through), and how evaluate computes them again from
# their operands' values. The activations: those a relevance pass computes again from a held
# pre-activation (MobileNet's ReLU6), read only as a factor of a product.
ARITHMETIC = {
    "Mul": operator.mul,
    "AddV2": operator.add,
    "AddN": lambda *values: functools.reduce(operator.add, values),
    "Sub": operator.sub,
    "Relu": tf.nn.relu,
    "Relu6": tf.nn.relu6,
}
# Ops captured on a path from the tensor, at most: a sum of products, a product of a
# difference. Three (products of products: EfficientNet's gates) made EfficientNetB0's LRP-ε
# no faster (1.00 against 0.96 of the plain path's time at batch 8).
DEPTH = 2
# False: capture reads nothing back (the plain path, to measure the fused one against).
ENABLED = True


def capture(tensor, leaves, depth=DEPTH):
    """``tensor`` as an expression: a leaf's index in ``leaves`` (appended to, each tensor
    once), or ``(op type, *operand expressions)`` for an op of :data:`ARITHMETIC`. Executing
    eagerly, ``tensor`` is a leaf.

    Identities are looked through, but for those :func:`~tf_dtd.relevance.tape.after` makes
    (they carry control inputs): they mark a forward tensor the relevance pass reads, a leaf —
    unless arithmetic on such tensors alone stands behind one (an addend computed again from its
    sum, ``sum − other``), which the relevance pass made and only it reads. The forward pass's
    own arithmetic (a bias added, a residual sum) stays outside: computed again, its operands
    would be held and its ops run twice."""
    op = getattr(tensor, "op", None) if ENABLED and not tf.executing_eagerly() else None
    while op is not None and op.type == "Identity":
        inner = op.inputs[0]
        if op.control_inputs and not _read_after(inner, depth):
            break
        tensor, op = inner, inner.op
    if op is not None and depth > 0 and op.type in ARITHMETIC:
        return (op.type, *(capture(t, leaves, depth - 1) for t in op.inputs))
    for index, leaf in enumerate(leaves):
        if _same_value(leaf, tensor):
            return index
    leaves.append(tensor)
    return len(leaves) - 1


def _same_value(a, b):
    """Whether ``a`` and ``b`` are one tensor, or identities of one (two layers' reads of the
    same forward tensor: the value is read once)."""
    a, b = _under_identities(a), _under_identities(b)
    return a is b or (getattr(a, "graph", None) is getattr(b, "graph", False)
                      and a.name == b.name)


def _under_identities(tensor):
    while getattr(tensor, "op", None) is not None and tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def _read_after(tensor, depth):
    """Whether ``tensor`` is arithmetic on forward tensors as the relevance pass reads them
    (identities with control inputs) and nothing else, within ``depth`` ops."""
    op = tensor.op
    if op.type == "Identity" and op.control_inputs:
        return True
    return (depth > 0 and op.type in ARITHMETIC
            and all(_read_after(t, depth - 1) for t in op.inputs))


def evaluate(expression, leaves):
    """The value of a :func:`capture` expression over ``leaves``."""
    if isinstance(expression, int):
        return leaves[expression]
    kind, *operands = expression
    return ARITHMETIC[kind](*[evaluate(o, leaves) for o in operands])
