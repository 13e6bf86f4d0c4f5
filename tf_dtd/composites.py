"""Which rule each layer gets: :class:`Composite` and the named presets.

Precedence, first match wins: ``by_name`` (the layer's name), then ``first`` (kernel layers that
read the model input, see :func:`tf_dtd.relevance_model`), then ``by_type`` (along the layer
class's MRO, so subclasses inherit), then ``by_index`` (position among the kernel layers), then
``default``.
"""

import dataclasses
import types

import keras

from tf_dtd import rules
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.preset_names import PRESET_NAMES  # the names' TF-free home (for the command line)

__all__ = ["Composite", "PRESETS", "resolve"]


@dataclasses.dataclass(frozen=True)
class Composite:
    """Map layers to rules.

    Args:
        default: the rule of every layer nothing else matches.
        first: the rule of the kernel layers that read the model input (e.g. z^B, w²).
        by_type: ``{LayerClass: rule}``; looked up along ``type(layer).__mro__``.
        by_name: ``{layer_name: rule}``; wins over everything else.
        by_index: ``{index or (start, stop): rule}`` over the kernel layers (Dense,
            convolutions) in graph order, 0-based, ``stop`` excluded or ``None`` for the end.
            Negative ints count from the end; ``start``/``stop`` may also be floats in [0, 1],
            fractions of the number of kernel layers (``(0.0, 0.5)``: the lower half), so one
            composite fits models of any depth. First matching key wins.
        max_pooling: ``"winner_take_all"`` (default: a window's relevance goes to its maximum)
            or ``"proportional"`` (shared in proportion to the inputs, as average pooling).
        multiply: how a product of two tensors (``Multiply``) shares relevance: ``"gate"``
            (default: when one factor is a gate, known to lie in [0, 1] like a sigmoid output,
            the other factor gets all the relevance; any other product is an error) or
            ``"split"`` (each of the n factors gets 1/n, and relevance flows into the gate
            branch too).

    Example:
        >>> composite = tf_dtd.Composite(
        ...     default=tf_dtd.rules.ZPlus(), first=tf_dtd.rules.ZBox(0.0, 1.0),
        ...     by_type={keras.layers.Dense: tf_dtd.rules.Epsilon(1e-3)})
    """

    default: rules.Rule = dataclasses.field(default_factory=rules.ZPlus)
    first: rules.Rule = None
    by_type: dict = dataclasses.field(default_factory=dict)
    by_name: dict = dataclasses.field(default_factory=dict)
    by_index: dict = dataclasses.field(default_factory=dict)
    max_pooling: str = "winner_take_all"
    multiply: str = "gate"

    def __post_init__(self):
        if self.max_pooling not in MAX_POOLING_MODES:
            raise InvalidArgumentError(
                f"Composite.max_pooling must be one of {MAX_POOLING_MODES}. "
                f"Received: max_pooling={self.max_pooling!r}"
            )
        if self.multiply not in MULTIPLY_MODES:
            raise InvalidArgumentError(
                f"Composite.multiply must be one of {MULTIPLY_MODES}. "
                f"Received: multiply={self.multiply!r}"
            )
        for key in dict(self.by_index):
            is_range = isinstance(key, tuple) and len(key) == 2 and all(
                isinstance(b, (int, float, type(None))) and not isinstance(b, bool) for b in key)
            if not is_range and (isinstance(key, bool) or not isinstance(key, int)):
                raise InvalidArgumentError(
                    "Composite.by_index keys must be ints or (start, stop) pairs. "
                    f"Received: {key!r}"
                )
        named = {"default": self.default, "first": self.first}
        named.update({f"by_index[{k!r}]": v for k, v in dict(self.by_index).items()})
        named.update({f"by_type[{k!r}]": v for k, v in dict(self.by_type).items()})
        named.update({f"by_name[{k!r}]": v for k, v in dict(self.by_name).items()})
        for where, rule in named.items():
            if rule is not None and not isinstance(rule, rules.Rule):
                raise InvalidArgumentError(
                    f"Composite.{where} must be a tf_dtd.rules.Rule. Received: {rule!r}"
                )
        for key in dict(self.by_type):
            if not isinstance(key, type):
                raise InvalidArgumentError(
                    f"Composite.by_type keys must be layer classes. Received: {key!r}"
                )
        object.__setattr__(self, "by_type", types.MappingProxyType(dict(self.by_type)))
        object.__setattr__(self, "by_name", types.MappingProxyType(dict(self.by_name)))
        object.__setattr__(self, "by_index", types.MappingProxyType(dict(self.by_index)))

    def rule_for(self, layer, *, is_first=False, name=None, position=None):
        """The rule ``layer`` gets.

        ``is_first`` says whether it reads the model input; ``name`` is the name ``by_name``
        matches, ``layer.name`` by default; ``position`` is ``(index, count)`` of a kernel layer
        among the model's kernel layers (``None`` for other layers).
        """
        name = layer.name if name is None else name
        if name in self.by_name:
            return self.by_name[name]
        if is_first and self.first is not None:
            return self.first
        for cls in type(layer).__mro__:
            if cls in self.by_type:
                return self.by_type[cls]
        if position is not None:
            for key, rule in self.by_index.items():
                if _index_matches(key, *position):
                    return rule
        return self.default


MAX_POOLING_MODES = ("winner_take_all", "proportional")
MULTIPLY_MODES = ("gate", "split")


def _index_matches(key, index, count):
    if isinstance(key, int):
        return index == key % count if -count <= key < count else False

    def bound(value):
        return int(value * count) if isinstance(value, float) else value

    start, stop = key
    return index in range(count)[slice(bound(start), bound(stop))]


def _box(input_range, preset):
    if input_range is None:
        raise InvalidArgumentError(
            f"Preset {preset!r} applies the z^B rule to the first layer and needs the input "
            "box: pass input_range=(low, high), e.g. input_range=(0.0, 1.0) for pixels in [0, 1]."
        )
    low, high = input_range
    return rules.ZBox(low, high)


PRESETS = {
    "deep_taylor": lambda input_range: Composite(default=rules.ZPlus()),
    "deep_taylor_bounded": lambda input_range: Composite(
        default=rules.ZPlus(), first=_box(input_range, "deep_taylor_bounded")),
    "deep_taylor_unbounded": lambda input_range: Composite(
        default=rules.ZPlus(), first=rules.WSquare()),
    "lrp_z": lambda input_range: Composite(default=rules.Z()),
    "lrp_epsilon": lambda input_range: Composite(default=rules.Epsilon()),
    "lrp_alpha_1_beta_0": lambda input_range: Composite(default=rules.AlphaBeta(1.0, 0.0)),
    "lrp_alpha_2_beta_1": lambda input_range: Composite(default=rules.AlphaBeta(2.0, 1.0)),
    "lrp_epsilon_plus": lambda input_range: Composite(
        default=rules.ZPlus(), by_type={keras.layers.Dense: rules.Epsilon()}),
    "lrp_epsilon_plus_flat": lambda input_range: Composite(
        default=rules.ZPlus(), first=rules.Flat(), by_type={keras.layers.Dense: rules.Epsilon()}),
    # Montavon et al. (2019): z^B on the pixels, γ low, ε in the middle, LRP-0 on the dense top.
    # The split is by position among the kernel layers: the lower half γ, the upper half ε.
    "lrp_epsilon_gamma_box": lambda input_range: Composite(
        default=rules.Z(),
        first=_box(input_range, "lrp_epsilon_gamma_box"),
        by_type={keras.layers.Dense: rules.Z()},
        by_index={(0.0, 0.5): rules.Gamma(0.25),
                  (0.5, None): rules.Epsilon(0.25, relative=True)},
    ),
}


def resolve(rules_arg, input_range=None):
    """Turn the ``rules=`` argument (preset name, rule or Composite) into a Composite."""
    if isinstance(rules_arg, Composite):
        return rules_arg
    if isinstance(rules_arg, rules.Rule):
        return Composite(default=rules_arg)
    if isinstance(rules_arg, str):
        if rules_arg not in PRESET_NAMES:
            raise InvalidArgumentError(
                f"Unknown preset. Expected one of {sorted(PRESET_NAMES)}. "
                f"Received: rules={rules_arg!r}"
            )
        return PRESETS[rules_arg](input_range)
    raise InvalidArgumentError(
        "rules must be a preset name, a tf_dtd.rules.Rule or a tf_dtd.Composite. "
        f"Received: rules={rules_arg!r}"
    )
