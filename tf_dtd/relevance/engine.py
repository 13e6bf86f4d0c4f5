"""The engine that runs a linear rule backwards through one linear map.

:class:`LinearRelevance` is the base of every relevance layer that applies a rule of
:mod:`tf_dtd.rules` — kernel layers (:mod:`tf_dtd.relevance.layers`) and the linear layers
without a kernel of their own (:mod:`tf_dtd.relevance.maps`). A subclass says what its map is
(:meth:`~LinearRelevance.linear`) and where its kernel and bias come from; the engine evaluates the
rule's parts with the gradient trick, all as plain TF ops that ``tf.function`` and XLA compile:

    z = Σ_terms f(input_t, kernel_t) (+ bias);  s = R / z;  R_in = Σ_terms input_t · (∂f/∂input)ᵀ s

Vector-Jacobian products are taken with ``tf.GradientTape`` inside ``call``. Where a part's
denominator is the layer's own output, the forward pass's ``z`` is used and the recomputed map
only serves its transpose (graph pruning drops it). A part of several terms on one input of a
layer whose every output reads all input channels (:meth:`channel_window`) is one map on the
variants stacked along the channels: one convolution and one transpose, not one per term. A part
with ``fallback`` spreads the relevance of units with a zero denominator over their receptive
field by the inputs' magnitude, evenly where all of them are zero (:meth:`flat`; one channel wide
where :meth:`channel_window` says so, element by element where :meth:`elementwise` does).
"""

import keras
import tensorflow as tf
from keras import ops

from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError, describe
from tf_dtd.relevance import quotient
from tf_dtd.relevance.by_sign import BySignParts
from tf_dtd.relevance.spread import ReceptiveFieldSpread
from tf_dtd.relevance.tape import add_all, after, vjp

__all__ = ["LinearRelevance", "vjp"]


def _dead(denominator, share):
    """Units whose denominator is exactly zero (no contribution to credit) yet hold relevance."""
    return ops.logical_and(ops.equal(denominator, 0), ops.not_equal(share, 0))


# Below this many values per sample a first test for a zero denominator is not worth its ops:
# the shipped digits model (12544 and fewer), z^B batch 8, took 3.6 % longer with it.
ZERO_TEST_MIN_SIZE = 16384


def _unplaced(denominator, share):
    """The relevance of units whose denominator is exactly zero: no contribution to credit."""
    return ops.where(_dead(denominator, share), share, 0.0)


class LinearRelevance(BySignParts, ReceptiveFieldSpread, keras.layers.Layer):
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
    kernel_input_axis = -2  # the kernel's axis of input channels (see channel_window)

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

    def takes_output(self, dtype):
        """Whether a forward output ``z`` of ``dtype`` serves as the plain output (else it is
        computed again in the relevance dtype)."""
        return keras.backend.standardize_dtype(dtype) == self.relevance_dtype

    def reads_output(self, dtype):
        """Whether the relevance call reads the forward output ``z`` (of ``dtype``) it is given
        (see ``reuses_output`` and :attr:`tf_dtd.rules.base.Part.reads_output`)."""
        if not getattr(self, "reuses_output", False) or self.rule is None:
            return False
        if not self.takes_output(dtype):
            return False
        return any(part.reads_output for part in self._parts())

    def reads_output_unit_by_unit(self, dtype):
        """Whether the call reads its output ``z`` each unit for itself and only where the unit
        holds relevance (a denominator; a sign choosing its coefficients, γ), no statistic of
        the sample: where relevance is 0 at every unit with ``z ≤ 0``, ``relu(z)`` then serves
        as ``z`` (see :meth:`sends_zero_where_input_is_zero`)."""
        return self.reads_output(dtype) and not any(
            part.epsilon and part.relative_epsilon for part in self._parts() if part.reads_output)

    def reads_output_as_denominator(self, dtype):
        """Whether the call reads its output ``z`` only as a denominator, unit by unit (no sign
        either): a ``z`` computed again, equal up to rounding, then serves."""
        return self.reads_output_unit_by_unit(dtype) and all(
            part.is_output and part.where is None and part.by_sign is None
            for part in self._parts() if part.reads_output)

    def sends_zero_where_input_is_zero(self):
        """Whether the relevance it sends is 0 wherever its input is: every term a product of
        an input variant of ``x`` (no flat or box term, no spread of lost relevance). A
        subclass that places relevance otherwise than by the engine's parts overrides it."""
        return self.rule is not None and not self.constant_inputs and all(
            not part.fallback and all(t.input in ("x", "x_pos", "x_neg") for t in part.terms)
            for part in self._parts())

    def _parts(self):
        return self.rule.parts(nonnegative_input=self.nonnegative_input,
                               nonnegative_kernel=self.nonnegative_kernel)

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
            if z is not None and self.takes_output(z.dtype):
                # Waiting for the relevance: masks and coefficients made from z alone would
                # otherwise be computed right after the forward pass, and held.
                return after(relevance, z)
            out = self.linear(xs, kernel)
            return out if bias is None else self.add_bias(out, bias)

        parts = self._parts()
        result = None
        output = None
        for part in parts:
            share = relevance
            if part.where is not None:
                output = plain() if output is None else output
                keep = output >= 0 if part.where == "positive" else output < 0
                share = ops.where(keep, relevance, 0.0)
            if part.terms == rules_lib.FLAT_TERMS:
                sent = self._spread_flat(xs, share, constants)
            elif part.by_sign is not None:
                output = plain() if output is None else output
                shared = len(xs) == 1 and self.channel_window(xs[0].shape) is not None
                by_sign = self._by_sign if shared else self._by_sign_apart
                sent = by_sign(part, xs, share, constants, param, kernel, bias, output)
            else:
                reuse = plain() if part.is_output and z is not None else None
                sent = self._part(part, xs, share, constants, param, bias, reuse)
            if part.coefficient != 1:
                sent = [part.coefficient * s for s in sent]
            result = sent if result is None else [r + s for r, s in zip(result, sent)]
        return result if result is not None else [ops.zeros_like(x) for x in xs]

    def _part(self, part, xs, share, constants, param, bias, output):
        variants, forward, gather = self._forward(part, xs, constants, param, bias)
        denominator = {}

        def cotangent(computed):
            den = computed if output is None else output
            if part.epsilon and not part.fallback and quotient.fused_quotient_pays(share):
                return quotient.stabilized_quotient(share, den, part.epsilon,
                                                    part.relative_epsilon)
            den = rules_lib.stabilize(den, part.epsilon, relative=part.relative_epsilon)
            denominator["value"] = den
            return ops.divide_no_nan(share, den)

        variants, _, grads = vjp(forward, variants, cotangent)

        def place():
            return gather([variant * grad for variant, grad in zip(variants, grads)])

        if not part.fallback:
            return place()
        denominator = denominator["value"]
        window = self.channel_window(xs[0].shape) if len(xs) == 1 else None
        if window is not None:
            placed = place()

            def lost_summed():  # over the channels: the spread is one channel wide
                return ops.sum(share * ops.cast(ops.equal(denominator, 0), share.dtype),
                               axis=window[1], keepdims=True)

            def spread(lost):
                return [placed[0] + self._spread_over_window(window, xs[0], lost, constants)]

            if quotient.holds_at_least(denominator, ZERO_TEST_MIN_SIZE):
                # Most layers of most batches have no zero denominator, which one pass over it
                # tells (VGG16 and ResNet50, z^B batch 8: 4 % of the time per call); where it
                # has zeros, their relevance is summed and spread (adding zeros where it held
                # none). One cond: a second one for the sum took 0.5 s more of ResNet50's first
                # call. This branch takes the relevance and the placed products, and holds no
                # more (ResNet50 z^B batch 32, tensors' peak 1768 MiB against 1742 with the sum
                # taken before a cond on it).
                return ops.cond(ops.all(ops.not_equal(denominator, 0)), lambda: placed,
                                lambda: spread(lost_summed()))
            # Small layers: the sum, then a cond on it.
            summed = lost_summed()
            return ops.cond(ops.any(ops.not_equal(summed, 0)), lambda: spread(summed),
                            lambda: placed)
        elementwise = self.elementwise([x.shape for x in xs])
        signs = None if elementwise else self._size_signs(part, xs, constants)
        if signs is not None:
            # The spread by size shares the products with the part's (_spread_unplaced_onto),
            # without a cond: a branch that made them and the spread from the relevance held
            # on to tensors (depthwise convolutions, z^B, batch 32, tensors' peak against
            # gradient×input's: MobileNetV2 1.73 → 1.43×, EfficientNetB0 1.62 → 1.26×; time per
            # batch 8 −3 % / +2 %). Where nothing is lost its terms are zeros: the same bits.
            # (_unplaced's values, two passes fewer: where z = 0 and R = 0 either gives 0.)
            lost = ops.where(ops.equal(denominator, 0), share, 0.0)
            return [self._spread_unplaced_onto(xs[0], list(zip(variants, grads, signs)), lost)]
        dead = _dead(denominator, share)
        spread = self._spread_elementwise if elementwise else self._spread_unplaced
        placed = place()

        def with_unplaced():
            lost = ops.where(dead, share, 0.0)
            return [p + f for p, f in zip(placed, spread(xs, lost, constants))]

        return ops.cond(ops.any(dead), with_unplaced, lambda: placed)

    def _size_signs(self, part, xs, constants):
        """``sign_k`` with ``|x| = Σ_k sign_k · v_k`` over the part's input variants ``v_k`` (in
        ``_forward``'s order) for one input without padding constants, or ``None``."""
        if len(xs) != 1 or self._padding_mask(xs[0], constants) is not None:
            return None
        names = sorted({term.input for term in part.terms})
        if names == ["x"] and self.nonnegative_input:
            return [1.0]
        if names == ["x_neg", "x_pos"]:
            return [-1.0, 1.0]
        return None

    def _forward(self, part, xs, constants, param, bias):
        """The part's input variants (flat list), its map ``forward(*variants) -> z``, and
        ``gather(products)``: the relevance at each of ``xs`` from the products
        ``variant · Jᵀs`` (one per variant)."""
        names = sorted({term.input for term in part.terms})
        variants = [v for name in names for v in self._variant(name, xs, constants)]
        count = len(xs)

        def with_bias(total):
            if part.bias is not None and bias is not None:
                total = self.add_bias(total, param(part.bias))
            return total

        window = self.channel_window(xs[0].shape) if count == 1 else None
        if window is not None and len(part.terms) > 1 and len(names) == len(part.terms):
            return self._stacked(part, names, variants, window[1], param, with_bias)

        def forward(*tensors):
            by_name = {name: list(tensors[i * count:(i + 1) * count])
                       for i, name in enumerate(names)}
            return with_bias(add_all(self.linear(by_name[t.input], param(t.kernel))
                                    for t in part.terms))

        def gather(products):  # every input name gives one variant per input
            return [add_all(products[i::count]) for i in range(count)]

        return variants, forward, gather

    def _stacked(self, part, names, variants, axis, param, with_bias):
        """``_forward`` as one map on the terms' input variants stacked along the channel axis
        (their kernels stacked along the kernel's input axis): one convolution and one
        transpose instead of one per term, for a layer whose every output reads all input
        channels (:meth:`channel_window`). z^B on the pixels: two 3-channel convolutions cost
        about what one 6-channel one does."""
        by_name = dict(zip(names, variants))
        stacked = ops.concatenate([by_name[t.input] for t in part.terms], axis=axis)
        terms, channels = len(part.terms), variants[0].shape[axis]

        def forward(tensor):
            kernel = ops.concatenate([param(t.kernel) for t in part.terms],
                                     axis=self.kernel_input_axis)
            return with_bias(self.linear([tensor], kernel))

        def gather(products):
            product = products[0]
            shape = tf.shape(product)
            split = tf.concat([shape[:axis], [terms, channels], shape[axis + 1:]], 0)
            return [ops.sum(tf.reshape(product, split), axis=axis)]

        return [stacked], forward, gather

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
        for part in self._parts():
            if not part.fallback:
                continue
            variants, forward, _ = self._forward(
                part, xs, constants, lambda key: self.rule.param(key, kernel, bias), bias)
            total = total + _unplaced(forward(*variants), relevance)
        return ops.sum(ops.reshape(total, (ops.shape(total)[0], -1)), axis=1)

    def _variant(self, name, xs, constants):
        if name in constants:
            return [constants[name]]
        if len(xs) == 1:
            return [self.rule.input(name, xs[0], constants)]
        return [self.rule.input(name, x, {}) for x in xs]

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
