"""What every rule is made of: parts, terms, the stabiliser, and (de)serialisation.

A linear rule says which contributions ``z_ij`` it uses as one or more :class:`Part` objects. A
part is a sum of :class:`Term` objects, a term being the layer's linear map applied with a
*modified kernel* to a *variant of the input* (``a``, ``a⁺``, ``a⁻``, ones, or the box bounds of
z^B). The engine in :mod:`tf_dtd.relevance.layers` evaluates a part with the gradient trick

    z = Σ_terms f(input_t, kernel_t) (+ bias);  s = R / z;  R_in = Σ_terms input_t · (∂f/∂input)ᵀ s

and adds the parts with their coefficients (α and −β for α-β). Modified kernels are computed from
the layer's own kernel on the fly (:meth:`Rule.param`), so no second copy of the weights is kept.
"""

import dataclasses

from keras import ops

from tf_dtd.errors import InvalidArgumentError

__all__ = ["Rule", "Part", "Term", "stabilize", "serialize", "deserialize", "FLAT_TERMS"]

_RULES = {}


def stabilize(z, epsilon, *, relative=False):
    """Push ``z`` away from zero by ``epsilon`` keeping its sign; zero counts as positive.

    With ``relative=True`` the push is ``epsilon`` times each sample's root mean square of ``z``
    (the LRP tutorial's "0.25·std"), so it scales with the layer's activations. With
    ``epsilon=0`` this is the identity. Divisions by a stabilised denominator use
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
    epsilon = ops.cast(epsilon, z.dtype)
    # sign(sign(z) + 1/2) is +1 for z >= 0 (−0.0 too) and −1 below: bit for bit the select
    # ``where(z >= 0, ε, −ε)``, which TensorFlow's CPU kernel runs several times slower.
    return z + epsilon * ops.sign(ops.sign(z) + 0.5)


@dataclasses.dataclass(frozen=True)
class Term:
    """One contribution ``f(input, kernel)`` to a denominator ``z_j``.

    ``input`` names a variant of the layer input: ``"x"``, ``"x_pos"`` (a⁺), ``"x_neg"`` (a⁻),
    ``"ones"``, or a rule-specific one such as z^B's ``"low"`` and ``"high"``. ``kernel`` names
    a modified kernel (see :meth:`Rule.param`).
    """

    input: str
    kernel: str


# z_ij = 1 over the receptive field: the engine computes it from the layer's geometry.
FLAT_TERMS = (Term("ones", "ones"),)


@dataclasses.dataclass(frozen=True)
class Part:
    """A sum of terms with its own denominator: ``R_in += coefficient · Σ_t input_t · Jᵀ s``.

    Attributes:
        terms: the :class:`Term` objects.
        bias: the modified bias added to the denominator (a :meth:`Rule.param` key), or None.
        coefficient: the weight of the part (α, −β).
        epsilon, relative_epsilon: the stabiliser of the denominator (see :func:`stabilize`).
        where: ``"positive"`` / ``"negative"``: the part carries only the relevance of units
            whose plain output ``z_j`` is ≥ 0 / < 0 (the sign-aware γ); ``None``: all units.
        fallback: units whose denominator is zero spread their relevance evenly over their
            receptive field (a unit driven by its bias alone) instead of losing it.
        is_output: the denominator is the layer's own output ``z_j`` (the plain map with its own
            bias), which the forward pass already computed.
        by_sign: ``((c⁺_1, …), (c⁻_1, …), (bias⁺, bias⁻))`` or None: the contributions are
            ``c_t · f(input_t, kernel_t)`` with the coefficients ``c⁺`` where the plain output
            ``z_j`` is ≥ 0 and ``c⁻`` where it is < 0, and the bias key ``bias⁺`` / ``bias⁻``
            likewise (``bias`` is then unused). Where every output reads all input channels, a
            term of the plain input and kernel is read from the forward pass (``z_j − b_j``), so
            only the other terms cost a convolution; elsewhere (depthwise, several inputs; the
            terms then read one input variant) each sign is one map on ``Σ_t c_t·kernel_t``.
    """

    terms: tuple
    bias: str = None
    coefficient: float = 1.0
    epsilon: float = 0.0
    relative_epsilon: bool = False
    where: str = None
    fallback: bool = False
    is_output: bool = False
    by_sign: tuple = None

    @property
    def reads_output(self):
        """Whether the part reads the layer's plain output ``z_j``: as its denominator, or for
        its sign (``where``, ``by_sign``)."""
        return self.is_output or self.where is not None or self.by_sign is not None


class Rule:
    """Base class: a frozen set of hyper-parameters plus the maths of one propagation rule.

    ``applies_to`` says which layers can take the rule: ``"linear"`` (linear and affine layers,
    with or without a kernel), ``"pass"`` (layers that keep the shape), ``"maximum"``
    (max-pooling, ``Maximum``) or ``"product"`` (``Multiply``).
    """

    applies_to = "linear"
    # key -> function(rule, kernel, bias) of the modified kernels and biases the rule refers to
    _params = {}

    def param(self, key, kernel, bias):
        """The modified kernel or bias called ``key``, computed from the layer's own."""
        try:
            function = self._params[key]
        except KeyError:
            raise InvalidArgumentError(
                f"{type(self).__name__} has no parameter {key!r}. "
                f"Expected one of {sorted(self._params)}."
            ) from None
        return function(self, kernel, bias)

    def parts(self, *, nonnegative_input=False, nonnegative_kernel=False):
        """The :class:`Part` objects of the rule.

        ``nonnegative_input=True`` promises that the layer input is ≥ 0 (e.g. after a ReLU) and
        ``nonnegative_kernel=True`` that every weight is ≥ 0 (average pooling, Add): terms on
        ``a⁻`` or ``w⁻`` then vanish and are left out; the result is the same, only cheaper.
        """
        return ()

    def input(self, name, x, constants=None):
        """The input variant called ``name`` for a batch ``x``.

        ``constants`` holds the rule's input constants carried from the model input to this
        layer (see :meth:`input_constants`), where the layer reads the pixels.
        """
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
    builtin = cls.__module__.startswith("tf_dtd.rules")
    return cls.__name__ if builtin else f"{cls.__module__}>{cls.__qualname__}"


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
