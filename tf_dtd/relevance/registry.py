"""Which relevance layer carries relevance back through each kind of forward layer.

A handler has the signature ``handler(layer, rule, context) -> keras.layers.Layer | None``:
``layer`` is the (canonical copy of the) forward layer, ``rule`` the rule the composite gives it
(handlers of layers without a kernel may ignore it) and ``context`` a :class:`HandlerContext`.
The returned layer is called on ``[*forward_inputs, relevance]``; ``None`` means relevance passes
through unchanged (element-wise layers with one input). Built-in layers are registered below
exactly as users register theirs with :func:`register_layer_rule`.
"""

import dataclasses

import keras
from keras import ops

from tf_dtd.errors import InvalidArgumentError, UnsupportedLayerError, describe
from tf_dtd.model.analysis import UNBOUNDED, activation_name, is_gate
from tf_dtd.model.graph import application_layers, operation_classes
from tf_dtd.relevance import layers as relevance_layers
from tf_dtd.relevance import nonlinear_layers

__all__ = ["HandlerContext", "register_layer_rule", "find_handler"]

_HANDLERS = {}
_NOT_ELEMENTWISE = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True)
class HandlerContext:
    """What a handler may know beyond the layer and its rule.

    Attributes:
        name: the name to give the relevance layer.
        is_first: the layer reads the model input (through layers without weights).
        nonnegative_inputs: per forward input, whether it is known to be ≥ 0.
        input_constants: names of the rule's input constants (``rule.input_constants()``,
            e.g. z^B's ``"low"`` and ``"high"``) that the rewriter can pass to the relevance
            layer, carried from the model input to this layer's input; a relevance layer asks for
            them by listing them in its ``constant_inputs`` attribute.
        dtype: the dtype relevance layers compute in (float32, or float64 under a float64
            policy; never float16, even for a mixed-precision model).
        max_pooling: the composite's max-pooling mode, ``"winner_take_all"`` or
            ``"proportional"``.
        input_ranges: per forward input, bounds ``(low, high)`` its values are known to hold
            (infinite where unknown); a ``Multiply`` operand within [0, 1] is a gate.
        multiply: the composite's mode for products, ``"gate"`` or ``"split"``.
    """

    name: str
    is_first: bool
    nonnegative_inputs: tuple
    input_constants: tuple = ()
    dtype: str = "float32"
    max_pooling: str = "winner_take_all"
    input_ranges: tuple = ()
    multiply: str = "gate"


def register_layer_rule(layer_class, handler):
    """Teach tf_dtd how relevance flows back through ``layer_class`` (and its subclasses).

    Args:
        layer_class: a Keras layer (or operation) class.
        handler: ``handler(layer, rule, context) -> keras.layers.Layer | None``; see
            :mod:`tf_dtd.relevance.registry`. The layer it returns must be serialisable (``get_config``)
            for the relevance model to be saved.

    Example:
        >>> tf_dtd.register_layer_rule(MyScale, lambda layer, rule, ctx: None)  # pass-through
    """
    if not isinstance(layer_class, type):
        raise InvalidArgumentError(
            f"register_layer_rule needs a layer class. Received: layer_class={layer_class!r}"
        )
    if not callable(handler):
        raise InvalidArgumentError(
            f"register_layer_rule needs a callable handler. Received: handler={handler!r}"
        )
    _HANDLERS[layer_class] = handler


def find_handler(layer):
    """The handler registered for ``type(layer)`` or its closest base class.

    Raises:
        UnsupportedLayerError: no class in the MRO has a handler.
    """
    for cls in type(layer).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    raise UnsupportedLayerError(
        f"No relevance handler for layer {describe(layer)}. Register one with "
        "tf_dtd.register_layer_rule(LayerClass, handler), or replace the layer by supported ones."
    )


def _check_elementwise_activation(layer):
    """A (fused) softmax inside the model is not element-wise: relevance cannot pass it."""
    if activation_name(layer) in _NOT_ELEMENTWISE:
        raise UnsupportedLayerError(
            f"Layer {describe(layer)} applies {activation_name(layer)} inside the model; it is "
            "not element-wise and only a final softmax is removed. Register a handler with "
            "tf_dtd.register_layer_rule."
        )


def pass_through(layer, rule, context):
    """Element-wise layers (activations, dropout, noise): relevance passes unchanged."""
    _check_elementwise_activation(layer)
    return None


def route(layer, rule, context):
    """Layers that move or select values: relevance follows the values exactly."""
    return relevance_layers.RoutingRelevance(layer, name=context.name, dtype=context.dtype)


_AVERAGE_OF = {
    keras.layers.MaxPooling1D: keras.layers.AveragePooling1D,
    keras.layers.MaxPooling2D: keras.layers.AveragePooling2D,
    keras.layers.MaxPooling3D: keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D: keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalMaxPooling2D: keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling3D: keras.layers.GlobalAveragePooling3D,
}


def max_pooling(layer, rule, context):
    """Max-pooling: winner-take-all (routing), or in proportion to the window's inputs."""
    if context.max_pooling == "winner_take_all":
        return route(layer, rule, context)
    average_class = next(_AVERAGE_OF[cls] for cls in type(layer).__mro__ if cls in _AVERAGE_OF)
    config = {**layer.get_config(), "name": f"{layer.name}_as_average"}
    return proportional(average_class.from_config(config), rule, context)


def proportional(layer, rule, context):
    """Average pooling, Add, Subtract, Average, BatchNorm, bilinear up-sampling, InceptionResNet's
    scaled residual: shares by contribution (LRP-0/ε on the layer)."""
    return relevance_layers.ProportionalRelevance(layer, name=context.name,
                                                  dtype=context.dtype)


def up_sampling(layer, rule, context):
    """Nearest up-sampling copies values (routed exactly); interpolation shares proportionally."""
    if getattr(layer, "interpolation", "nearest") == "nearest":
        return route(layer, rule, context)
    return proportional(layer, rule, context)


def multiply(layer, rule, context):
    """A product: with ``multiply="gate"`` a gate (an operand within [0, 1], e.g. a sigmoid) gets
    no relevance and the signal all of it; with ``"split"`` each factor gets an equal share.
    A product with a constant (``x * 0.5``) is element-wise and passes relevance through."""
    count = len(context.nonnegative_inputs)
    if count == 1:
        return None
    if context.multiply == "split":
        shares = [1.0 / count] * count
    else:
        ranges = context.input_ranges or (UNBOUNDED,) * count
        gates = [is_gate(bounds) for bounds in ranges]
        if count != 2 or sum(gates) != 1:
            raise UnsupportedLayerError(
                f"Layer {describe(layer)} multiplies {count} tensors with value ranges "
                f"{list(ranges)}: with multiply=\"gate\" exactly one of two factors must be a "
                "gate (known to lie in [0, 1], e.g. a sigmoid). Use "
                "tf_dtd.Composite(..., multiply=\"split\") to give each factor an equal share."
            )
        shares = [0.0 if gate else 1.0 for gate in gates]
    return nonlinear_layers.ShareRelevance(shares, name=context.name, dtype=context.dtype)


def layer_normalization(layer, rule, context):
    """LayerNormalization: proportional, with the per-sample standard deviation a constant."""
    return nonlinear_layers.LayerNormRelevance(layer, name=context.name, dtype=context.dtype)


def _operation(layer_class):
    """A Keras operation node (``a + b``, ``x * 0.5``): with one tensor operand it is element-wise
    and passes relevance through; with two it is handled like ``layer_class``."""

    def handler(operation, rule, context):
        if len(context.nonnegative_inputs) == 1:
            return None
        if layer_class is None:
            raise UnsupportedLayerError(
                f"Operation {describe(operation)} combines {len(context.nonnegative_inputs)} "
                "tensors; tf_dtd has no relevance rule for it. Replace it by supported layers "
                "or register a handler with tf_dtd.register_layer_rule."
            )
        equivalent = layer_class(name=f"{operation.name}_as_layer", dtype=context.dtype)
        return find_handler(equivalent)(equivalent, rule, context)

    return handler


def _kernel_args(layer, rule, context):
    _check_elementwise_activation(layer)
    bias = ops.convert_to_numpy(layer.bias) if getattr(layer, "bias", None) is not None else None
    return dict(
        rule=rule,
        kernel=ops.convert_to_numpy(layer.kernel),
        bias=bias,
        nonnegative_input=context.nonnegative_inputs[0],
        constant_inputs=context.input_constants,
        name=context.name,
        dtype=context.dtype,
    )


def dense(layer, rule, context):
    """Dense: the composite's rule on ``x @ W``."""
    return relevance_layers.DenseRelevance.from_kernel(**_kernel_args(layer, rule, context))


def conv(layer, rule, context):
    """ConvND: the composite's rule on the convolution, with the layer's own geometry."""
    return relevance_layers.ConvRelevance.from_kernel(**_conv_args(layer, rule, context))


def depthwise_conv(layer, rule, context):
    """DepthwiseConv1D/2D: the composite's rule on the channel-wise convolution."""
    return relevance_layers.DepthwiseConvRelevance.from_kernel(
        **_conv_args(layer, rule, context))


def conv_transpose(layer, rule, context):
    """ConvNDTranspose: the composite's rule on the transposed convolution."""
    return relevance_layers.ConvTransposeRelevance.from_kernel(
        output_padding=layer.output_padding, **_conv_args(layer, rule, context))


def _conv_args(layer, rule, context):
    return dict(strides=layer.strides, padding=layer.padding,
                dilation_rate=layer.dilation_rate, data_format=layer.data_format,
                **_kernel_args(layer, rule, context))


def _register_builtins():
    kl = keras.layers
    operations = operation_classes()
    scale_layers = application_layers()
    builtins = {
        dense: [kl.Dense],
        conv: [kl.Conv1D, kl.Conv2D, kl.Conv3D],
        depthwise_conv: [kl.DepthwiseConv1D, kl.DepthwiseConv2D],
        conv_transpose: [kl.Conv1DTranspose, kl.Conv2DTranspose, kl.Conv3DTranspose],
        up_sampling: [kl.UpSampling1D, kl.UpSampling2D, kl.UpSampling3D],
        multiply: [kl.Multiply],
        layer_normalization: [kl.LayerNormalization],
        _operation(kl.Add): [operations["Add"]],
        _operation(kl.Subtract): [operations["Subtract"]],
        _operation(kl.Multiply): [operations["Multiply"]],
        _operation(None): [operations["TrueDivide"]],
        pass_through: [
            kl.InputLayer, kl.Activation, kl.Softmax, kl.ReLU, kl.LeakyReLU, kl.ELU, kl.PReLU,
            kl.Dropout, kl.SpatialDropout1D, kl.SpatialDropout2D, kl.SpatialDropout3D,
            kl.GaussianNoise, kl.GaussianDropout, kl.AlphaDropout,
            kl.Rescaling, kl.Normalization,
            *[scale_layers[n] for n in ("LayerScale",) if n in scale_layers],
        ],
        route: [
            kl.Flatten, kl.Reshape, kl.Permute, kl.Concatenate,
            kl.ZeroPadding1D, kl.ZeroPadding2D, kl.ZeroPadding3D,
            kl.Cropping1D, kl.Cropping2D, kl.Cropping3D,
            kl.Maximum, kl.Minimum,
        ],
        max_pooling: list(_AVERAGE_OF),
        proportional: [
            kl.AveragePooling1D, kl.AveragePooling2D, kl.AveragePooling3D,
            kl.GlobalAveragePooling1D, kl.GlobalAveragePooling2D, kl.GlobalAveragePooling3D,
            kl.Add, kl.Subtract, kl.Average, kl.BatchNormalization,
            *[scale_layers[n] for n in ("CustomScaleLayer",) if n in scale_layers],
        ],
    }
    for handler, classes in builtins.items():
        for cls in classes:
            register_layer_rule(cls, handler)


_register_builtins()
