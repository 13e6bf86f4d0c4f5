"""LRP and Deep Taylor rules for linear layers: the maths only, no Keras layers.

For a linear layer with inputs ``a_i``, weights ``w_ij``, bias ``b_j`` and relevance ``R_j`` at its
outputs, every rule is "z_ij-style": ``R_i = Σ_j z_ij / z_j · R_j``. "Linear layer" includes the
layers without a kernel of their own — ``Add`` (weights 1), average pooling (1/k), an unfolded
``BatchNormalization`` (a per-channel scale and shift) — so the same rules apply to them.

The Deep Taylor rules (``ZPlus``, ``ZBox``, ``WSquare``, ``Flat``) and the positive part of
``AlphaBeta`` never lose relevance silently: a unit whose denominator is zero — it is driven by its
bias alone, with no contribution the rule could credit — spreads its relevance evenly over its
receptive field, the flat rule of Lapuschkin et al. (2019). LRP-0, ε and γ keep their textbook
form: what the bias or the stabiliser absorbs is reported by ``conservation_report``.

References:
    Bach et al. (2015), "On pixel-wise explanations ... by layer-wise relevance propagation",
    PLoS ONE 10(7). Montavon et al. (2017), "Explaining nonlinear classification decisions with
    deep Taylor decomposition", Pattern Recognition 65, arXiv:1512.02479. Montavon et al. (2019),
    "Layer-wise relevance propagation: an overview", in Explainable AI, LNCS 11700. Lapuschkin et
    al. (2019), "Unmasking Clever Hans predictors", Nature Communications 10, arXiv:1902.10178.
    Anders et al. (2021), "Software for dataset-wide XAI: from local explanations to global
    insights with Zennit, CoRelAy, and ViRelAy", arXiv:2106.13200 (the generalised, sign-aware γ
    as Zennit implements it).
"""

import dataclasses

import numpy as np
from keras import ops

from tf_dtd.boxes import check_broadcastable
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.rules.base import FLAT_TERMS, Part, Rule, Term

__all__ = ["Z", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "WSquare", "Flat"]


def _positive(rule, k, b):
    return ops.maximum(k, 0)


def _negative(rule, k, b):
    return ops.minimum(k, 0)


def _positive_terms(nonnegative_input, nonnegative_kernel):
    """(a·w)⁺ = a⁺w⁺ + a⁻w⁻: the terms of z⁺, fewer when a ≥ 0 or w ≥ 0."""
    if nonnegative_kernel:
        return (Term("x" if nonnegative_input else "x_pos", "w"),)
    if nonnegative_input:
        return (Term("x", "w_pos"),)
    return Term("x_pos", "w_pos"), Term("x_neg", "w_neg")


def _negative_terms(nonnegative_input, nonnegative_kernel):
    """(a·w)⁻ = a⁺w⁻ + a⁻w⁺: the terms of the negative contributions."""
    if nonnegative_kernel:
        return () if nonnegative_input else (Term("x_neg", "w"),)
    if nonnegative_input:
        return (Term("x", "w_neg"),)
    return Term("x_pos", "w_neg"), Term("x_neg", "w_pos")


@dataclasses.dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-ε: ``z_ij = a_i w_ij``, ``z_j = Σ_i z_ij + b_j + ε·sign(z_j)`` (Bach et al., 2015).

    Args:
        epsilon: the stabiliser ε ≥ 0.
        relative: ε is relative to each sample's root mean square of ``z_j`` in the layer
            (``epsilon=0.25, relative=True`` is the LRP tutorial's "0.25·std").

    Example:
        >>> tf_dtd.rules.Epsilon(1e-3)
        Epsilon(epsilon=0.001, relative=False)
    """

    epsilon: float = 1e-6
    relative: bool = False

    _params = {"w": lambda rule, k, b: k, "b": lambda rule, k, b: b}

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise InvalidArgumentError(
                f"Epsilon needs epsilon >= 0. Received: epsilon={self.epsilon}"
            )

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        return (Part((Term("x", "w"),), bias="b", epsilon=self.epsilon,
                     relative_epsilon=self.relative, is_output=True),)


@dataclasses.dataclass(frozen=True)
class Z(Epsilon):
    """LRP-0: ``z_ij = a_i w_ij``, ``z_j = Σ_i z_ij + b_j``. Equals gradient×input on ReLU nets."""

    epsilon: float = dataclasses.field(default=0.0, init=False, repr=False)
    relative: bool = dataclasses.field(default=False, init=False, repr=False)

    def get_config(self):
        return {}


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """Generalised LRP-γ: favour the contributions that agree with the unit's output.

    Where the plain output ``z_j = Σ_i a_i w_ij + b_j`` is ≥ 0,
    ``z_ij = a⁺_i (w_ij + γ w⁺_ij) + a⁻_i (w_ij + γ w⁻_ij)`` and the bias is ``b_j + γ b⁺_j``;
    where ``z_j < 0``, ``z_ij = a⁺_i (w_ij + γ w⁻_ij) + a⁻_i (w_ij + γ w⁺_ij)`` and the bias is
    ``b_j + γ b⁻_j``. The denominator then never changes sign against ``z_j`` (it is
    ``z_j + γ·(Σ_i (a_i w_ij)^± + b^±_j)``). For inputs ≥ 0 and ``z_j ≥ 0`` this is the classic
    ``a_i (w_ij + γ w⁺_ij)`` of Montavon et al. (2019); γ = 0 is LRP-0.

    Args:
        gamma: γ ≥ 0.

    Example:
        >>> tf_dtd.rules.Gamma(0.25)
        Gamma(gamma=0.25)
    """

    gamma: float = 0.25

    _params = {
        "w": lambda rule, k, b: k,
        "w_pos": _positive,
        "w_agree_pos": lambda rule, k, b: k + rule.gamma * ops.maximum(k, 0),
        "w_agree_neg": lambda rule, k, b: k + rule.gamma * ops.minimum(k, 0),
        "b_agree_pos": lambda rule, k, b: b + rule.gamma * ops.maximum(b, 0),
        "b_agree_neg": lambda rule, k, b: b + rule.gamma * ops.minimum(b, 0),
    }

    def __post_init__(self):
        if not self.gamma >= 0:
            raise InvalidArgumentError(f"Gamma needs gamma >= 0. Received: gamma={self.gamma}")

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        if self.gamma == 0:  # LRP-0 exactly (and as cheaply)
            return (Part((Term("x", "w_agree_pos"),), bias="b_agree_pos", is_output=True),)
        if nonnegative_input:
            # a·(w + γw⁺) = a·w + γ·a·w⁺ and a·(w + γw⁻) = (1 + γ)·a·w − γ·a·w⁺: a·w is the
            # forward pass's, so one extra convolution serves both signs.
            g = self.gamma
            return (Part((Term("x", "w"), Term("x", "w_pos")),
                         by_sign=((1.0, g), (1.0 + g, -g), ("b_agree_pos", "b_agree_neg"))),)
        positive = Term("x_pos", "w_agree_pos"), Term("x_neg", "w_agree_neg")
        negative = Term("x_pos", "w_agree_neg"), Term("x_neg", "w_agree_pos")
        return (Part(positive, bias="b_agree_pos", where="positive"),
                Part(negative, bias="b_agree_neg", where="negative"))


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: positive and negative contributions, each with its own denominator.

    ``R_i = Σ_j (α (a_i w_ij)⁺ / z⁺_j − β (a_i w_ij)⁻ / z⁻_j) R_j`` with
    ``z⁺_j = Σ_i (a_i w_ij)⁺ + b⁺_j``, ``z⁻_j = Σ_i (a_i w_ij)⁻ + b⁻_j``; for signed inputs
    ``(a w)⁺ = a⁺w⁺ + a⁻w⁻`` and ``(a w)⁻ = a⁺w⁻ + a⁻w⁺``. ``b⁺`` goes only into the positive
    and ``b⁻`` only into the negative denominator and absorbs its share; a part with a zero
    denominator contributes nothing (never NaN) — Bach et al.'s (2015) form, which loses
    relevance to the biases and, for β > 0, can create it. With ``bias=False`` the biases are
    ignored, as Deep Taylor's z⁺ does, and a part without contributions spreads its share
    (``α·R`` or ``−β·R``) flat over the receptive field: the rule then conserves relevance, and
    α1β0 is z⁺ (Montavon et al., 2017). Needs ``α − β = 1``.

    Args:
        alpha: weight of the positive part, ≥ 1.
        beta: weight of the negative part, ≥ 0, ``alpha - beta == 1``.
        bias: whether the biases enter the denominators.

    Example:
        >>> tf_dtd.rules.AlphaBeta(2.0, 1.0)
        AlphaBeta(alpha=2.0, beta=1.0, bias=True)
    """

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = True

    _params = {"w": lambda rule, k, b: k, "w_pos": _positive, "w_neg": _negative,
               "b_pos": lambda rule, k, b: ops.maximum(b, 0),
               "b_neg": lambda rule, k, b: ops.minimum(b, 0)}

    def __post_init__(self):
        if not (self.beta >= 0 and abs(self.alpha - self.beta - 1) <= 1e-9):
            raise InvalidArgumentError(
                "AlphaBeta needs alpha - beta == 1 and beta >= 0. "
                f"Received: alpha={self.alpha}, beta={self.beta}"
            )

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        conserving = not self.bias
        positive = Part(_positive_terms(nonnegative_input, nonnegative_kernel),
                        bias="b_pos" if self.bias else None, coefficient=self.alpha,
                        fallback=conserving)
        negative_terms = _negative_terms(nonnegative_input, nonnegative_kernel)
        if self.beta == 0 or not (negative_terms or conserving):
            return (positive,)
        negative = Part(negative_terms or FLAT_TERMS, bias="b_neg" if self.bias else None,
                        coefficient=-self.beta, fallback=conserving)
        return positive, negative


@dataclasses.dataclass(frozen=True)
class ZPlus(Rule):
    """Deep Taylor z⁺: ``z_ij = (a_i w_ij)⁺ = a⁺_i w⁺_ij + a⁻_i w⁻_ij``, bias ignored.

    For inputs ≥ 0 (after a ReLU) this is the seed's ``a_i w⁺_ij``; for signed inputs the
    relevance still stays positive. On an ``Add`` or average pooling (weights ≥ 0) it shares
    relevance in proportion to the positive inputs, on an unfolded BatchNorm it passes it through.
    A unit without positive contributions spreads its relevance flat over its receptive field.
    """

    _params = {"w": lambda rule, k, b: k, "w_pos": _positive, "w_neg": _negative}

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        return (Part(_positive_terms(nonnegative_input, nonnegative_kernel), fallback=True),)


@dataclasses.dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """Deep Taylor z^B for inputs in a box: ``z_ij = a_i w_ij − l_i w⁺_ij − h_i w⁻_ij``.

    Meant for the first layer, with pixels in ``[low, high]``. ``low`` and ``high`` are scalars or
    arrays broadcastable to one input sample (per channel, or per pixel). Relevance is ≥ 0 for
    inputs inside the box; bias ignored. A unit whose inputs all sit at the bound that minimises
    it spreads its relevance flat.

    Args:
        low: the smallest value every input can take.
        high: the largest value every input can take; ``high > low`` everywhere.

    Example:
        >>> tf_dtd.rules.ZBox(0.0, 1.0)
        ZBox(low=0.0, high=1.0)
    """

    low: object
    high: object

    _params = {"w": lambda rule, k, b: k, "w_pos": _positive, "w_neg": _negative}

    def __post_init__(self):
        low = np.asarray(self.low, dtype="float64")
        high = np.asarray(self.high, dtype="float64")
        try:
            low_b, high_b = np.broadcast_arrays(low, high)
        except ValueError:
            raise InvalidArgumentError(
                "ZBox needs low and high of broadcastable shapes. "
                f"Received: low.shape={low.shape}, high.shape={high.shape}"
            ) from None
        if not np.all(np.isfinite(low_b)) or not np.all(np.isfinite(high_b)):
            raise InvalidArgumentError("ZBox needs finite low and high.")
        if np.any(low_b >= high_b):
            raise InvalidArgumentError(
                "ZBox needs low < high everywhere. "
                f"Received: low={_short(self.low)}, high={_short(self.high)}"
            )
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        # (a − l)·w⁺ + (a − h)·w⁻: each term is >= 0 inside the box, also in float arithmetic.
        if nonnegative_kernel:
            return (Part((Term("x_minus_low", "w"),), fallback=True),)
        return (Part((Term("x_minus_low", "w_pos"), Term("x_minus_high", "w_neg")),
                     fallback=True),)

    def input(self, name, x, constants=None):
        constants = constants or {}
        if name in ("low", "high"):
            if name in constants:
                return constants[name]
            return ops.broadcast_to(ops.cast(getattr(self, name), x.dtype), ops.shape(x))
        if name == "x_minus_low":
            return x - self.input("low", x, constants)
        if name == "x_minus_high":
            return x - self.input("high", x, constants)
        return super().input(name, x, constants)

    def check_input_shape(self, sample_shape):
        for name in ("low", "high"):
            check_broadcastable(getattr(self, name).shape, sample_shape, f"ZBox.{name}")

    def input_constants(self):
        return {"low": self.low, "high": self.high}

    def get_config(self):
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    def __eq__(self, other):
        return (type(other) is ZBox and np.array_equal(self.low, other.low)
                and np.array_equal(self.high, other.high))

    def __hash__(self):
        return hash((self.low.tobytes(), self.high.tobytes()))

    def __repr__(self):
        return f"ZBox(low={_short(self.low)}, high={_short(self.high)})"


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """Deep Taylor w² for unbounded inputs: ``z_ij = w_ij²``, bias ignored.

    ``Σ_i`` runs over the inputs that feed output ``j`` (zero padding does not count).
    """

    _params = {"w_square": lambda rule, k, b: ops.square(k)}

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        return (Part((Term("ones", "w_square"),), fallback=True),)

    def input_constants(self):
        return {"ones": np.ones(())}


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """Flat: ``z_ij = 1``, ``z_j = Σ_i 1``: relevance spread evenly over the receptive field.

    ``Σ_i`` runs over the inputs that feed output ``j`` (zero padding does not count).
    Lapuschkin et al. (2019).
    """

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        return (Part(FLAT_TERMS),)

    def input_constants(self):
        return {"ones": np.ones(())}


def _short(value):
    array = np.asarray(value)
    return repr(array.item()) if array.ndim == 0 else f"<array of shape {array.shape}>"
