"""LRP and Deep Taylor rules for linear layers: the maths only, no Keras layers.

Every rule is "z_ij-style": for a linear layer with inputs ``a_i``, weights ``w_ij`` and
relevance ``R_j`` at its outputs,

    R_i = sum_j  z_ij / z_j * R_j.

A rule says which contributions ``z_ij`` it uses, as one or more :class:`Part` objects. Each part
is a sum of :class:`Term` objects, a term being the layer's linear map applied with a *modified
kernel* to a *variant of the input* (``a``, ``a⁺``, ``a⁻``, ones, or the box bounds of z^B). The
generic engine in :mod:`tf_dtd.layers` evaluates a part with the gradient trick

    z = Σ_terms f(input_t, kernel_t) (+ bias);  s = R / z;  R_in = Σ_terms input_t · (∂f/∂input)ᵀ s

and adds the parts with their coefficients (α and −β for α-β). Modified kernels are computed once,
in NumPy, when the relevance model is built (:meth:`Rule.params`).

References:
    Bach et al. (2015), "On pixel-wise explanations ... by layer-wise relevance propagation",
    PLoS ONE 10(7). Montavon et al. (2017), "Explaining nonlinear classification decisions with
    deep Taylor decomposition", Pattern Recognition 65, arXiv:1512.02479.
"""

import dataclasses

import numpy as np
from keras import ops

from tf_dtd.boxes import check_broadcastable
from tf_dtd.errors import InvalidArgumentError

__all__ = [
    "Rule", "Part", "Term", "Z", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "WSquare",
    "Flat", "Pass", "stabilize",
]

_RULES = {}


def stabilize(z, epsilon, *, relative=False):
    """Push ``z`` away from zero by ``epsilon`` keeping its sign; zero counts as positive.

    With ``relative=True`` the push is ``epsilon`` times each sample's root mean square of ``z``
    (the LRP tutorial's "0.25·std" stabiliser), so it scales with the layer's activations.
    With ``epsilon=0`` this is the identity. Divisions by a stabilised denominator use
    ``divide_no_nan``, so a denominator that is still exactly zero contributes zero relevance.
    """
    if epsilon == 0:
        return z
    if relative:
        axes = tuple(range(1, len(z.shape)))
        # m·RMS(z/m) with m = max|z|: squaring z itself overflows (or underflows) float32.
        peak = ops.max(ops.abs(z), axis=axes, keepdims=True)
        scaled = ops.divide_no_nan(z, peak)
        epsilon = epsilon * peak * ops.sqrt(ops.mean(ops.square(scaled), axis=axes,
                                                      keepdims=True))
    return z + epsilon * (ops.cast(z >= 0, z.dtype) * 2 - 1)


@dataclasses.dataclass(frozen=True)
class Term:
    """One contribution ``f(input, kernel)`` to a denominator ``z_j``.

    ``input`` names a variant of the layer input: ``"x"``, ``"x_pos"`` (a⁺), ``"x_neg"`` (a⁻),
    ``"ones"``, or a rule-specific one such as z^B's ``"low"`` and ``"high"``. ``kernel`` is a key
    of :meth:`Rule.params`.
    """

    input: str
    kernel: str


@dataclasses.dataclass(frozen=True)
class Part:
    """A sum of terms with its own denominator: ``R_in += coefficient · Σ_t input_t · Jᵀ s``.

    ``bias`` is a key of :meth:`Rule.params` added to the denominator, or ``None``.
    ``epsilon`` and ``relative_epsilon`` stabilise the denominator (see :func:`stabilize`).
    """

    terms: tuple
    bias: str = None
    coefficient: float = 1.0
    epsilon: float = 0.0
    relative_epsilon: bool = False


class Rule:
    """Base class: a frozen set of hyper-parameters plus the maths of one propagation rule."""

    def params(self, kernel, bias):
        """Modified kernels and biases (NumPy float arrays), keyed as the terms refer to them."""
        raise NotImplementedError

    def parts(self, *, nonnegative_input=False):
        """The :class:`Part` objects of the rule.

        ``nonnegative_input=True`` promises that the layer input is ≥ 0 (e.g. after a ReLU), so
        terms on ``a⁻`` vanish and may be left out; the result is the same, only cheaper.
        """
        raise NotImplementedError

    def input(self, name, x):
        """The input variant called ``name`` for a batch ``x``."""
        if name == "x":
            return x
        if name == "x_pos":
            return ops.maximum(x, 0)
        if name == "x_neg":
            return ops.minimum(x, 0)
        if name == "ones":
            return ops.ones_like(x)
        raise InvalidArgumentError(
            f"{type(self).__name__} has no input variant {name!r}. "
            "Expected one of 'x', 'x_pos', 'x_neg', 'ones'."
        )

    def check_input_shape(self, sample_shape):
        """Raise if the rule cannot be applied to inputs of one sample's ``sample_shape``."""

    def input_constants(self):
        """Input variants that are constants of the model input, by name (NumPy arrays).

        For a layer that reads the pixels (possibly through padding, reshaping or pooling), the
        rewriter broadcasts each constant to the model input, carries it through those layers and
        passes it to the relevance layer instead of :meth:`input`. Zero padding thus gets the box
        ``[0, 0]`` under z^B and a zero in w²'s all-ones mask: padding is not an input.
        """
        return {}

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _RULES[_registered_name(cls)] = cls


def _registered_name(cls):
    """Built-in rules by their name; user rules by module and name, so they cannot shadow them."""
    return cls.__name__ if cls.__module__ == __name__ else f"{cls.__module__}>{cls.__qualname__}"


def serialize(rule):
    """A JSON-friendly dict that :func:`deserialize` turns back into the rule."""
    return {"class_name": _registered_name(type(rule)), "config": rule.get_config()}


def deserialize(config):
    """Rebuild a rule from :func:`serialize`'s output (also for user-defined subclasses)."""
    try:
        cls = _RULES[config["class_name"]]
    except KeyError:
        raise InvalidArgumentError(
            f"Unknown rule class {config['class_name']!r}. Known: {sorted(_RULES)}."
        ) from None
    return cls.from_config(config["config"])


def _with_bias(bias, **params):
    if bias is not None:
        params["b"] = bias
    return params


def _positive_terms(nonnegative_input):
    """(a·w)⁺ = a⁺w⁺ + a⁻w⁻: the terms of z⁺; only the first when a ≥ 0."""
    terms = (Term("x", "w_pos"),) if nonnegative_input else (
        Term("x_pos", "w_pos"), Term("x_neg", "w_neg"))
    return terms


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

    def __post_init__(self):
        if not self.epsilon >= 0:
            raise InvalidArgumentError(
                f"Epsilon needs epsilon >= 0. Received: epsilon={self.epsilon}"
            )

    def params(self, kernel, bias):
        return _with_bias(bias, w=kernel)

    def parts(self, *, nonnegative_input=False):
        return (Part((Term("x", "w"),), bias="b", epsilon=self.epsilon,
                     relative_epsilon=self.relative),)


@dataclasses.dataclass(frozen=True)
class Z(Epsilon):
    """LRP-0: ``z_ij = a_i w_ij``, ``z_j = Σ_i z_ij + b_j``. Equals gradient×input on ReLU nets."""

    epsilon: float = dataclasses.field(default=0.0, init=False, repr=False)
    relative: bool = dataclasses.field(default=False, init=False, repr=False)

    def get_config(self):
        return {}


@dataclasses.dataclass(frozen=True)
class Gamma(Rule):
    """LRP-γ: ``z_ij = a_i (w_ij + γ w⁺_ij)``, ``z_j = Σ_i z_ij + b_j + γ b⁺_j``.

    Favours positive contributions, for lower convolutions (Montavon et al., 2019); γ = 0 is
    LRP-0. The modification is on the weights only: for a negative input ``a_i < 0`` the
    boosted ``w⁺`` makes its (negative) contribution larger too, so on signed inputs γ boosts
    the positive *weights*, not the positive *contributions*.

    Args:
        gamma: γ ≥ 0.
    """

    gamma: float = 0.25

    def __post_init__(self):
        if not self.gamma >= 0:
            raise InvalidArgumentError(f"Gamma needs gamma >= 0. Received: gamma={self.gamma}")

    def params(self, kernel, bias):
        params = {"w_gamma": kernel + self.gamma * np.maximum(kernel, 0)}
        if bias is not None:
            params["b_gamma"] = bias + self.gamma * np.maximum(bias, 0)
        return params

    def parts(self, *, nonnegative_input=False):
        return (Part((Term("x", "w_gamma"),), bias="b_gamma"),)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-αβ: positive and negative contributions, each with its own denominator.

    ``R_i = Σ_j (α (a_i w_ij)⁺ / z⁺_j − β (a_i w_ij)⁻ / z⁻_j) R_j`` with
    ``z⁺_j = Σ_i (a_i w_ij)⁺ + b⁺_j``, ``z⁻_j = Σ_i (a_i w_ij)⁻ + b⁻_j``; for signed inputs
    ``(a w)⁺ = a⁺w⁺ + a⁻w⁻`` and ``(a w)⁻ = a⁺w⁻ + a⁻w⁺``. ``b⁺`` goes only into the positive
    and ``b⁻`` only into the negative denominator. A part without contributions gives no
    relevance (never NaN). Needs ``α − β = 1`` (Bach et al., 2015).

    Args:
        alpha: weight of the positive part, ≥ 1.
        beta: weight of the negative part, ≥ 0, ``alpha - beta == 1``.
    """

    alpha: float = 1.0
    beta: float = 0.0

    def __post_init__(self):
        if not (self.beta >= 0 and abs(self.alpha - self.beta - 1) <= 1e-9):
            raise InvalidArgumentError(
                "AlphaBeta needs alpha - beta == 1 and beta >= 0. "
                f"Received: alpha={self.alpha}, beta={self.beta}"
            )

    def params(self, kernel, bias):
        params = {"w_pos": np.maximum(kernel, 0), "w_neg": np.minimum(kernel, 0)}
        if bias is not None:
            params.update(b_pos=np.maximum(bias, 0), b_neg=np.minimum(bias, 0))
        return params

    def parts(self, *, nonnegative_input=False):
        positive = Part(_positive_terms(nonnegative_input), bias="b_pos", coefficient=self.alpha)
        if self.beta == 0:
            return (positive,)
        negative_terms = (Term("x", "w_neg"),) if nonnegative_input else (
            Term("x_pos", "w_neg"), Term("x_neg", "w_pos"))
        return (positive, Part(negative_terms, bias="b_neg", coefficient=-self.beta))


@dataclasses.dataclass(frozen=True)
class ZPlus(Rule):
    """Deep Taylor z⁺: ``z_ij = (a_i w_ij)⁺ = a⁺_i w⁺_ij + a⁻_i w⁻_ij``, bias ignored.

    For inputs ≥ 0 (after a ReLU) this is the seed's ``a_i w⁺_ij``; for signed inputs the
    relevance still stays positive. Conserves relevance wherever ``z_j > 0``.
    """

    def params(self, kernel, bias):
        return {"w_pos": np.maximum(kernel, 0), "w_neg": np.minimum(kernel, 0)}

    def parts(self, *, nonnegative_input=False):
        return (Part(_positive_terms(nonnegative_input)),)


@dataclasses.dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """Deep Taylor z^B for inputs in a box: ``z_ij = a_i w_ij − l_i w⁺_ij − h_i w⁻_ij``.

    Meant for the first layer, with pixels in ``[low, high]``. ``low`` and ``high`` are scalars or
    arrays broadcastable to one input sample (per channel, or per pixel). Relevance is ≥ 0 for
    inputs inside the box; bias ignored.

    Args:
        low: the smallest value every input can take.
        high: the largest value every input can take; ``high > low`` everywhere.

    Example:
        >>> tf_dtd.rules.ZBox(0.0, 1.0)
        ZBox(low=0.0, high=1.0)
    """

    low: object
    high: object

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

    def params(self, kernel, bias):
        return {
            "w": kernel,
            "minus_w_pos": -np.maximum(kernel, 0),
            "minus_w_neg": -np.minimum(kernel, 0),
        }

    def parts(self, *, nonnegative_input=False):
        terms = (Term("x", "w"), Term("low", "minus_w_pos"), Term("high", "minus_w_neg"))
        return (Part(terms),)

    def input(self, name, x):
        if name in ("low", "high"):
            bound = ops.cast(getattr(self, name), x.dtype)
            return ops.broadcast_to(bound, ops.shape(x))
        return super().input(name, x)

    def check_input_shape(self, sample_shape):
        for name in ("low", "high"):
            check_broadcastable(getattr(self, name).shape, sample_shape, f"ZBox.{name}")

    def input_constants(self):
        return {"low": self.low, "high": self.high}

    def get_config(self):
        return {"low": self.low.tolist(), "high": self.high.tolist()}

    def __repr__(self):
        return f"ZBox(low={_short(self.low)}, high={_short(self.high)})"


@dataclasses.dataclass(frozen=True)
class WSquare(Rule):
    """Deep Taylor w² for unbounded inputs: ``z_ij = w_ij²``, bias ignored.

    ``Σ_i`` runs over the inputs that feed output ``j`` (zero padding does not count).
    """

    def params(self, kernel, bias):
        return {"w_square": np.square(kernel)}

    def parts(self, *, nonnegative_input=False):
        return (Part((Term("ones", "w_square"),)),)

    def input_constants(self):
        return {"ones": np.ones(())}


@dataclasses.dataclass(frozen=True)
class Flat(Rule):
    """Flat: ``z_ij = 1``, ``z_j = Σ_i 1``: relevance spread evenly over the receptive field.

    ``Σ_i`` runs over the inputs that feed output ``j`` (zero padding does not count).
    """

    def params(self, kernel, bias):
        return {"ones": np.ones_like(kernel)}

    def parts(self, *, nonnegative_input=False):
        return (Part((Term("ones", "ones"),)),)

    def input_constants(self):
        return {"ones": np.ones(())}


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Pass: relevance goes through the layer unchanged (only for layers that keep the shape)."""

    def params(self, kernel, bias):
        return {}

    def parts(self, *, nonnegative_input=False):
        return ()


def _short(value):
    array = np.asarray(value)
    return repr(array.item()) if array.ndim == 0 else f"<array of shape {array.shape}>"
