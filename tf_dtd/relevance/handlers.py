"""The built-in layer types, registered exactly as users register theirs.

Each Keras layer class gets one :class:`tf_dtd.registry.LayerType` record here: its handler, the
rules it takes, how ``tf-dtd info`` describes it, whether it carries the pixels to a first layer,
and — for kernel layers — the relevance layer that replaces it in the canonical copy and computes
its forward map too (:mod:`tf_dtd.relevance.layers`).
"""

import keras

from tf_dtd import registry
from tf_dtd import rules as rules_lib
from tf_dtd.errors import UnsupportedLayerError, describe
from tf_dtd.model import canonize
from tf_dtd.model.analysis import UNBOUNDED, is_gate
from tf_dtd.model.batch import NonEmptyBatch, TrimRelevance
from tf_dtd.model.graph import application_layers, operation_classes
from tf_dtd.relevance import layers as kernel_layers
from tf_dtd.relevance import maps, pooling

__all__ = ["average_pooling_of"]

L = keras.layers


# --- Handlers ---

def pass_through(layer, rule, context):
    """Element-wise layers (activations, dropout, noise, front ends): relevance passes."""
    return None


def route(layer, rule, context):
    """Layers that move or select values: relevance follows the values exactly."""
    return maps.RoutingRelevance(layer, name=context.name, dtype=context.dtype)


def kernel(layer, rule, context):
    """Kernel layers: the canonical copy is already the relevance layer; give it its rule."""
    layer.configure(rule, nonnegative_input=context.nonnegative_inputs[0],
                    constant_inputs=context.input_constants)
    layer.reuses_output = True  # its forward output is z: the builder passes it back in
    return layer


def linear_map(operand_scales=None, positive=True, same_output=True):
    """Linear layers without a kernel (Add, average pooling, ...): the rule on their map.

    ``operand_scales(layer)`` gives per-operand scales of an ``Add`` that computes the layer
    (``Subtract``: 1, −1); ``same_output`` says whether the map's output is the node's output.
    """

    def handler(layer, rule, context):
        count = len(context.nonnegative_inputs)
        scales = operand_scales(layer) if callable(operand_scales) else (1.0,) * count
        forward = L.Add(name=f"{layer.name}_as_add") if callable(operand_scales) else layer
        relevance = maps.MapRelevance(
            forward, rule, operand_scales=scales, positive=positive,
            nonnegative_input=all(context.nonnegative_inputs),
            constant_inputs=context.input_constants, name=context.name, dtype=context.dtype)
        relevance.reuses_output = same_output
        return relevance

    return handler


_AVERAGE_OF = {
    L.MaxPooling1D: L.AveragePooling1D, L.MaxPooling2D: L.AveragePooling2D,
    L.MaxPooling3D: L.AveragePooling3D, L.GlobalMaxPooling1D: L.GlobalAveragePooling1D,
    L.GlobalMaxPooling2D: L.GlobalAveragePooling2D, L.GlobalMaxPooling3D: L.GlobalAveragePooling3D,
}


def average_pooling_of(layer):
    """The average pooling over the same windows as the max-pooling ``layer``."""
    average_class = next(_AVERAGE_OF[cls] for cls in type(layer).__mro__ if cls in _AVERAGE_OF)
    return average_class.from_config({**layer.get_config(), "name": f"{layer.name}_as_average"})


def max_pooling(layer, rule, context):
    """Max-pooling: winner-take-all (exact ties share), or a linear rule on the average over the
    same windows."""
    if isinstance(rule, rules_lib.WinnerTakeAll):
        padding = context.input_padding[0] if context.input_padding else None
        return pooling.MaxPoolRelevance(layer, zero_padding=padding, name=context.name,
                                        dtype=context.dtype)
    return linear_map(same_output=False)(average_pooling_of(layer), rule, context)


def up_sampling(layer, rule, context):
    """Nearest up-sampling copies values (routed exactly); interpolation is a linear map."""
    if getattr(layer, "interpolation", "nearest") == "nearest":
        return route(layer, rule, context)
    return linear_map()(layer, rule, context)


def multiply(layer, rule, context):
    """A product of tensors: ``SignalTakesAll`` (a gate, known to lie in [0, 1], gets nothing)
    or ``EqualShares``. A product with a constant (``x * 0.5``) passes relevance through."""
    count = len(context.nonnegative_inputs)
    if count == 1:
        return None
    if isinstance(rule, rules_lib.EqualShares):
        shares = [1.0 / count] * count
    else:
        ranges = context.input_ranges or (UNBOUNDED,) * count
        gates = [is_gate(bounds) for bounds in ranges]
        if count != 2 or sum(gates) != 1:
            raise UnsupportedLayerError(
                f"Layer {describe(layer)} multiplies {count} tensors with value ranges "
                f"{list(ranges)}: SignalTakesAll needs exactly one of two factors to be a gate "
                "(known to lie in [0, 1], e.g. a sigmoid). Give the layer "
                "tf_dtd.rules.EqualShares() (Composite(multiply=\"split\")) to share equally."
            )
        shares = [0.0 if gate else 1.0 for gate in gates]
    return maps.ShareRelevance(shares, name=context.name, dtype=context.dtype)


def layer_normalization(layer, rule, context):
    """LayerNormalization: LRP-0/ε with the per-sample standard deviation a constant."""
    return maps.LayerNormRelevance(layer, rule=rule, name=context.name, dtype=context.dtype)


def non_empty_batch(layer, rule, context):
    """The batch guard: relevance of the real samples only."""
    return TrimRelevance(name=context.name, dtype=context.dtype)


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
        return registry.lookup(equivalent).handler(equivalent, rule, context)

    return handler


# --- Canonical copies of kernel layers ---

def _kernel_type(dual_class, geometry=lambda layer: {}, out_axes=None, fold_key="kernel",
                 absorbs_padding=False):
    """The record of a kernel layer: replaced by ``dual_class`` in the canonical copy."""

    def canonical(layer, *, norm=None, pad=None, name, relevance_dtype):
        weights = canonize.kernel_weights(layer, dual_class._weight_names)
        if norm is not None:
            weights = canonize.fold_batch_norm(weights, norm, fold_key, out_axes)
        extra = {} if pad is None else {"explicit_padding": pad}
        return dual_class.with_weights(None, weights, name=name, dtype=layer.dtype_policy,
                                       relevance_dtype=relevance_dtype, **geometry(layer),
                                       **extra)

    return registry.LayerType(kernel, rules=("linear", "pass"), description="rule",
                              kernel=True, canonical=canonical, folds_batch_norm=True,
                              absorbs_padding=absorbs_padding)


def _conv_geometry(layer):
    return dict(strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate,
                data_format=layer.data_format)


def _batch_norm_canonical(layer, *, norm=None, pad=None, name, relevance_dtype):
    scale, shift = canonize.batch_norm_affine(layer)
    return kernel_layers.ScaleRelevance.with_weights(
        None, {"kernel": scale, "bias": shift}, axis=layer.axis, name=name,
        dtype=layer.dtype_policy, relevance_dtype=relevance_dtype)


def _register_builtins():
    kl, ops_ = keras.layers, operation_classes()
    scale_layers = application_layers()
    dense = _kernel_type(kernel_layers.DenseRelevance, out_axes=(-1,))
    conv = _kernel_type(kernel_layers.ConvRelevance, _conv_geometry, out_axes=(-1,),
                        absorbs_padding=True)
    depthwise = _kernel_type(kernel_layers.DepthwiseConvRelevance, _conv_geometry,
                             out_axes=(-2, -1), absorbs_padding=True)
    transpose = _kernel_type(
        kernel_layers.ConvTransposeRelevance,
        lambda layer: dict(output_padding=layer.output_padding, **_conv_geometry(layer)),
        out_axes=(-2,))
    separable = _kernel_type(kernel_layers.SeparableConvRelevance, _conv_geometry,
                             out_axes=(-1,), fold_key="pointwise_kernel", absorbs_padding=True)
    linear = registry.LayerType(linear_map(), rules=("linear", "pass"), description="rule")
    box_linear = registry.LayerType(linear_map(), rules=("linear", "pass"), description="rule",
                                    carries_input_box=True)
    elementwise = registry.LayerType(pass_through, rules=(), description="passed through")
    carried = registry.LayerType(pass_through, rules=(), description="passed through",
                                 carries_input_box=True)
    routed = registry.LayerType(route, rules=(), description="routed exactly",
                                carries_input_box=True)
    types = {
        dense: [kl.Dense],
        conv: [kl.Conv1D, kl.Conv2D, kl.Conv3D],
        depthwise: [kl.DepthwiseConv1D, kl.DepthwiseConv2D],
        transpose: [kl.Conv1DTranspose, kl.Conv2DTranspose, kl.Conv3DTranspose],
        separable: [kl.SeparableConv1D, kl.SeparableConv2D],
        registry.LayerType(kernel, rules=("linear", "pass"), description="rule (affine)",
                           canonical=_batch_norm_canonical): [kl.BatchNormalization],
        linear: [kl.Add, kl.Average],
        registry.LayerType(linear_map(lambda layer: (1.0, -1.0)), rules=("linear", "pass"),
                           description="rule"): [kl.Subtract],
        box_linear: [kl.AveragePooling1D, kl.AveragePooling2D, kl.AveragePooling3D,
                     kl.GlobalAveragePooling1D, kl.GlobalAveragePooling2D,
                     kl.GlobalAveragePooling3D],
        registry.LayerType(max_pooling, rules=("maximum", "linear"),
                           default_rule=rules_lib.WinnerTakeAll(), description="max-pooling",
                           carries_input_box=True): list(_AVERAGE_OF),
        registry.LayerType(route, rules=("maximum",), default_rule=rules_lib.WinnerTakeAll(),
                           description="winner-take-all"): [kl.Maximum, kl.Minimum],
        registry.LayerType(up_sampling, rules=("linear", "pass"), description="routed / rule",
                           carries_input_box=True): [kl.UpSampling1D, kl.UpSampling2D,
                                                     kl.UpSampling3D],
        registry.LayerType(multiply, rules=("product",), default_rule=rules_lib.SignalTakesAll(),
                           description="product"): [kl.Multiply],
        registry.LayerType(layer_normalization, rules=(rules_lib.Epsilon, "pass"),
                           fallback_rule=rules_lib.Pass(),
                           description="LRP-0/ε, σ held constant"): [kl.LayerNormalization],
        registry.LayerType(_operation(kl.Add), rules=("linear", "pass"),
                           description="operation"): [ops_["Add"]],
        registry.LayerType(_operation(kl.Subtract), rules=("linear", "pass"),
                           description="operation"): [ops_["Subtract"]],
        registry.LayerType(_operation(kl.Multiply), rules=("product",),
                           default_rule=rules_lib.SignalTakesAll(),
                           description="operation"): [ops_["Multiply"]],
        registry.LayerType(_operation(None), rules=(), description="operation"):
            [ops_["TrueDivide"]],
        elementwise: [kl.Activation, kl.Softmax, kl.ReLU, kl.LeakyReLU, kl.ELU, kl.PReLU,
                      kl.Rescaling, kl.Normalization,
                      *[scale_layers[n] for n in ("LayerScale",) if n in scale_layers]],
        carried: [kl.InputLayer, kl.Dropout, kl.SpatialDropout1D, kl.SpatialDropout2D,
                  kl.SpatialDropout3D, kl.GaussianNoise, kl.GaussianDropout, kl.AlphaDropout],
        routed: [kl.Flatten, kl.Reshape, kl.Permute, kl.Concatenate, kl.ZeroPadding1D,
                 kl.ZeroPadding2D, kl.ZeroPadding3D, kl.Cropping1D, kl.Cropping2D,
                 kl.Cropping3D],
        registry.LayerType(non_empty_batch, rules=(), description="batch guard",
                           carries_input_box=True): [NonEmptyBatch],
    }
    if "CustomScaleLayer" in scale_layers:
        types[registry.LayerType(
            linear_map(lambda layer: (1.0, float(layer.scale))), rules=("linear", "pass"),
            description="rule")] = [scale_layers["CustomScaleLayer"]]
    for layer_type, classes in types.items():
        for cls in classes:
            registry.register(cls, layer_type, builtin=True)


_register_builtins()
