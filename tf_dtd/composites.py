"""Which rule each layer gets: :class:`Composite` and the named presets.

Precedence, first match wins: ``by_name`` (the layer's name), then ``first`` (kernel layers, and
linear layers that carry the pixels such as average pooling, that read the model input, see
:func:`tf_dtd.relevance_model`), then ``by_type`` (along the layer class's MRO, so subclasses
inherit), then ``fully_connected`` (kernel layers that read flat feature vectors), then
``by_index`` (position among the kernel layers), then ``default``.
"""

import dataclasses
import types

from tf_dtd import registry, rules
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
        fully_connected: the rule of the kernel layers that read flat feature vectors (inputs of
            shape batch × features): the fully connected top of a classifier, such as VGG-16's
            ``fc1``, ``fc2`` and ``predictions``. A ``Dense`` layer on an image tensor (ConvNeXt's
            pointwise layers) is a 1×1 convolution and does not count.
        by_index: ``{index or (start, stop): rule}`` over the kernel layers (Dense,
            convolutions) in graph order, 0-based, ``stop`` excluded or ``None`` for the end.
            Negative ints count from the end; ``start``/``stop`` may also be floats in [0, 1],
            fractions of the number of kernel layers (``(0.0, 0.5)``: the lower half), so one
            composite fits models of any depth. First matching key wins.
        max_pooling: shorthand for the rule of max-pooling layers that ``by_name`` / ``by_type``
            do not set: ``"winner_take_all"`` (default, ``rules.WinnerTakeAll()``: a window's
            relevance goes to its maximum) or ``"proportional"`` (``rules.Z()`` on the average
            over the same windows).
        multiply: shorthand for the rule of products (``Multiply``): ``"gate"`` (default,
            ``rules.SignalTakesAll()``: when one factor is a gate, known to lie in [0, 1] like a
            sigmoid output, the other factor gets all the relevance; any other product is an
            error) or ``"split"`` (``rules.EqualShares()``: each of the n factors gets 1/n).

    Every layer with a rule choice — kernel layers, ``Add``, average pooling, an unfolded
    BatchNorm, max-pooling, products — takes its rule from the composite; ``default`` reaches
    the layers whose kind it fits, the others keep their own default (max-pooling:
    ``WinnerTakeAll``, products: ``SignalTakesAll``; LayerNormalization takes LRP-0/ε and
    passes relevance through under other defaults).

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
    fully_connected: rules.Rule = None
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
        named = {"default": self.default, "first": self.first,
                 "fully_connected": self.fully_connected}
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

    def rule_for(self, layer, layer_type=None, *, is_first=False, name=None, position=None,
                 reads_flat=False):
        """The rule ``layer`` gets, or ``None`` for a layer without a rule choice (routing,
        element-wise layers).

        ``layer_type`` is the layer's :class:`tf_dtd.registry.LayerType` (looked up by
        default); ``is_first`` says whether it reads the model input; ``name`` is the name
        ``by_name`` matches, ``layer.name`` by default; ``position`` is ``(index, count)`` of a
        kernel layer among the model's kernel layers (``None`` for other layers);
        ``reads_flat`` says whether its input is a flat feature vector (batch × features).

        Raises:
            InvalidArgumentError: ``by_name``, ``by_type`` or ``by_index`` gives the layer a rule
                of a kind it does not take (a max-pooling rule for a Dense layer, say).
        """
        layer_type = registry.lookup(layer) if layer_type is None else layer_type
        if not layer_type.rules:
            return None
        name = layer.name if name is None else name
        first = is_first and self.first is not None and layer_type.takes(self.first) and (
            position is not None or layer_type.kernel
            or (layer_type.carries_input_box and layer_type.default_rule is None))
        fully_connected = (reads_flat and self.fully_connected is not None
                           and (position is not None or layer_type.kernel))
        explicit = self._explicit(layer, name, position, first, fully_connected)
        if explicit is not None:
            where, rule = explicit
            if not layer_type.takes(rule):
                raise InvalidArgumentError(
                    f"Composite.{where} gives layer '{name}' ({type(layer).__name__}) the rule "
                    f"{rule!r}, but that layer takes rules for {list(layer_type.rules)} layers."
                )
            return rule
        shorthand = self._shorthand(layer_type)
        if shorthand is not None:
            return shorthand
        if layer_type.default_rule is not None:
            return layer_type.default_rule
        if layer_type.takes(self.default):
            return self.default
        if layer_type.fallback_rule is not None:
            return layer_type.fallback_rule
        raise InvalidArgumentError(
            f"Composite.default {self.default!r} does not fit layer '{name}' "
            f"({type(layer).__name__}), which takes rules for {list(layer_type.rules)} layers. "
            "Give the layer a rule by_name or by_type."
        )

    def _explicit(self, layer, name, position, first, fully_connected):
        if name in self.by_name:
            return f"by_name[{name!r}]", self.by_name[name]
        if first:
            return "first", self.first
        for cls in type(layer).__mro__:
            if cls in self.by_type:
                return f"by_type[{cls.__name__}]", self.by_type[cls]
        if fully_connected:
            return "fully_connected", self.fully_connected
        if position is not None:
            for key, rule in self.by_index.items():
                if _index_matches(key, *position):
                    return f"by_index[{key!r}]", rule
        return None

    def _shorthand(self, layer_type):
        """``max_pooling="proportional"`` and ``multiply="split"`` as the rules they stand for."""
        default = layer_type.default_rule
        if (self.max_pooling == "proportional" and isinstance(default, rules.WinnerTakeAll)
                and "linear" in layer_type.rules):
            return rules.Z()
        if self.multiply == "split" and isinstance(default, rules.SignalTakesAll):
            return rules.EqualShares()
        return None


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
    # αβ with biases ignored: conserving; α1β0 is then z⁺ (Montavon et al., 2017).
    "lrp_alpha_1_beta_0": lambda input_range: Composite(
        default=rules.AlphaBeta(1.0, 0.0, bias=False)),
    "lrp_alpha_2_beta_1": lambda input_range: Composite(
        default=rules.AlphaBeta(2.0, 1.0, bias=False)),
    # ε on the fully connected top only: a Dense layer on an image tensor is a 1×1 convolution
    # and takes z⁺ (ε there amplifies on ConvNeXt, where the residual Add's z⁺ shares give a
    # pointwise layer's tiny positive output the whole relevance of its block).
    "lrp_epsilon_plus": lambda input_range: Composite(
        default=rules.ZPlus(), fully_connected=rules.Epsilon()),
    "lrp_epsilon_plus_flat": lambda input_range: Composite(
        default=rules.ZPlus(), first=rules.Flat(), fully_connected=rules.Epsilon()),
    # Montavon et al. (2019): z^B on the pixels, γ low, ε in the middle, LRP-0 on the dense top.
    # The split is by position among the kernel layers: the lower half γ, the upper half ε.
    "lrp_epsilon_gamma_box": lambda input_range: Composite(
        default=rules.Z(),
        first=_box(input_range, "lrp_epsilon_gamma_box"),
        fully_connected=rules.Z(),
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
