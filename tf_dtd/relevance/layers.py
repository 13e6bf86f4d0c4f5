"""Kernel layers of the relevance model: each computes the forward map *and* carries relevance back.

A kernel layer (Dense, convolutions, an unfolded BatchNorm's scale) holds the only copy of its
weights. Called on a tensor it computes the forward map (without activation; the canonical copy
splits activations into their own layers); called on a list ``[x, (z,) relevance, *constants]`` it
applies its rule backwards (:class:`~tf_dtd.relevance.engine.LinearRelevance`). The rewriter calls
the same layer object twice, so the relevance model keeps one set of weights, modified weights
(w⁺, γ-weights, …) are computed on the fly, and refreshing the weights is an assignment.

Forward maps compute in the layer's dtype policy (float16 under mixed precision, as trained);
relevance always in ``relevance_dtype`` (float32, or float64 under a float64 policy).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tf_dtd.relevance.endpoints import InputConstant, TargetRelevance, constant_initializer
from tf_dtd.relevance.engine import LinearRelevance
from tf_dtd.relevance.maps import (
    LayerNormRelevance,
    MapRelevance,
    ProportionalRelevance,
    RoutingRelevance,
    ShareRelevance,
)

# With the building blocks of users' handlers: the public namespace tf_dtd.layers.
__all__ = [
    "KernelRelevance", "DenseRelevance", "ConvRelevance", "DepthwiseConvRelevance",
    "ConvTransposeRelevance", "SeparableConvRelevance", "ScaleRelevance", "LinearRelevance",
    "MapRelevance", "ProportionalRelevance", "RoutingRelevance", "ShareRelevance",
    "LayerNormRelevance", "InputConstant", "TargetRelevance",
]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


class KernelRelevance(LinearRelevance):
    """Base of the kernel layers: weights, the forward call, and the reverse call.

    Args:
        rule: see :class:`~tf_dtd.relevance.engine.LinearRelevance`.
        weight_shapes: ``{name: shape}`` of the weights, in the order of ``_weight_names``.
        **kwargs: see :class:`~tf_dtd.relevance.engine.LinearRelevance`.
    """

    _weight_names = ("kernel", "bias")

    def __init__(self, rule=None, *, weight_shapes, **kwargs):
        kwargs.setdefault("autocast", False)  # casts are explicit: forward vs relevance dtype
        super().__init__(rule, **kwargs)
        self.weight_shapes = {name: tuple(weight_shapes[name]) for name in self._weight_names
                              if weight_shapes.get(name) is not None}
        self._initial = None

    @classmethod
    def from_kernel(cls, rule, kernel, bias=None, **kwargs):
        """A layer with the given kernel and bias (NumPy arrays), e.g. to test a rule."""
        return cls.with_weights(rule, {"kernel": kernel, "bias": bias}, **kwargs)

    @classmethod
    def with_weights(cls, rule, weights, **kwargs):
        """A layer whose weights (``{name: array or tensor}``, ``None`` for absent) are set
        when built."""
        weights = {k: v if tf.is_tensor(v) else np.asarray(v)
                   for k, v in weights.items() if v is not None}
        layer = cls(rule, weight_shapes={k: v.shape for k, v in weights.items()}, **kwargs)
        layer._initial = weights
        return layer

    def build(self, input_shape=None):
        initial = self._initial or {}
        for name, shape in self.weight_shapes.items():
            init = constant_initializer(initial[name]) if name in initial else "zeros"
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=init,
                                                trainable=False))
        for name in self._weight_names:
            if name not in self.weight_shapes:
                setattr(self, name, None)
        self._initial = None

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return super().call(inputs)
        dtype = self.compute_dtype
        z = self.forward(ops.cast(inputs, dtype), dtype)
        return z if self.bias is None else self.add_bias(z, ops.cast(self.bias, dtype))

    def forward(self, x, dtype):
        """The forward map without bias, in ``dtype``."""
        return self.linear([x], ops.cast(self.kernel, dtype))

    def kernel_value(self):
        return ops.cast(self.kernel, self.relevance_dtype)

    def bias_value(self):
        return None if self.bias is None else ops.cast(self.bias, self.relevance_dtype)

    def kernel_shape(self):
        """The shape of :meth:`kernel_value`."""
        return self.weight_shapes["kernel"]

    def compute_output_spec(self, inputs):
        if isinstance(inputs, (list, tuple)):
            shapes = [x.shape for x in inputs[:self.num_inputs]]
            specs = [keras.KerasTensor(s, dtype=self.relevance_dtype) for s in shapes]
            return specs if self.num_inputs > 1 else specs[0]
        return super().compute_output_spec(inputs)

    def get_config(self):
        return {**super().get_config(),
                "weight_shapes": {k: list(v) for k, v in self.weight_shapes.items()}}


@_register
class DenseRelevance(KernelRelevance):
    """A Dense layer (also on tensors of rank ≥ 3: the last axis) and its relevance."""

    def linear(self, xs, kernel):
        return ops.matmul(xs[0], kernel)

    def channel_window(self, shape):
        return tf.identity, len(shape) - 1


@_register
class ConvRelevance(KernelRelevance):
    """A convolution of any rank, stride, padding, dilation and groups, and its relevance.

    Args:
        strides, padding, dilation_rate, data_format: those of the forward ``ConvND`` layer.
        explicit_padding: ``((before, after), ...)`` zeros added to each spatial axis first
            (a ``ZeroPadding`` layer absorbed into a ``valid`` convolution), or ``None``.
        **kwargs: see :class:`KernelRelevance`.
    """

    def __init__(self, rule=None, *, strides, padding, dilation_rate,
                 data_format="channels_last", explicit_padding=None, **kwargs):
        super().__init__(rule, **kwargs)
        self.strides = tuple(strides)
        self.padding = padding
        self.dilation_rate = tuple(dilation_rate)
        self.data_format = data_format
        self.explicit_padding = None if explicit_padding is None else tuple(
            tuple(int(p) for p in pair) for pair in explicit_padding)

    def _channels_last(self, x):
        """``x`` channels-last, with the absorbed zero padding."""
        if self.data_format == "channels_first":
            x = ops.moveaxis(x, 1, -1)
        if self.explicit_padding is not None:
            x = ops.pad(x, [[0, 0], *self.explicit_padding, [0, 0]])
        return x

    def linear(self, xs, kernel):
        # Computed channels-last: TF has no CPU kernel for channels-first convolution gradients.
        x = self._channels_last(xs[0])
        channels_first = self.data_format == "channels_first"
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

    @property
    def channel_axis(self):
        return 1 if self.data_format == "channels_first" else -1

    def channel_window(self, shape):
        kernel_shape = self.kernel_shape()
        axis = self.channel_axis % len(shape)
        if shape[axis] != kernel_shape[-2]:  # grouped
            return None
        ones = ops.ones(kernel_shape[:-2] + (1, 1), self.relevance_dtype)
        return (lambda m: self.linear([m], ones)), axis

    def flat(self, masks):
        if self.channel_window(masks[0].shape) is not None:
            return super().flat(masks)
        # Σ_i over a window of each group's channels: sum the channels of each group, then
        # convolve with a ones window of one channel per group.
        kernel_shape = self.kernel_shape()
        filters, group_channels = kernel_shape[-1], kernel_shape[-2]
        axis = self.channel_axis % len(masks[0].shape)

        def count(m):
            groups = m.shape[axis] // group_channels
            shape = tf.concat([tf.shape(m)[:axis], [groups, group_channels],
                               tf.shape(m)[axis + 1:]], 0)
            summed = tf.reduce_sum(tf.reshape(m, shape), axis=axis + 1)
            ones = ops.ones(kernel_shape[:-2] + (1, groups), m.dtype)
            return tf.repeat(self.linear([summed], ones), filters // groups, axis=axis)

        return self._flat_via(count, masks)

    def get_config(self):
        pads = None if self.explicit_padding is None else [list(p) for p in self.explicit_padding]
        return {**super().get_config(), "strides": list(self.strides), "padding": self.padding,
                "dilation_rate": list(self.dilation_rate), "data_format": self.data_format,
                "explicit_padding": pads}


@_register
class DepthwiseConvRelevance(ConvRelevance):
    """``DepthwiseConv1D/2D``: each channel convolved on its own, and its relevance.

    The kernel is ``(*kernel_size, channels, depth_multiplier)``; output channel ``c·M + m``
    reads input channel ``c``. Arguments as :class:`ConvRelevance`.
    """

    def convolve(self, x, kernel, padding):
        return ops.depthwise_conv(x, kernel, strides=self.strides, padding=padding,
                                  data_format="channels_last", dilation_rate=self.dilation_rate)

    def channel_window(self, shape):
        return None  # each output reads one input channel

    def flat(self, masks):
        kernel_shape = self.weight_shapes["kernel"]
        multiplier = kernel_shape[-1]

        def count(m):
            ones = ops.ones(kernel_shape[:-1] + (1,), m.dtype)
            counted = self.linear([m], ones)
            if multiplier == 1:
                return counted
            return tf.repeat(counted, multiplier, axis=self.channel_axis)

        return self._flat_via(count, masks)


@_register
class ConvTransposeRelevance(ConvRelevance):
    """``Conv1D/2D/3DTranspose`` (kernel ``(*size, filters, in)``) and its relevance.

    Args:
        output_padding: that of the forward layer (``None`` or one int per spatial axis).
        **kwargs: see :class:`ConvRelevance`.
    """

    kernel_input_axis = -1

    def __init__(self, rule=None, *, output_padding=None, **kwargs):
        super().__init__(rule, **kwargs)
        self.output_padding = None if output_padding is None else tuple(output_padding)

    def convolve(self, x, kernel, padding):
        return ops.conv_transpose(x, kernel, strides=self.strides, padding=padding,
                                  output_padding=self.output_padding,
                                  data_format="channels_last", dilation_rate=self.dilation_rate)

    def channel_window(self, shape):
        ones = ops.ones(self.weight_shapes["kernel"][:-2] + (1, 1), self.relevance_dtype)
        return (lambda m: self.linear([m], ones)), self.channel_axis % len(shape)

    def get_config(self):
        output_padding = None if self.output_padding is None else list(self.output_padding)
        return {**super().get_config(), "output_padding": output_padding}


@_register
class SeparableConvRelevance(ConvRelevance):
    """``SeparableConv1D/2D``: computed as depthwise then pointwise, explained as one map.

    The rules see the single linear map the two convolutions make, with the kernel
    ``K[..., c, f] = Σ_m D[..., c, m] · P[c·M + m, f]`` computed on the fly: no rule meets the
    signed intermediate tensor, which never went through an activation. Arguments as
    :class:`ConvRelevance`; the weights are ``depthwise_kernel``, ``pointwise_kernel``, ``bias``.
    """

    _weight_names = ("depthwise_kernel", "pointwise_kernel", "bias")

    def forward(self, x, dtype):
        depthwise = DepthwiseConvRelevance.convolve
        channels_first = self.data_format == "channels_first"
        x = self._channels_last(x)
        h = depthwise(self, x, ops.cast(self.depthwise_kernel, dtype), self.padding)
        z = ops.conv(h, ops.cast(self.pointwise_kernel, dtype), data_format="channels_last")
        return ops.moveaxis(z, -1, 1) if channels_first else z

    def kernel_value(self):
        dtype = self.relevance_dtype
        depthwise = ops.cast(self.depthwise_kernel, dtype)
        channels, multiplier = depthwise.shape[-2:]
        pointwise = ops.reshape(ops.cast(self.pointwise_kernel, dtype),
                                (channels, multiplier, -1))
        return ops.einsum("...cm,cmf->...cf", depthwise, pointwise)

    def kernel_shape(self):
        shapes = self.weight_shapes
        return shapes["depthwise_kernel"][:-1] + shapes["pointwise_kernel"][-1:]


@_register
class ScaleRelevance(KernelRelevance):
    """A per-channel affine map ``x·s + t`` (a BatchNormalization that could not be folded).

    Args:
        axis: the channel axis of the forward BatchNormalization.
        **kwargs: see :class:`KernelRelevance` (weights ``kernel`` = s, ``bias`` = t).
    """

    def __init__(self, rule=None, *, axis=-1, **kwargs):
        super().__init__(rule, **kwargs)
        self.axis = int(axis)

    def _broadcast(self, value, rank):
        shape = [1] * rank
        shape[self.axis % rank] = -1
        return ops.reshape(value, shape)

    def linear(self, xs, kernel):
        x = xs[0]
        return x * self._broadcast(kernel, len(x.shape))

    def add_bias(self, z, bias):
        return z + self._broadcast(bias, len(z.shape))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
