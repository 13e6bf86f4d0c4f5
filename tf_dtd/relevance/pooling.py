"""Winner-take-all relevance through max-pooling (:class:`MaxPoolRelevance`).

A window's relevance goes to the input that attains its maximum; exact ties share it equally.
Windows that tile the input (VGG's 2×2, stride 2) are two axes of a reshape and cost a max- and
an average-pooling; overlapping or padded windows (ResNet's 3×3, stride 2) become channels of
one-hot convolutions, one channel of the input at a time.
"""

import keras
import numpy as np
from keras import ops

from tf_dtd.relevance.engine import after, vjp
from tf_dtd.relevance.forward_copy import ForwardCopy

__all__ = ["MaxPoolRelevance"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


@_register
class MaxPoolRelevance(ForwardCopy, keras.layers.Layer):
    """Winner-take-all through max-pooling: a window's relevance goes to the input that attains
    its maximum, and inputs that tie for it share it equally (nothing duplicated, and no corner
    of a constant window favoured, as the gradient's first-winner routing would).

    Behind a ``ZeroPadding`` (``zero_padding``), the padded zeros take part in the maximum but
    are no inputs: a window whose maximum only a padded zero attains (its real inputs are all
    negative, as behind a linear convolution in ResNetV2) is a unit that no input explains, and
    its relevance is spread over the window's real inputs in proportion to their magnitude (as
    for a unit driven by its bias alone), instead of being lost on the padding.

    Args:
        layer: the forward ``MaxPooling1D/2D/3D`` or ``GlobalMaxPooling1D/2D/3D`` (or its
            serialised dict).
        zero_padding: ``((before, after), ...)`` per spatial axis of the ``ZeroPadding`` that
            made the pooling's input, or ``None``.
    """

    def __init__(self, layer, zero_padding=None, **kwargs):
        super().__init__(**kwargs)
        self._wrap(layer)
        self.zero_padding = None if zero_padding is None else tuple(
            tuple(int(p) for p in pair) for pair in zero_padding)

    def build(self, input_shape):
        self._build_wrapped([tuple(input_shape[0])])

    def call(self, inputs):
        x, relevance = inputs
        layer = self.forward_layer
        x = after(relevance, ops.cast(x, relevance.dtype))
        channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
        if channels_first:
            x = ops.moveaxis(x, 1, -1)
        if hasattr(layer, "pool_size"):
            result = self._windows(x, relevance, layer, channels_first, self.zero_padding)
        else:
            result = self._global(x, relevance, layer, channels_first)
        return ops.moveaxis(result, -1, 1) if channels_first else result

    @staticmethod
    def _global(x, relevance, layer, channels_first):
        axes = tuple(range(1, len(x.shape) - 1))
        if getattr(layer, "keepdims", False) and channels_first:
            relevance = ops.moveaxis(relevance, 1, -1)
        relevance = ops.reshape(relevance, (-1,) + (1,) * len(axes) + (x.shape[-1],))
        ties = ops.cast(ops.equal(x, ops.max(x, axis=axes, keepdims=True)), x.dtype)
        count = ops.sum(ties, axis=axes, keepdims=True)
        return ties * ops.divide_no_nan(relevance, count)

    @staticmethod
    def _windows(x, relevance, layer, channels_first, zero_padding):
        if channels_first:
            relevance = ops.moveaxis(relevance, 1, -1)
        pool, strides = tuple(layer.pool_size), tuple(layer.strides)
        outputs = tuple(relevance.shape[1:-1])
        spatial = tuple(x.shape[1:-1])
        padded = layer.padding == "same" and any(  # "same" padding adds rows or columns
            (o - 1) * s + p > n for n, p, s, o in zip(spatial, pool, strides, outputs))
        # (TensorFlow broadcasts element-wise ops over at most 6 axes: 1D and 2D pooling.)
        if zero_padding is None and pool == strides and not padded and len(pool) <= 2:
            return _disjoint_windows(x, relevance, pool, outputs)
        # Otherwise every window's K elements as channels: one-hot convolutions of each
        # channel alone.
        channels = x.shape[-1]
        size = int(np.prod(pool))
        onehot = ops.convert_to_tensor(np.eye(size).reshape(pool + (1, size)), dtype=x.dtype)

        def per_channel(t):  # (B, *S, C) -> (B·C, *S, 1)
            t = ops.moveaxis(t, -1, 1)
            return ops.expand_dims(ops.reshape(t, (-1,) + tuple(ops.shape(t)[2:])), -1)

        def patches(t):
            return ops.conv(t, onehot, strides=strides, padding=layer.padding)

        flat_x = per_channel(x)
        peak = per_channel(_max_pool(x, layer))
        inputs = ops.ones_like(flat_x)
        if zero_padding is not None:  # the padded border holds no inputs
            inner = [n - a - b for n, (a, b) in zip(spatial, zero_padding)]
            inputs = ops.pad(ops.ones((1, *inner, 1), x.dtype),
                             [[0, 0], *[list(pair) for pair in zero_padding], [0, 0]])
        real = ops.cast(patches(inputs) > 0, x.dtype)  # no padding of either kind competes
        values = patches(flat_x)
        ties = ops.cast(ops.equal(values, peak), x.dtype) * real
        # A window won by padding alone: its relevance goes to its inputs by magnitude.
        orphan = ops.sum(ties, axis=-1, keepdims=True) == 0
        by_size = real * ops.abs(values)
        by_size = ops.where(ops.sum(by_size, axis=-1, keepdims=True) > 0, by_size, real)
        weights = ops.where(orphan, by_size, ties)
        shares = weights * ops.divide_no_nan(per_channel(relevance),
                                             ops.sum(weights, axis=-1, keepdims=True))
        _, _, (spread,) = vjp(patches, [flat_x], shares)
        spread = ops.reshape(spread, (-1, channels) + tuple(ops.shape(x)[1:-1]))
        return ops.moveaxis(spread, 1, -1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        padding = None if self.zero_padding is None else [list(p) for p in self.zero_padding]
        return {**super().get_config(), "layer": keras.layers.serialize(self.forward_layer),
                "zero_padding": padding}


def _disjoint_windows(x, relevance, pool, outputs):
    """Max-pooling relevance where the windows tile the input without overlap or padding (VGG's
    2×2, stride 2): a window is two axes of a reshape, its maximum a max-pooling and its count
    of ties an average pooling, so nothing but element-wise work and pooling kernels."""
    covered = x[(slice(None),) + tuple(slice(0, o * p) for o, p in zip(outputs, pool))]
    split = (-1,) + tuple(n for o, p in zip(outputs, pool) for n in (o, p)) + (x.shape[-1],)
    within = tuple(range(2, 2 * len(pool) + 1, 2))  # the axes inside a window

    def pooled(t, function):  # (B, *O, C) pooled -> broadcastable over the split windows
        return ops.expand_dims(function(t, pool, strides=pool, padding="valid"), within)

    ties = ops.cast(ops.equal(ops.reshape(covered, split), pooled(covered, ops.max_pool)),
                    x.dtype)
    ties = ops.reshape(ties, ops.shape(covered))
    count = ops.round(pooled(ties, ops.average_pool) * float(np.prod(pool)))
    shares = ops.reshape(ties, split) * ops.divide_no_nan(ops.expand_dims(relevance, within),
                                                          count)
    shares = ops.reshape(shares, ops.shape(covered))
    left_over = [[0, 0], *[[0, n - o * p] for n, o, p in zip(x.shape[1:-1], outputs, pool)],
                 [0, 0]]  # rows a "valid" pooling never reads
    return ops.pad(shares, left_over) if any(pair[1] for pair in left_over) else shares


def _max_pool(x, layer):
    """The forward max-pooling of channels-last ``x``."""
    return ops.max_pool(x, layer.pool_size, strides=layer.strides, padding=layer.padding,
                        data_format="channels_last")
