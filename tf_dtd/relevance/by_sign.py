"""Parts whose coefficients follow the sign of the layer's plain output (``Part.by_sign``).

The generalised γ on inputs known to be ≥ 0 is one such part: ``a·(w + γw⁺)`` where
``z_j ≥ 0`` and ``a·(w + γw⁻)`` where ``z_j < 0``, written ``c_t · f(a, k_t)`` over the terms
``a·w`` (read from the forward pass) and ``a·w⁺`` with per-sign coefficients ``c⁺``, ``c⁻``.
:class:`BySignParts` is the mixin of :class:`~tf_dtd.relevance.engine.LinearRelevance` that
evaluates them: terms shared by both signs where every output reads all input channels
(:meth:`~BySignParts._by_sign`), one map per sign on its combined kernel elsewhere
(:meth:`~BySignParts._by_sign_apart`). Where no unit with ``z_j < 0`` holds relevance — behind a
ReLU whose next rule is proportional to its inputs, their activation is 0 — the negative sign's
transposes are skipped (a ``cond``): one transpose, of ``Σ_t c⁺_t k_t``, instead of one per
term (VGG16 γbox, batch 8: 24 % faster), and its denominator takes the positive coefficients as
scalars, with no per-unit masks; where no unit is negative at all (the output read as
``relu(z)``), one pass over it decides (VGG16 γbox, batch 8: another 7 %).
"""

from keras import ops

from tf_dtd import rules as rules_lib
from tf_dtd.relevance.tape import add_all, vjp

__all__ = ["BySignParts"]


def _any_share(units, share):
    """Whether any of ``units`` (a boolean mask) holds finite, nonzero relevance.

    The branch is one for the whole batch, and the two branches round differently: a sample
    made of NaN or Inf (whose units all count as z < 0, and whose shares are not finite) must
    not switch it, or the other samples' heatmaps would change in their last bits. Its own
    heatmap stays non-finite either way: its shares reach its inputs through either transpose.
    Where no unit is in ``units`` (the output read as ``relu(z)``) one pass decides; ``|s| < ∞``
    rather than ``isfinite``, which TensorFlow's CPU kernel runs several times slower.
    """
    def look():
        magnitude = ops.abs(share)
        held = ops.logical_and(ops.greater(magnitude, 0), ops.less(magnitude, float("inf")))
        return ops.any(ops.logical_and(units, held))

    return ops.cond(ops.any(units), look, lambda: ops.convert_to_tensor(False))


class BySignParts:
    """Mixin: ``by_sign`` parts. Needs the host's ``linear``, ``add_bias``, ``_variant`` and
    ``_part`` (:class:`~tf_dtd.relevance.engine.LinearRelevance`)."""

    def _by_sign(self, part, xs, share, constants, param, kernel, bias, output):
        """A part with ``by_sign`` (see :class:`tf_dtd.rules.base.Part`): coefficients and bias
        chosen per unit by the sign of the plain ``output``; the plain term from the forward."""
        positive_coefficients, negative_coefficients, bias_keys = part.by_sign
        positive = output >= 0
        names = sorted({term.input for term in part.terms})
        variants = {name: self._variant(name, xs, constants) for name in names}
        plain = output if bias is None else self.add_bias(output, -bias)
        terms = [plain if t.input == "x" and param(t.kernel) is kernel
                 else self.linear(variants[t.input], param(t.kernel)) for t in part.terms]
        biases = [None if bias is None else param(key) for key in bias_keys]  # outside the cond

        def per_term():
            # One transpose per term, its coefficient on the cotangent: a product inside the
            # tape would take the map's output shape, and where the batch size is unknown (a
            # model traced for two batch sizes) that shape keeps the map from being pruned.
            coefficients = [ops.where(positive, p, n)
                            for p, n in zip(positive_coefficients, negative_coefficients)]
            total = add_all(c * term for c, term in zip(coefficients, terms))
            if bias is not None:
                total = ops.where(positive, self.add_bias(total, biases[0]),
                                  self.add_bias(total, biases[1]))
            quotient = ops.divide_no_nan(share, total)
            products = []
            for t, c in zip(part.terms, coefficients):
                inputs, _, grads = vjp(lambda *v, k=param(t.kernel): self.linear(list(v), k),
                                       variants[t.input], c * quotient)
                products.append([v * g for v, g in zip(inputs, grads)])
            return [add_all(per_input) for per_input in zip(*products)]

        if len(names) > 1:
            return per_term()

        def positive_only():
            # Every unit with relevance has z ≥ 0: the positive sign's denominator (scalar
            # coefficients, no masks) and one transpose, of Σ_t c⁺_t · k_t.
            total = add_all(term if c == 1 else c * term
                            for c, term in zip(positive_coefficients, terms))
            if bias is not None:
                total = self.add_bias(total, biases[0])
            combined = add_all(c * param(t.kernel)
                               for t, c in zip(part.terms, positive_coefficients))
            inputs, _, grads = vjp(lambda *v: self.linear(list(v), combined),
                                   variants[names[0]], ops.divide_no_nan(share, total))
            return [v * g for v, g in zip(inputs, grads)]

        # Behind a ReLU whose next rule is proportional to its inputs, units with z < 0 get no
        # relevance (their activation is 0): their sign's transpose is then skipped.
        return ops.cond(_any_share(ops.logical_not(positive), share), per_term, positive_only)

    def _by_sign_apart(self, part, xs, share, constants, param, kernel, bias, output):
        """A ``by_sign`` part as one part per sign, each on its combined kernel ``Σ_t c_t·k_t``
        (the terms read one input variant): where a map costs less than the element-wise work
        of sharing it (depthwise and grouped convolutions, maps of several inputs; MobileNetV2
        γ, batch 8: 0.16 s like this, 0.19–0.20 s shared)."""
        (name,) = {term.input for term in part.terms}
        kernels = [param(t.kernel) for t in part.terms]  # made outside the cond's branches
        biases = [param(key) if bias is not None else None for key in part.by_sign[2]]

        def signs(count):
            result = None
            for coefficients, modified_bias, keep in list(zip(
                    part.by_sign[:2], biases, (output >= 0, output < 0)))[:count]:
                combined = {"kernel": add_all(c * k for k, c in zip(kernels, coefficients)),
                            "bias": modified_bias}
                sent = self._part(
                    rules_lib.Part((rules_lib.Term(name, "kernel"),), bias="bias"), xs,
                    ops.where(keep, share, 0.0) if count > 1 else share, constants,
                    combined.get, bias, None)
                result = sent if result is None else [r + s for r, s in zip(result, sent)]
            return result

        # Units with z < 0 and no relevance (behind a ReLU): the positive sign's part alone.
        return ops.cond(_any_share(output < 0, share), lambda: signs(2), lambda: signs(1))
