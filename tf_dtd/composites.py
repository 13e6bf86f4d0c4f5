"""Which rule each layer gets: :class:`Composite` and the named presets.

Precedence, first match wins: ``by_name`` (the layer's name), then ``first`` (kernel layers that
read the model input, see :func:`tf_dtd.relevance_model`), then ``by_type`` (along the layer
class's MRO, so subclasses inherit), then ``default``.
"""

import dataclasses
import types

import keras

from tf_dtd import rules
from tf_dtd.errors import InvalidArgumentError

__all__ = ["Composite", "PRESETS", "resolve"]


@dataclasses.dataclass(frozen=True)
class Composite:
    """Map layers to rules.

    Args:
        default: the rule of every layer nothing else matches.
        first: the rule of the kernel layers that read the model input (e.g. z^B, w²).
        by_type: ``{LayerClass: rule}``; looked up along ``type(layer).__mro__``.
        by_name: ``{layer_name: rule}``; wins over everything else.

    Example:
        >>> composite = tf_dtd.Composite(
        ...     default=tf_dtd.rules.ZPlus(), first=tf_dtd.rules.ZBox(0.0, 1.0),
        ...     by_type={keras.layers.Dense: tf_dtd.rules.Epsilon(1e-3)})
    """

    default: rules.Rule = dataclasses.field(default_factory=rules.ZPlus)
    first: rules.Rule = None
    by_type: dict = dataclasses.field(default_factory=dict)
    by_name: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        named = {"default": self.default, "first": self.first}
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

    def rule_for(self, layer, *, is_first=False, name=None):
        """The rule ``layer`` gets.

        ``is_first`` says whether it reads the model input; ``name`` is the name ``by_name``
        matches, ``layer.name`` by default.
        """
        name = layer.name if name is None else name
        if name in self.by_name:
            return self.by_name[name]
        if is_first and self.first is not None:
            return self.first
        for cls in type(layer).__mro__:
            if cls in self.by_type:
                return self.by_type[cls]
        return self.default


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
}


def resolve(rules_arg, input_range=None):
    """Turn the ``rules=`` argument (preset name, rule or Composite) into a Composite."""
    if isinstance(rules_arg, Composite):
        return rules_arg
    if isinstance(rules_arg, rules.Rule):
        return Composite(default=rules_arg)
    if isinstance(rules_arg, str):
        if rules_arg not in PRESETS:
            raise InvalidArgumentError(
                f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: rules={rules_arg!r}"
            )
        return PRESETS[rules_arg](input_range)
    raise InvalidArgumentError(
        "rules must be a preset name, a tf_dtd.rules.Rule or a tf_dtd.Composite. "
        f"Received: rules={rules_arg!r}"
    )
