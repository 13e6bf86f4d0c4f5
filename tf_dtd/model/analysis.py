"""Static facts about layers that the rewriter uses to pick cheaper or better-founded paths.

- :func:`output_range`: an interval analysis (bounds every tensor holds): z⁺ drops its a⁻ terms
  after a ReLU, and a ``Multiply`` operand bounded by [0, 1] is recognised as a gate.
- :func:`carries_input_box`: layers whose every output is a copy, a selection or an average of
  input values, or zero padding (padding, reshaping, concatenation, max- and average pooling,
  dropout at inference). Kernel layers behind them still read the *pixels*, so they are "first"
  layers, and input constants such as the z^B box or the all-ones mask of w² are carried to them
  through the same layers: the carried box still bounds the values (zero padding gives [0, 0]).
- :func:`is_increasing_front_end`: ``Rescaling`` with a positive scale and ``Normalization``
  map every value by an increasing function, so a box carried through them stays a box
  (``low ↦ f(low)``, ``high ↦ f(high)``) while a mask of real input positions stays the same.
"""

import math

import keras
import numpy as np

from tf_dtd import registry

__all__ = [
    "activation_name", "output_range", "carries_input_box", "is_increasing_front_end",
    "has_kernel", "is_gate", "zero_padding_of", "UNBOUNDED",
]

L = keras.layers

UNBOUNDED = (-math.inf, math.inf)
# Element-wise activations that never decrease: their range is the image of the input's bounds.
_INCREASING_ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "tanh",
                           "softplus", "softsign", "exponential", "elu", "selu", "leaky_relu")
_HUGE = 1e30  # stands in for an infinite bound when an activation is evaluated on it

# Layers whose output lies within the hull of their inputs' ranges, besides the box-carrying ones.
_WITHIN_INPUT_HULL = (L.Average, L.Maximum, L.Minimum)


def activation_name(layer):
    """The name of a layer's (fused) activation, ``None`` where it has none or no name."""
    if isinstance(layer, L.Softmax):
        return "softmax"
    try:
        activation = layer.get_config().get("activation")
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return activation if isinstance(activation, str) else None


def output_range(layer, operands):
    """Bounds ``(low, high)`` of ``layer``'s output, given its call's positional operands.

    ``operands`` holds, in call order, ``(low, high)`` for each tensor operand and the value for
    each constant operand (``x + 3.0`` is ``[(low, high), 3.0]``). Unknown bounds are infinite.
    """
    ranges = [o for o in operands if isinstance(o, tuple)]
    if not ranges:
        return UNBOUNDED
    if isinstance(layer, L.ReLU):  # non-decreasing unless it has a negative slope or threshold
        increasing = layer.negative_slope >= 0 and layer.threshold >= 0
        return _image(layer, ranges[0]) if increasing else UNBOUNDED
    name = activation_name(layer)
    if name is not None and name != "linear":
        if has_kernel(layer):
            ranges = [UNBOUNDED]
        if name == "softmax":
            return 0.0, 1.0
        if name in _INCREASING_ACTIVATIONS:
            return _image(keras.activations.get(name), ranges[0])
        return UNBOUNDED
    if has_kernel(layer):
        return UNBOUNDED
    if isinstance(layer, L.Activation):  # a linear one (named activations are handled above)
        return ranges[0] if name == "linear" else UNBOUNDED
    if carries_input_box(layer) or isinstance(layer, _WITHIN_INPUT_HULL):
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        if _pads_with_zeros(layer):
            low, high = min(low, 0.0), max(high, 0.0)
        return low, high
    if isinstance(layer, L.Add):
        return sum(r[0] for r in ranges), sum(r[1] for r in ranges)
    if isinstance(layer, L.Multiply):
        return _product(ranges)
    if isinstance(layer, L.Rescaling) and is_increasing_front_end(layer):
        scale = np.asarray(keras.ops.convert_to_numpy(layer.scale), dtype="float64")
        offset = np.asarray(keras.ops.convert_to_numpy(layer.offset), dtype="float64")
        with np.errstate(invalid="ignore"):
            return (float(np.min(ranges[0][0] * scale + offset)),
                    float(np.max(ranges[0][1] * scale + offset)))
    return _operation_range(type(layer).__name__, operands)


def _image(function, bounds):
    """``(f(low), f(high))`` for an element-wise non-decreasing ``f``."""
    low, high = (float(np.clip(b, -_HUGE, _HUGE)) for b in bounds)
    with np.errstate(over="ignore"):  # a float16 layer turns the huge stand-ins into ±inf
        values = keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor([low, high])))
        values = np.asarray(values, dtype="float64")
    values = np.where(values >= _HUGE / 10, math.inf, np.where(values <= -_HUGE / 10, -math.inf,
                                                               values))
    return float(values[0]), float(values[1])


def _product(ranges):
    low, high = 1.0, 1.0
    for r_low, r_high in ranges:
        with np.errstate(invalid="ignore"):
            corners = [a * b for a in (low, high) for b in (r_low, r_high)]
        corners = [c for c in corners if not math.isnan(c)] or [0.0]  # 0·∞: the product is 0
        low, high = min(corners), max(corners)
    return low, high


def _operation_range(op_name, operands):
    """Keras operations: ``a ± b``, ``a * b`` of tensors, or with a scalar constant (``x / c``)."""
    tensors = [o for o in operands if isinstance(o, tuple)]
    if len(operands) != 2:
        return UNBOUNDED
    if len(tensors) == 2:
        (a_low, a_high), (b_low, b_high) = tensors
        if op_name == "Add":
            return a_low + b_low, a_high + b_high
        if op_name == "Subtract":
            return a_low - b_high, a_high - b_low
        return _product(tensors) if op_name == "Multiply" else UNBOUNDED
    constant = next(o for o in operands if not isinstance(o, tuple))
    if np.ndim(constant) != 0:
        return UNBOUNDED
    constant, (low, high), tensor_first = float(constant), tensors[0], operands[0] is tensors[0]
    if op_name == "Add":
        return low + constant, high + constant
    if op_name == "Subtract":
        return (low - constant, high - constant) if tensor_first else (constant - high,
                                                                      constant - low)
    if op_name == "Multiply":
        return _product([(low, high), (constant, constant)])
    if op_name == "TrueDivide" and tensor_first and constant != 0:
        return _product([(low, high), (1.0 / constant, 1.0 / constant)])
    return UNBOUNDED


def _pads_with_zeros(layer):
    return isinstance(layer, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D))


def zero_padding_of(node):
    """``((before, after), ...)`` per spatial axis if ``node`` is a ZeroPadding, else ``None``."""
    if node is None or not _pads_with_zeros(node.layer):
        return None
    amounts = node.layer.padding
    if isinstance(node.layer, L.ZeroPadding1D):
        amounts = (amounts,)
    return tuple(tuple(int(p) for p in pair) for pair in amounts)


def is_gate(bounds):
    """A value range within [0, 1]: the operand of a ``Multiply`` that scales the other."""
    return bounds[0] >= 0 and bounds[1] <= 1


def is_increasing_front_end(layer):
    """Whether ``layer`` is an element-wise increasing input transform (Rescaling, etc.)."""
    if isinstance(layer, L.Normalization):
        return True  # (x − mean) / std, or its inverse: increasing either way
    if isinstance(layer, L.Rescaling):
        return bool(np.all(np.asarray(keras.ops.convert_to_numpy(layer.scale)) > 0))
    return False


def has_kernel(layer):
    """Whether ``layer`` is a kernel layer (Dense, convolutions): the layers rules apply to."""
    return any(getattr(layer, attribute, None) is not None
               for attribute in ("kernel", "depthwise_kernel", "pointwise_kernel"))


def carries_input_box(layer):
    """Whether every output of ``layer`` copies, selects or averages input values, or is zero
    padding: then a box that holds the inputs, carried through the layer, holds the outputs
    (the layer type's record says so, see :mod:`tf_dtd.registry`)."""
    layer_type = registry.find(layer)
    return (layer_type is not None and layer_type.carries_input_box
            and activation_name(layer) in (None, "linear"))
