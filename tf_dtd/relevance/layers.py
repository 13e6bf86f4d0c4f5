"""Serialisable Keras layers that carry relevance backwards through one forward layer.

Every relevance layer is called on ``[*forward_inputs, relevance]`` — the tensors the original
layer consumed and the relevance arriving at its output — and returns the relevance at the
forward input (a list when the original layer had several inputs). Vector-Jacobian products are
taken with ``tf.GradientTape`` inside ``call``: plain TF ops, which ``tf.function`` and XLA compile.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.endpoints import InputConstant, TargetRelevance, constant_initializer

__all__ = [
    "KernelRelevance",
    "DenseRelevance",
    "ConvRelevance",
    "RoutingRelevance",
    "ProportionalRelevance",
    "DepthwiseConvRelevance",
    "ConvTransposeRelevance",
    "InputConstant",
    "TargetRelevance",
]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


def _vjp(forward, inputs, relevance, epsilon=None, relative=False):
    """Run ``forward(*inputs)`` under a tape and return ``(inputs, Jᵀ s)``.

    ``s`` is ``relevance`` itself when ``epsilon`` is None (exact routing), else
    ``relevance / stabilize(z, epsilon)`` with zero where the denominator is zero.
    """
    # Fresh identities: one tensor fed twice (e.g. Concatenate()([a, a])) gets one gradient each.
    inputs = [tf.identity(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        z = forward(*inputs)
    if epsilon is None:
        cotangent = relevance
    else:
        denominator = rules_lib.stabilize(ops.cast(z, relevance.dtype), epsilon,
                                          relative=relative)
        cotangent = ops.divide_no_nan(relevance, denominator)
    # A wrapped layer may compute in another dtype (mixed precision) than the relevance.
    grads = tape.gradient(
        z, list(inputs), output_gradients=ops.cast(cotangent, z.dtype),
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    return inputs, [ops.cast(g, x.dtype) for g, x in zip(grads, inputs)]


class _RelevanceLayer(keras.layers.Layer):
    """Shared shape logic: the output has the shape(s) of the forward input(s)."""

    def compute_output_shape(self, input_shape):
        forward_shapes = input_shape[:-1]
        return forward_shapes[0] if len(forward_shapes) == 1 else list(forward_shapes)


class KernelRelevance(_RelevanceLayer):
    """Apply an LRP / Deep Taylor rule backwards through one linear layer.

    Subclasses only define the linear map ``linear(x, kernel)`` and how a bias is added. The
    rule's modified kernels are non-trainable weights, computed once (see :meth:`from_kernel`).

    Args:
        rule: a :class:`tf_dtd.rules.Rule`, or its serialised dict.
        param_shapes: shape of each modified parameter, keyed as the rule names them.
        nonnegative_input: the forward input is known to be ≥ 0 (lets the rule drop a⁻ terms).
        constant_inputs: names of rule input constants (``rule.input_constants()``) passed as
            extra call inputs instead of being derived from ``x`` (see ``Rule.input_constants``).

    Call arguments:
        inputs: ``[x, relevance, *constants]``: the forward input of the layer, the relevance at
            its output, and one tensor shaped like ``x`` per name in ``constant_inputs``.

    Returns:
        Relevance at the layer input, shaped like ``x``.
    """

    def __init__(self, rule, param_shapes, *, nonnegative_input=False, constant_inputs=(),
                 **kwargs):
        super().__init__(**kwargs)
        self.rule = rule if isinstance(rule, rules_lib.Rule) else rules_lib.deserialize(rule)
        self.param_shapes = {key: tuple(shape) for key, shape in param_shapes.items()}
        self.nonnegative_input = bool(nonnegative_input)
        self.constant_inputs = tuple(constant_inputs)
        self._parts = self.rule.parts(nonnegative_input=self.nonnegative_input)
        self._initial_params = None

    @classmethod
    def from_kernel(cls, rule, kernel, bias=None, **kwargs):
        """Build the layer from a forward layer's kernel and bias (NumPy arrays)."""
        params = rule.params(np.asarray(kernel), None if bias is None else np.asarray(bias))
        parts = rule.parts(nonnegative_input=kwargs.get("nonnegative_input", False))
        used = {t.kernel for part in parts for t in part.terms} | {part.bias for part in parts}
        params = {key: value for key, value in params.items() if key in used}
        layer = cls(rule, {key: value.shape for key, value in params.items()}, **kwargs)
        layer._initial_params = params
        return layer

    def build(self, input_shape):
        if not self.constant_inputs:
            self.rule.check_input_shape(input_shape[0][1:])
        self._param_names = sorted(self.param_shapes)
        initial = self._initial_params or {}
        self._param_variables = [
            self.add_weight(
                name=key, shape=self.param_shapes[key], trainable=False,
                initializer=constant_initializer(initial[key]) if key in initial else "zeros")
            for key in self._param_names
        ]
        self._initial_params = None

    def linear(self, x, kernel):
        """The layer's linear map without bias."""
        raise NotImplementedError

    def add_bias(self, z, bias):
        return z + bias

    def call(self, inputs):
        x, relevance, *constants = inputs
        constants = dict(zip(self.constant_inputs, constants))
        params = dict(zip(self._param_names, self._param_variables))
        result = None
        for part in self._parts:
            names = sorted({term.input for term in part.terms})
            variants = [constants[n] if n in constants else self.rule.input(n, x) for n in names]

            def forward(*tensors, part=part, names=names):
                by_name = dict(zip(names, tensors))
                z = sum(self.linear(by_name[t.input], params[t.kernel]) for t in part.terms)
                if part.bias is not None and part.bias in params:
                    z = self.add_bias(z, params[part.bias])
                return z

            variants, grads = _vjp(forward, variants, relevance, epsilon=part.epsilon,
                                   relative=part.relative_epsilon)
            part_relevance = sum(v * g for v, g in zip(variants, grads))
            if part.coefficient != 1.0:
                part_relevance = part.coefficient * part_relevance
            result = part_relevance if result is None else result + part_relevance
        return result

    def get_config(self):
        return {
            **super().get_config(),
            "rule": rules_lib.serialize(self.rule),
            "param_shapes": {key: list(shape) for key, shape in self.param_shapes.items()},
            "nonnegative_input": self.nonnegative_input,
            "constant_inputs": list(self.constant_inputs),
        }

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@_register
class DenseRelevance(KernelRelevance):
    """Relevance through a Dense layer (also on tensors of rank ≥ 3: the last axis)."""

    def linear(self, x, kernel):
        return ops.matmul(x, kernel)


@_register
class ConvRelevance(KernelRelevance):
    """Relevance through a convolution of any rank, stride, padding, dilation and groups.

    Args:
        strides, padding, dilation_rate, data_format: those of the forward ``ConvND`` layer.
        **kwargs: see :class:`KernelRelevance`.
    """

    def __init__(self, rule, param_shapes, *, strides, padding, dilation_rate,
                 data_format="channels_last", **kwargs):
        super().__init__(rule, param_shapes, **kwargs)
        self.strides = tuple(strides)
        self.padding = padding
        self.dilation_rate = tuple(dilation_rate)
        self.data_format = data_format

    def linear(self, x, kernel):
        # Computed channels-last: TF has no CPU kernel for channels-first convolution gradients.
        channels_first = self.data_format == "channels_first"
        if channels_first:
            x = ops.moveaxis(x, 1, -1)
        padding = self.padding
        if padding == "causal":
            left = self.dilation_rate[0] * (kernel.shape[0] - 1)
            x = ops.pad(x, [[0, 0], [left, 0], [0, 0]])
            padding = "valid"
        z = self.convolve(x, kernel, padding)
        return ops.moveaxis(z, -1, 1) if channels_first else z

    def convolve(self, x, kernel, padding):
        """The channels-last convolution of the forward layer (overridden by its variants)."""
        return ops.conv(x, kernel, strides=self.strides, padding=padding,
                        data_format="channels_last", dilation_rate=self.dilation_rate)

    def add_bias(self, z, bias):
        if self.data_format == "channels_first":
            bias = ops.reshape(bias, (-1,) + (1,) * (len(z.shape) - 2))
        return z + bias

    def get_config(self):
        return {
            **super().get_config(),
            "strides": list(self.strides),
            "padding": self.padding,
            "dilation_rate": list(self.dilation_rate),
            "data_format": self.data_format,
        }


@_register
class DepthwiseConvRelevance(ConvRelevance):
    """Relevance through ``DepthwiseConv1D/2D``: a convolution of each channel on its own.

    The kernel is ``(*kernel_size, channels, depth_multiplier)``; output channel ``c·M + m``
    reads input channel ``c``. Arguments as :class:`ConvRelevance`.
    """

    def convolve(self, x, kernel, padding):
        return ops.depthwise_conv(x, kernel, strides=self.strides, padding=padding,
                                  data_format="channels_last", dilation_rate=self.dilation_rate)


@_register
class ConvTransposeRelevance(ConvRelevance):
    """Relevance through ``Conv1D/2D/3DTranspose``, whose kernel is ``(*size, filters, in)``.

    Args:
        output_padding: that of the forward layer (``None`` or one int per spatial axis).
        **kwargs: see :class:`ConvRelevance`.
    """

    def __init__(self, rule, param_shapes, *, output_padding=None, **kwargs):
        super().__init__(rule, param_shapes, **kwargs)
        self.output_padding = None if output_padding is None else tuple(output_padding)

    def convolve(self, x, kernel, padding):
        return ops.conv_transpose(x, kernel, strides=self.strides, padding=padding,
                                  output_padding=self.output_padding,
                                  data_format="channels_last", dilation_rate=self.dilation_rate)

    def get_config(self):
        output_padding = None if self.output_padding is None else list(self.output_padding)
        return {**super().get_config(), "output_padding": output_padding}


class _WrappedLayerRelevance(_RelevanceLayer):
    """Holds a copy of the forward layer (with its weights) and runs it under a tape."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.layers.deserialize(layer)
            self._initial_weights = None
        else:
            self._initial_weights = layer.get_weights()
            config = keras.layers.serialize(layer)
            config["config"]["dtype"] = self.dtype_policy.name  # relevance never in float16
            layer = keras.layers.deserialize(config)
        self.forward_layer = layer

    def build(self, input_shape):
        shapes = list(input_shape[:-1])
        self._multiple_inputs = len(shapes) > 1
        if not self.forward_layer.built:
            self.forward_layer.build(shapes if self._multiple_inputs else shapes[0])
        if self._initial_weights:
            self.forward_layer.set_weights(self._initial_weights)
        self._initial_weights = None

    def _forward(self, *xs):
        return self.forward_layer(list(xs) if self._multiple_inputs else xs[0])

    def _result(self, grads):
        return list(grads) if self._multiple_inputs else grads[0]

    def get_config(self):
        return {**super().get_config(), "layer": keras.layers.serialize(self.forward_layer)}


@_register
class RoutingRelevance(_WrappedLayerRelevance):
    """Route relevance exactly through a layer that only moves or selects values.

    ``R_in = Jᵀ R``: for Flatten, Reshape, Permute, padding, cropping, Concatenate and
    winner-take-all max-pooling every output copies one input, so each output's relevance lands
    on that input, nothing created or lost (a tie in a pooling window goes to one winner).

    Args:
        layer: the forward layer (or its serialised dict).
    """

    def call(self, inputs):
        *xs, relevance = inputs
        _, grads = _vjp(self._forward, xs, relevance)
        return self._result(grads)


@_register
class ProportionalRelevance(_WrappedLayerRelevance):
    """Share relevance in proportion to the contributions: ``R_i = x_i · Jᵀ (R / z)``.

    The LRP-0/ε rule for a layer that is linear or affine in its inputs and has no kernel of its
    own: average pooling (``R_i = a_i / Σa · R``), Add (each operand by its share of the sum), and
    a BatchNormalization that could not be folded (an affine ε-rule, the shift absorbs relevance).

    Args:
        layer: the forward layer (or its serialised dict).
        epsilon: the stabiliser of ``z``; exactly-zero denominators give zero relevance.
    """

    def __init__(self, layer, *, epsilon=1e-9, **kwargs):
        super().__init__(layer, **kwargs)
        if not epsilon >= 0:
            raise InvalidArgumentError(f"epsilon must be >= 0. Received: epsilon={epsilon}")
        self.epsilon = float(epsilon)

    def call(self, inputs):
        *xs, relevance = inputs
        xs, grads = _vjp(self._forward, xs, relevance, epsilon=self.epsilon)
        return self._result([x * g for x, g in zip(xs, grads)])

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
