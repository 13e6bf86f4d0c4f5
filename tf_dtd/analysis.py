"""Static facts about layers that the rewriter uses to pick cheaper or better-founded paths.

- :func:`output_nonnegative`: the sign analysis that lets z⁺ drop its a⁻ terms after a ReLU.
- :func:`carries_input_box`: layers whose every output is a copy, a selection or an average of
  input values, or zero padding (padding, reshaping, concatenation, max- and average pooling,
  dropout at inference). Kernel layers behind them still read the *pixels*, so they are "first"
  layers, and input constants such as the z^B box or the all-ones mask of w² are carried to them
  through the same layers: the carried box still bounds the values (zero padding gives [0, 0]).
- :func:`is_increasing_front_end`: ``Rescaling`` with a positive scale and ``Normalization``
  map every value by an increasing function, so a box carried through them stays a box
  (``low ↦ f(low)``, ``high ↦ f(high)``) while a mask of real input positions stays the same.
"""

import keras
import numpy as np

__all__ = [
    "activation_name", "output_nonnegative", "carries_input_box", "is_increasing_front_end",
    "has_kernel",
]

L = keras.layers

_NONNEGATIVE_ACTIVATIONS = ("relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus",
                            "exponential")

_BOX_CARRYING = (
    L.InputLayer, L.Flatten, L.Reshape, L.Permute, L.Concatenate,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianDropout, L.GaussianNoise, L.AlphaDropout,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
)

_SIGN_PRESERVING = _BOX_CARRYING + (L.Activation, L.Add)


def activation_name(layer):
    """The name of a layer's (fused) activation, ``None`` where it has none or no name."""
    if isinstance(layer, L.Softmax):
        return "softmax"
    try:
        activation = layer.get_config().get("activation")
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return activation if isinstance(activation, str) else None


def output_nonnegative(layer, inputs_nonnegative):
    """Whether ``layer``'s output is ≥ 0 for every input, given which inputs are ≥ 0."""
    if isinstance(layer, L.ReLU):
        return layer.negative_slope == 0 and layer.threshold >= 0
    name = activation_name(layer)
    if name is not None and name != "linear":
        return name in _NONNEGATIVE_ACTIVATIONS
    return isinstance(layer, _SIGN_PRESERVING) and all(inputs_nonnegative)


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
    padding: then a box that holds the inputs, carried through the layer, holds the outputs."""
    return isinstance(layer, _BOX_CARRYING) and activation_name(layer) in (None, "linear")
