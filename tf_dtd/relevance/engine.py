"""The engine that runs a linear rule backwards through one linear map.

:class:`LinearRelevance` is the base of every relevance layer that applies a rule of
:mod:`tf_dtd.rules` — kernel layers (:mod:`tf_dtd.relevance.layers`) and the linear layers
without a kernel of their own (:mod:`tf_dtd.relevance.maps`). A subclass says what its map is
(:meth:`~LinearRelevance.linear`) and where its kernel and bias come from; the engine evaluates the
rule's parts with the gradient trick, all as plain TF ops that ``tf.function`` and XLA compile:

    z = Σ_terms f(input_t, kernel_t) (+ bias);  s = R / z;  R_in = Σ_terms input_t · (∂f/∂input)ᵀ s

Vector-Jacobian products are taken with ``tf.GradientTape`` inside ``call``. Where a part's
denominator is the layer's own output, the forward pass's ``z`` is used and the recomputed map
only serves its transpose (graph pruning drops it). A part with ``fallback`` spreads the relevance
of units with a zero denominator over their receptive field by the inputs' magnitude, evenly
where all of them are zero (:meth:`flat`; one channel wide where :meth:`channel_window` says so,
element by element where :meth:`elementwise` does).
"""

import keras
import tensorflow as tf
from keras import ops

from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError, describe

__all__ = ["LinearRelevance", "after", "vjp"]


def _dead(denominator, share):
    """Units whose denominator is exactly zero (no contribution to credit) yet hold relevance."""
    return ops.logical_and(ops.equal(denominator, 0), ops.not_equal(share, 0))


def _unplaced(denominator, share):
    """The relevance of units whose denominator is exactly zero: no contribution to credit."""
    return ops.where(_dead(denominator, share), share, ops.zeros_like(share))


def after(tensor, values):
    """``values`` (a nested structure) as they are, computed no earlier than ``tensor``.

    In a graph, TensorFlow runs an op as soon as its inputs exist: a layer's modified forward
    (``z⁺``, its modified weights) needs only forward activations, so without this every layer's
    would be computed right after the forward pass and held until relevance reaches it.
    """
    if tf.executing_eagerly():
        return values
    with tf.control_dependencies([tensor]):
        return tf.nest.map_structure(lambda v: None if v is None else tf.identity(v), values)


def vjp(forward, inputs, cotangent):
    """Run ``forward(*inputs)`` under a tape: ``(inputs, output, Jᵀ cotangent)``.

    ``cotangent`` may be a function of the output (``lambda z: R / z``).
    """
    # Fresh identities: one tensor fed twice (e.g. Concatenate()([a, a])) gets one gradient each.
    inputs = [tf.identity(x) for x in inputs]
    with tf.GradientTape() as tape:
        for x in inputs:
            tape.watch(x)
        z = forward(*inputs)
    if callable(cotangent):
        cotangent = cotangent(z)
    grads = tape.gradient(z, inputs, output_gradients=ops.cast(cotangent, z.dtype),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return inputs, z, [ops.cast(g, x.dtype) for g, x in zip(grads, inputs)]


class LinearRelevance(keras.layers.Layer):
    """Apply a linear rule backwards through a linear map of one or more inputs.

    Args:
        rule: a linear :class:`tf_dtd.rules.Rule` (or its serialised dict); ``None`` until the
            rewriter assigns one (a kernel layer is created for the forward pass first).
        nonnegative_input: the forward inputs are known to be ≥ 0 (lets the rule drop a⁻ terms).
        constant_inputs: names of rule input constants (``rule.input_constants()``) passed as
            extra call inputs instead of being derived from ``x`` (see ``Rule.input_constants``).
        relevance_dtype: the dtype relevance is computed in (``"float32"`` or ``"float64"``);
            the layer's compute dtype by default.

    Call arguments:
        inputs: ``[*xs, relevance, *constants]`` or ``[*xs, z, relevance, *constants]``: the
            forward inputs of the map, optionally its output ``z`` (saves recomputing it), the
            relevance at its output, and one tensor shaped like ``xs[0]`` per name in
            ``constant_inputs``.

    Returns:
        Relevance at the forward input (a list for several inputs).
    """

    num_inputs = 1
    nonnegative_kernel = False  # the map's weights are all >= 0 (average pooling, Add)

    def __init__(self, rule=None, *, nonnegative_input=False, constant_inputs=(),
                 relevance_dtype=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rule, dict):
            rule = rules_lib.deserialize(rule)
        self.rule = rule
        self.nonnegative_input = bool(nonnegative_input)
        self.constant_inputs = tuple(constant_inputs)
        self.relevance_dtype = relevance_dtype or self.compute_dtype

    def configure(self, rule, *, nonnegative_input=False, constant_inputs=()):
        """Set the rule (and what is known of the inputs) before the relevance call."""
        if rule.applies_to != "linear":
            raise InvalidArgumentError(
                f"Layer {describe(self)} applies linear rules (Z, Epsilon, Gamma, AlphaBeta, "
                f"ZPlus, ZBox, WSquare, Flat). Received: {rule!r}"
            )
        self.rule = rule
        self.nonnegative_input = bool(nonnegative_input)
        self.constant_inputs = tuple(constant_inputs)

    # --- What a subclass defines ---

    def linear(self, xs, kernel):
        """The map without bias, applied to the list ``xs`` with ``kernel``."""
        raise NotImplementedError

    def kernel_value(self):
        """The kernel the rules modify, in the relevance dtype."""
        raise NotImplementedError

    def bias_value(self):
        """The bias, in the relevance dtype, or ``None`` (see :meth:`add_bias`)."""
        return None

    def add_bias(self, z, bias):
        """``z`` plus a bias (or a modified bias) of the layer's bias shape."""
        return z + bias

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

    # --- The engine ---

    def relevance(self, xs, z, relevance, constants):
        """Relevance at each of ``xs`` (a list) under the layer's rule."""
        dtype = self.relevance_dtype
        xs = [ops.cast(x, dtype) for x in xs]
        relevance = ops.cast(relevance, dtype)
        constants = {k: ops.cast(v, dtype) for k, v in constants.items()}
        if not constants:
            self.rule.check_input_shape(tuple(xs[0].shape[1:]))
        xs = after(relevance, xs)
        kernel, bias = self.kernel_value(), self.bias_value()
        params, waiting = {}, []

        def param(key):
            if key not in params:
                value = self.rule.param(key, kernel, bias)
                if value is not kernel and value is not bias:  # modified: made when needed
                    waiting[:] = waiting or after(relevance, [kernel, bias])
                    value = self.rule.param(key, *waiting)
                params[key] = value
            return params[key]

        def plain():
            if z is not None and keras.backend.standardize_dtype(z.dtype) == dtype:
                return z
            out = self.linear(xs, kernel)
            return out if bias is None else self.add_bias(out, bias)

        parts = self.rule.parts(nonnegative_input=self.nonnegative_input,
                                nonnegative_kernel=self.nonnegative_kernel)
        result = None
        output = None
        for part in parts:
            share = relevance
            if part.where is not None:
                output = plain() if output is None else output
                keep = output >= 0 if part.where == "positive" else output < 0
                share = ops.where(keep, relevance, ops.zeros_like(relevance))
            if part.terms == rules_lib.FLAT_TERMS:
                sent = self._spread_flat(xs, share, constants)
            else:
                reuse = plain() if part.is_output and z is not None else None
                sent = self._part(part, xs, share, constants, param, bias, reuse)
            if part.coefficient != 1:
                sent = [part.coefficient * s for s in sent]
            result = sent if result is None else [r + s for r, s in zip(result, sent)]
        return result if result is not None else [ops.zeros_like(x) for x in xs]

    def _part(self, part, xs, share, constants, param, bias, output):
        variants, forward = self._forward(part, xs, constants, param, bias)
        denominator = {}

        def cotangent(computed):
            den = computed if output is None else output
            den = rules_lib.stabilize(den, part.epsilon, relative=part.relative_epsilon)
            denominator["value"] = den
            return ops.divide_no_nan(share, den)

        variants, _, grads = vjp(forward, variants, cotangent)
        count = len(xs)
        placed = [None] * count
        for index, (variant, grad) in enumerate(zip(variants, grads)):
            i = index % count
            placed[i] = variant * grad if placed[i] is None else placed[i] + variant * grad
        placed = [ops.zeros_like(x) if p is None else p for p, x in zip(placed, xs)]
        if not part.fallback:
            return placed
        denominator = denominator["value"]
        window = self.channel_window(xs[0].shape) if count == 1 else None
        if window is not None:
            # One channel wide but for its last products, and a cond whose branch takes no
            # tensor as wide as the relevance: a branch that took the relevance held on to
            # tensors (ResNet50, batch 8, deep_taylor_bounded: peak 2.4 GB over the model's,
            # 0.9 GB like this, gradient×input 0.4 GB).
            lost = ops.sum(share * ops.cast(ops.equal(denominator, 0), share.dtype),
                           axis=window[1], keepdims=True)
            return ops.cond(
                ops.any(ops.not_equal(lost, 0)),
                lambda: [placed[0] + self._spread_over_window(window, xs[0], lost, constants)],
                lambda: placed)
        dead = _dead(denominator, share)
        spread = self._spread_elementwise if self.elementwise([x.shape for x in xs]) else (
            self._spread_unplaced)

        def with_unplaced():
            lost = ops.where(dead, share, ops.zeros_like(share))
            return [p + f for p, f in zip(placed, spread(xs, lost, constants))]

        return ops.cond(ops.any(dead), with_unplaced, lambda: placed)

    def _forward(self, part, xs, constants, param, bias):
        """The part's input variants (flat list) and its map ``forward(*variants) -> z``."""
        names = sorted({term.input for term in part.terms})
        variants = [v for name in names for v in self._variant(name, xs, constants)]
        count = len(xs)

        def forward(*tensors):
            by_name = {name: list(tensors[i * count:(i + 1) * count])
                       for i, name in enumerate(names)}
            total = sum(self.linear(by_name[t.input], param(t.kernel)) for t in part.terms)
            if part.bias is not None and bias is not None:
                total = self.add_bias(total, param(part.bias))
            return total

        return variants, forward

    def spread_flat_share(self, inputs):
        """Per sample, the relevance that parts with ``fallback`` spread flat (their units with a
        zero denominator); ``inputs`` as for ``call``. What ``conservation_report`` shows."""
        xs, z, relevance, constants = self._parse(inputs)
        dtype = self.relevance_dtype
        xs = [ops.cast(x, dtype) for x in xs]
        relevance = ops.cast(relevance, dtype)
        constants = {k: ops.cast(v, dtype) for k, v in constants.items()}
        kernel, bias = self.kernel_value(), self.bias_value()
        total = ops.zeros_like(relevance)
        for part in self.rule.parts(nonnegative_input=self.nonnegative_input,
                                    nonnegative_kernel=self.nonnegative_kernel):
            if not part.fallback:
                continue
            variants, forward = self._forward(
                part, xs, constants, lambda key: self.rule.param(key, kernel, bias), bias)
            total = total + _unplaced(forward(*variants), relevance)
        return ops.sum(ops.reshape(total, (ops.shape(total)[0], -1)), axis=1)

    def _variant(self, name, xs, constants):
        if name in constants:
            return [constants[name]]
        if len(xs) == 1:
            return [self.rule.input(name, xs[0], constants)]
        return [self.rule.input(name, x, {}) for x in xs]

    def _spread_flat(self, xs, share, constants):
        """Relevance ``share`` spread evenly over each unit's receptive field (real inputs)."""
        return self._spread([self._real_inputs(x, constants) for x in xs], share)[0]

    def _spread_unplaced(self, xs, share, constants):
        """The relevance of units a rule cannot credit (``share``), spread over each unit's
        receptive field in proportion to the inputs' magnitude ``|a_i|``, so it stays on the
        active inputs; evenly where every input of the unit is zero."""
        # Both spreads in one count and one transpose: by |a_i| (first half of a doubled
        # batch) and, for units whose inputs are all zero, evenly (second half).
        count_of = ops.shape(share)[0]
        weights = [ops.concatenate([m * ops.abs(x), ops.broadcast_to(m, ops.shape(x))], axis=0)
                   for m, x in zip([self._real_inputs(x, constants) for x in xs], xs)]
        count, transpose = self.flat(weights)
        count = ops.cast(count, share.dtype)
        by_size, even = count[:count_of], count[count_of:]
        left = ops.where(ops.equal(by_size, 0), share, ops.zeros_like(share))
        spread = transpose(ops.concatenate(
            [ops.divide_no_nan(share, by_size), ops.divide_no_nan(left, even)], axis=0))
        return [w[:count_of] * s[:count_of] + w[count_of:] * s[count_of:]
                for w, s in zip(weights, spread)]

    def _spread_over_window(self, window, x, share, constants):
        """:meth:`_spread_unplaced` where ``channel_window`` holds, for ``share`` summed over
        the output channels: the counts, the shares and their transpose are one channel wide;
        only the final products are as wide as ``x``."""
        count_map, axis = window
        mask = self._real_inputs(x, constants)
        size = x if self.nonnegative_input else ops.abs(x)
        if "ones" in constants or "low" in constants:  # padding carried from the pixels
            size = mask * size
            real = ops.sum(ops.broadcast_to(mask, ops.shape(x)), axis=axis, keepdims=True)
        else:
            mask = None
            real = None
        sized = ops.sum(size, axis=axis, keepdims=True)
        if real is None:
            real = ops.full_like(sized, x.shape[axis])
        count_of = ops.shape(x)[0]

        def cotangent(counts):  # by |a| (first half), evenly where every |a| is 0 (second)
            by_size, even = counts[:count_of], counts[count_of:]
            left = ops.where(ops.equal(by_size, 0), share, ops.zeros_like(share))
            return ops.concatenate(
                [ops.divide_no_nan(share, by_size), ops.divide_no_nan(left, even)], axis=0)

        spread = vjp(count_map, [ops.concatenate([sized, real], axis=0)], cotangent)[2][0]
        by_size, even = spread[:count_of], spread[count_of:]
        return size * by_size + (even if mask is None else mask * even)

    def _spread_elementwise(self, xs, share, constants):
        """:meth:`_spread_unplaced` where ``elementwise`` holds: each unit's receptive field is
        one element of each input."""
        masked = "ones" in constants or "low" in constants
        masks = [self._real_inputs(x, constants) for x in xs] if masked else None
        sizes = [x if self.nonnegative_input else ops.abs(x) for x in xs]
        if masked:
            sizes = [m * s for m, s in zip(masks, sizes)]
        total = sum(sizes[1:], sizes[0])
        left = ops.where(ops.equal(total, 0), share, ops.zeros_like(share))
        by_size = ops.divide_no_nan(share, total)
        even = ops.divide_no_nan(left, sum(masks[1:], masks[0]) if masked else len(xs))
        return [s * by_size + (m * even if masked else even)
                for s, m in zip(sizes, masks or [None] * len(xs))]

    def _spread(self, weights, share):
        """``R_i = w_i Σ_j [i feeds j] share_j / Σ_i' w_i'``: ``share`` spread in proportion to
        ``weights`` (one tensor per input), and the share of units whose weights are all 0."""
        count, transpose = self.flat(weights)
        count = ops.cast(count, share.dtype)
        spread = transpose(ops.divide_no_nan(share, count))
        left = ops.where(ops.equal(count, 0), share, ops.zeros_like(share))
        return [w * s for w, s in zip(weights, spread)], left

    @staticmethod
    def _real_inputs(x, constants):
        """1 where ``x`` holds an input value, 0 where it holds padding carried from the pixels."""
        if "ones" in constants:
            return constants["ones"]
        if "low" in constants and "high" in constants:
            return ops.cast(constants["high"] > constants["low"], x.dtype)
        return ops.ones_like(x)

    def _parse(self, inputs):
        """``(xs, z or None, relevance, constants)`` from the call's input list."""
        inputs = list(inputs)
        constants = inputs[len(inputs) - len(self.constant_inputs):]
        rest = inputs[:len(inputs) - len(self.constant_inputs)]
        xs, tail = rest[:self.num_inputs], rest[self.num_inputs:]
        if len(tail) not in (1, 2):
            raise InvalidArgumentError(
                f"{describe(self)} takes [*inputs ({self.num_inputs}), (output,) relevance, "
                f"*constants {self.constant_inputs}]. Received: {len(inputs)} tensors"
            )
        z, relevance = (None, tail[0]) if len(tail) == 1 else tail
        if self.rule is None:
            raise InvalidArgumentError(f"{describe(self)} has no rule to apply.")
        return xs, z, relevance, dict(zip(self.constant_inputs, constants))

    def call(self, inputs):
        result = self.relevance(*self._parse(inputs))
        return result if self.num_inputs > 1 else result[0]

    def get_config(self):
        rule = None if self.rule is None else rules_lib.serialize(self.rule)
        return {**super().get_config(), "rule": rule,
                "nonnegative_input": self.nonnegative_input,
                "constant_inputs": list(self.constant_inputs),
                "relevance_dtype": self.relevance_dtype}
