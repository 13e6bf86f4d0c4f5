"""Winner-take-all relevance through max-pooling (:class:`MaxPoolRelevance`).

A window's relevance goes to the input that attains its maximum; exact ties share it equally.
Windows that tile the input (VGG's 2×2, stride 2) are two axes of a reshape and cost a max- and
an average-pooling; overlapping or padded windows (ResNet's 3×3, stride 2) are taken one window
position at a time: the input split by stride residue, so that the cells at one position of
every window are a unit-stride slice, and the shares put back the same way (ResNet50's first
pooling, batch 8: about 20 ms, where one-hot convolutions of each channel took 75–80).
"""

import keras
import numpy as np
from keras import ops

from tf_dtd.relevance.forward_copy import ForwardCopy
from tf_dtd.relevance.tape import add_all, after

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

    @staticmethod
    def feeds_zeros_only_from_zeros():
        """An input that is 0 gets relevance only from windows whose maximum it attains, whose
        output is then 0 (see :mod:`tf_dtd.relevance.reuse`)."""
        return True

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
        return _overlapping_windows(x, relevance, layer, pool, strides, outputs, zero_padding)

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

    ties = ops.equal(ops.reshape(covered, split), pooled(covered, ops.max_pool))
    count = ops.round(pooled(ops.reshape(ops.cast(ties, x.dtype), ops.shape(covered)),
                             ops.average_pool) * float(np.prod(pool)))
    # A select on the ties, not their product with the share: one cast fewer of the input's
    # size (VGG16, batch 8: the five poolings' op time 115 → 91 ms per call). ``share · 0``
    # where an input does not win keeps the product's bits (−0, and NaN from a NaN share).
    share = ops.divide_no_nan(ops.expand_dims(relevance, within), count)
    shares = ops.where(ties, share, share * 0.0)
    shares = ops.reshape(shares, ops.shape(covered))
    left_over = [[0, 0], *[[0, n - o * p] for n, o, p in zip(x.shape[1:-1], outputs, pool)],
                 [0, 0]]  # rows a "valid" pooling never reads
    return ops.pad(shares, left_over) if any(pair[1] for pair in left_over) else shares


def _overlapping_windows(x, relevance, layer, pool, strides, outputs, zero_padding):
    """Max-pooling relevance for any windows: the cells at each of the ``prod(pool)`` positions
    in a window are one slice of the input (one cell per window), compared with the window's
    maximum element-wise; the shares go back to the input through :func:`_put_back`."""
    spatial = tuple(x.shape[1:-1])
    same = [(0, 0)] * len(pool)
    if layer.padding == "same":  # TensorFlow's: the extra row or column after
        totals = [max((o - 1) * s + p - n, 0)
                  for n, p, s, o in zip(spatial, pool, strides, outputs)]
        same = [(t // 2, t - t // 2) for t in totals]
    # Which cells hold inputs: neither "same" padding nor a ZeroPadding border competes.
    real = np.zeros(spatial, bool)
    if zero_padding is None:
        real[:] = True
    else:
        real[tuple(slice(a, n - b) for n, (a, b) in zip(spatial, zero_padding))] = True
    real = np.pad(real, same)
    peak = _max_pool(x, layer)
    # The cells of every window at one offset: a slice of the input split by stride residue
    # (``(B, *L, *s, C)`` moved to ``(B, *s, *L, C)``: unit-stride slices, not strided ones).
    shifts = [(p - 1) // s + 1 for p, s in zip(pool, strides)]
    lengths = [o + q - 1 for o, q in zip(outputs, shifts)]
    by_residue = _by_residue(x, same, lengths, strides)
    real_by_residue = _by_residue(real[None, ..., None], [(0, 0)] * len(pool), lengths, strides)

    def window(tensor, offset):  # the cell at ``offset`` of every window
        return tensor[(slice(None),) + tuple(d % s for d, s in zip(offset, strides))
                      + tuple(slice(d // s, d // s + o) for d, s, o in
                              zip(offset, strides, outputs))]

    offsets = list(np.ndindex(*pool))
    values, weights, inside = [], [], []
    for offset in offsets:
        cells = window(real_by_residue, offset)
        values.append(window(by_residue, offset))
        inside.append(None if cells.all() else ops.convert_to_tensor(cells, x.dtype))
        tie = ops.cast(ops.equal(values[-1], peak), x.dtype)
        weights.append(tie if inside[-1] is None else tie * inside[-1])
    total = add_all(weights)
    if zero_padding is not None:
        # A window won by padding alone (its real inputs all negative, as behind ResNetV2's
        # linear convolution): its relevance goes to its inputs by magnitude, evenly where they
        # are all zero. Behind a ReLU no window is, and the cond skips the work.
        def with_orphans():
            orphan = ops.equal(total, 0)
            sizes = [ops.abs(v) if m is None else ops.abs(v) * m for v, m in zip(values, inside)]
            size = add_all(sizes)
            by_size = ops.greater(size, 0)
            ones = [1.0 if m is None else m for m in inside]  # scalars: no constant of
            # the batch's shape for the traced function to hold
            return ([ops.where(orphan, ops.where(by_size, b, o), w)
                     for w, b, o in zip(weights, sizes, ones)],
                    ops.where(orphan, ops.where(by_size, size, add_all(ones)), total))

        weights, total = ops.cond(ops.any(ops.equal(total, 0)), with_orphans,
                                  lambda: (weights, total))
    share = ops.divide_no_nan(relevance, total)
    spread = _put_back([w * share for w in weights], offsets, strides, lengths, real.shape)
    return spread[(slice(None),) + tuple(slice(a, n + a) for n, (a, _) in zip(spatial, same))]


def _by_residue(x, same, lengths, strides):
    """``x`` (NumPy or a tensor, ``(B, *S, C)``) with ``same`` padding, cropped or padded at
    the end to ``lengths · strides``, as ``(B, *strides, *lengths, C)``."""
    module = np if isinstance(x, np.ndarray) else ops
    rank = len(strides)
    spatial = x.shape[1:-1]
    covered = [n * s for n, s in zip(lengths, strides)]
    ends = [[a, max(c - n - a, 0)] for n, (a, _), c in zip(spatial, same, covered)]
    if any(map(any, ends)):
        x = module.pad(x, [[0, 0], *ends, [0, 0]])
    x = x[(slice(None),) + tuple(slice(0, c) for c in covered)]
    if all(s == 1 for s in strides):
        return module.reshape(x, (-1, *([1] * rank), *lengths, x.shape[-1]))
    split = module.reshape(x, (-1, *[n for pair in zip(lengths, strides) for n in pair],
                               x.shape[-1]))
    order = [0] + [2 + 2 * k for k in range(rank)] + [1 + 2 * k for k in range(rank)]
    return module.transpose(split, order + [1 + 2 * rank])


def _put_back(parts, offsets, strides, lengths, size):
    """The input-sized (``size``) sum of ``parts`` (one per window offset, shaped like the
    output), each element at the input cell it came from: cell ``o·s + d`` for output ``o`` and
    offset ``d``. Offsets with the same residue ``d mod s`` fill one grid of ``lengths`` (shifted
    by ``d // s``); the grids interleave into the input by a reshape (:func:`_by_residue`
    undone)."""
    rank = len(strides)
    grids = {}
    for part, offset in zip(parts, offsets):
        residue = tuple(d % s for d, s in zip(offset, strides))
        pads = [[d // s, n - part.shape[1 + k] - d // s]
                for k, (d, s, n) in enumerate(zip(offset, strides, lengths))]
        placed = ops.pad(part, [[0, 0], *pads, [0, 0]]) if any(map(any, pads)) else part
        grids[residue] = placed if residue not in grids else grids[residue] + placed
    zeros = ops.zeros_like(next(iter(grids.values())))
    channels = parts[0].shape[-1]
    stacked = ops.stack([grids.get(r, zeros) for r in np.ndindex(*strides)], axis=-2)
    if any(s > 1 for s in strides):
        stacked = ops.reshape(stacked, (-1, *lengths, *strides, channels))
        order = [0] + [axis for k in range(rank) for axis in (1 + k, 1 + rank + k)]
        stacked = ops.transpose(stacked, order + [1 + 2 * rank])
    covered = [n * s for n, s in zip(lengths, strides)]
    result = ops.reshape(stacked, (-1, *covered, channels))
    result = result[(slice(None),) + tuple(slice(0, min(c, n)) for c, n in zip(covered, size))]
    extra = [[0, max(n - c, 0)] for c, n in zip(covered, size)]
    return ops.pad(result, [[0, 0], *extra, [0, 0]]) if any(e for _, e in extra) else result


def _max_pool(x, layer):
    """The forward max-pooling of channels-last ``x``."""
    return ops.max_pool(x, layer.pool_size, strides=layer.strides, padding=layer.padding,
                        data_format="channels_last")
