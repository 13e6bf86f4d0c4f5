"""Relevance that no contribution explains, spread over each unit's receptive field.

Where a Deep Taylor rule's denominator is zero — a unit driven by its bias alone, with no
contribution the rule could credit — its relevance is spread over the unit's receptive field in
proportion to the inputs' magnitude ``|a_i|``, evenly where every input is zero (the flat rule of
Lapuschkin et al., 2019, for those units). :class:`ReceptiveFieldSpread` is the mixin of
:class:`~tf_dtd.relevance.engine.LinearRelevance` that does it: generally by counting the inputs
of each unit with the layer's own map on ones (``flat``); one channel wide where every output
reads all input channels of its window (``channel_window``: Dense, convolutions with one group);
element by element where each output reads one element of each input (``elementwise``: Add).
"""

from keras import ops

from tf_dtd.relevance.tape import vjp

__all__ = ["ReceptiveFieldSpread"]


class ReceptiveFieldSpread:
    """Mixin: the spread of relevance over receptive fields. Needs the host's ``linear``,
    ``kernel_value`` and ``nonnegative_input``."""

    def channel_window(self, shape):
        """``(count_map, axis)`` for a one-input layer whose every output reads all input
        channels of its window (Dense, a convolution with one group): ``count_map`` is the map
        on one channel in and one out that counts the inputs of each window, ``axis`` the
        channel axis of inputs of ``shape``. ``None`` for any other layer."""
        return None

    def elementwise(self, shapes):
        """Whether every output reads one element of each input, at its own position (``Add``,
        ``Average`` of inputs of one shape)."""
        return False

    def flat(self, masks):
        """``z_ij = 1`` over the receptive field: ``(count_j, transpose)`` where ``count_j`` is
        the number of (masked) inputs feeding output ``j`` and ``transpose(s)`` sends ``s_j`` to
        each of them. ``masks`` (one per input) mark the real inputs (zero padding excluded).
        ``count`` may be one wide on an axis where every output reads the same inputs (the
        channels of a convolution), and ``transpose``'s results one wide where every input
        feeds the same outputs: both broadcast."""
        window = self.channel_window(masks[0].shape) if len(masks) == 1 else None
        if window is not None:
            return self._flat_over_channels(window[0], masks, window[1])
        ones = ops.ones_like(self.kernel_value())
        return self._flat_via(lambda *m: self.linear(list(m), ones), masks)

    @staticmethod
    def _flat_via(count_map, masks):
        """``flat`` from a map that counts inputs, linear in ``masks``: its transpose is exact."""
        def transpose(s):
            return vjp(count_map, masks, s)[2]
        return count_map(*masks), transpose

    @staticmethod
    def _flat_over_channels(count_map, masks, axis):
        """``flat`` of a one-input layer whose every output reads all input channels of its
        window: ``count_map`` counts on the channel sum, one channel in and one out, so the
        count and its transpose are one channel wide (a window convolution, not a full one)."""
        summed = ops.sum(masks[0], axis=axis, keepdims=True)

        def transpose(s):
            return vjp(count_map, [summed], ops.sum(s, axis=axis, keepdims=True))[2]
        return count_map(summed), transpose

    def _spread_flat(self, xs, share, constants):
        """Relevance ``share`` spread evenly over each unit's receptive field (real inputs)."""
        return self._spread([self._real_inputs(x, constants) for x in xs], share)[0]

    def _spread_unplaced(self, xs, share, constants):
        """The relevance of units a rule cannot credit (``share``), spread over each unit's
        receptive field in proportion to the inputs' magnitude ``|a_i|``, so it stays on the
        active inputs; evenly where every input of the unit is zero."""
        masks = [self._padding_mask(x, constants) for x in xs]
        if any(m is not None for m in masks):
            return self._spread_unplaced_in_one(xs, share, constants)
        sizes, by_size, evenly = self._unplaced_shares(xs, share)
        return [s * b + e for s, b, e in zip(sizes, by_size, evenly)]

    def _spread_unplaced_onto(self, x, products, share):
        """``Σ_k v_k · g_k`` plus :meth:`_spread_unplaced` of ``share`` for one input ``x``
        without padding constants, where the variants make ``|x| = Σ_k sign_k · v_k``
        (``products``: ``(v_k, g_k, sign_k)``, ``x`` itself for ``x ≥ 0`` or ``x⁺ − x⁻``): the
        spread by size ``|x| · s`` joins the products, ``Σ_k v_k · (g_k ± s)``, and the even
        spread, which only reaches inputs that are zero, is selected there. No sum of three
        terms, which Grappler makes one ``AddN`` and its memory optimiser a temporary variable
        (zeroed, then accumulated in place; MobileNetV2 z^B, batch 8: 11 ms per call in
        ``block_1_depthwise``; at batch 32 the zeros, 257 MB, were held between calls)."""
        _, (by_size,), (evenly,) = self._unplaced_shares([x], share)
        placed = [v * (g + by_size if sign > 0 else g - by_size) for v, g, sign in products]
        if len(placed) == 1:
            return placed[0] + evenly
        first, second = placed
        return ops.where(ops.equal(x, 0), evenly, first + second)

    def _unplaced_shares(self, xs, share):
        """For :meth:`_spread_unplaced` without padding constants: per input, its sizes
        ``|a_i|``, the share each unit sends per unit of size, and the even spread of the
        units whose inputs are all zero."""
        sizes = [x if self.nonnegative_input else ops.abs(x) for x in xs]
        count, transpose = self.flat(sizes)
        count = ops.cast(count, share.dtype)
        by_size = transpose(ops.divide_no_nan(share, count))
        left = ops.where(ops.equal(count, 0), share, 0.0)
        # The even count is the same for every sample: it is counted on one (``ones_like`` of
        # the batch's shape would be a constant the traced function holds). A linear map's
        # transpose does not depend on the point it is taken at: the sizes' serves both.
        even = ops.cast(self.flat([ops.ones_like(x[:1]) for x in xs])[0], share.dtype)
        return sizes, by_size, transpose(ops.divide_no_nan(left, even))

    def _spread_unplaced_in_one(self, xs, share, constants):
        """:meth:`_spread_unplaced` where padding constants mark the real inputs: both spreads
        in one count and one transpose, by |a_i| (first half of a doubled batch) and, for units
        whose inputs are all zero, evenly (second half)."""
        count_of = ops.shape(share)[0]
        weights = [ops.concatenate([m * ops.abs(x), ops.broadcast_to(m, ops.shape(x))], axis=0)
                   for m, x in zip([self._real_inputs(x, constants) for x in xs], xs)]
        count, transpose = self.flat(weights)
        count = ops.cast(count, share.dtype)
        by_size, even = count[:count_of], count[count_of:]
        left = ops.where(ops.equal(by_size, 0), share, 0.0)
        spread = transpose(ops.concatenate(
            [ops.divide_no_nan(share, by_size), ops.divide_no_nan(left, even)], axis=0))
        return [w[:count_of] * s[:count_of] + w[count_of:] * s[count_of:]
                for w, s in zip(weights, spread)]

    def _spread_over_window(self, window, x, share, constants):
        """:meth:`_spread_unplaced` where ``channel_window`` holds, for ``share`` summed over
        the output channels: the counts, the shares and their transpose are one channel wide;
        only the final products are as wide as ``x``."""
        count_map, axis = window
        mask = self._padding_mask(x, constants)
        size = x if self.nonnegative_input else ops.abs(x)
        if mask is not None:
            size = mask * size
        sized = ops.sum(size, axis=axis, keepdims=True)
        if mask is None:
            # Every sample's even count is the same: counted on one (a constant of the batch's
            # shape would be held by the traced function); ``sized`` stands in for the second
            # half, whose transpose alone is used.
            even_count = count_map(ops.full_like(sized[:1], x.shape[axis]))
            real = sized
        else:
            real = ops.sum(ops.broadcast_to(mask, ops.shape(x)), axis=axis, keepdims=True)
        count_of = ops.shape(x)[0]

        def cotangent(counts):  # by |a| (first half), evenly where every |a| is 0 (second)
            by_size = counts[:count_of]
            even_counts = even_count if mask is None else counts[count_of:]
            left = ops.where(ops.equal(by_size, 0), share, 0.0)
            return ops.concatenate(
                [ops.divide_no_nan(share, by_size), ops.divide_no_nan(left, even_counts)], axis=0)

        spread = vjp(count_map, [ops.concatenate([sized, real], axis=0)], cotangent)[2][0]
        by_size, even = spread[:count_of], spread[count_of:]
        return size * by_size + (even if mask is None else mask * even)

    def _spread_elementwise(self, xs, share, constants):
        """:meth:`_spread_unplaced` where ``elementwise`` holds: each unit's receptive field is
        one element of each input."""
        masks = [self._padding_mask(x, constants) for x in xs]
        sizes = [x if self.nonnegative_input else ops.abs(x) for x in xs]
        sizes = [s if m is None else m * s for m, s in zip(masks, sizes)]
        total = sum(sizes[1:], sizes[0])
        left = ops.where(ops.equal(total, 0), share, 0.0)
        by_size = ops.divide_no_nan(share, total)
        masked = masks[0] is not None
        even = ops.divide_no_nan(left, sum(masks[1:], masks[0]) if masked else len(xs))
        return [s * by_size + (even if m is None else m * even) for s, m in zip(sizes, masks)]

    def _spread(self, weights, share):
        """``R_i = w_i Σ_j [i feeds j] share_j / Σ_i' w_i'``: ``share`` spread in proportion to
        ``weights`` (one tensor per input), and the share of units whose weights are all 0."""
        count, transpose = self.flat(weights)
        count = ops.cast(count, share.dtype)
        spread = transpose(ops.divide_no_nan(share, count))
        left = ops.where(ops.equal(count, 0), share, 0.0)
        return [w * s for w, s in zip(weights, spread)], left

    @classmethod
    def _real_inputs(cls, x, constants):
        """1 where ``x`` holds an input value, 0 where it holds padding carried from the pixels."""
        mask = cls._padding_mask(x, constants)
        return ops.ones_like(x) if mask is None else mask

    @staticmethod
    def _padding_mask(x, constants):
        """:meth:`_real_inputs` where the layer has padding carried from the pixels (the rule's
        input constants mark it), ``None`` where every element of ``x`` is an input."""
        if "ones" in constants:
            return constants["ones"]
        if "low" in constants and "high" in constants:
            return ops.cast(constants["high"] > constants["low"], x.dtype)
        return None
