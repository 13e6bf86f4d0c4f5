"""One record per layer type: everything tf_dtd knows about a kind of Keras layer.

A :class:`LayerType` says how relevance crosses the layer (its handler and the rules it takes), how
``tf-dtd info`` describes it, whether it carries the pixels (and the z^B box) to a first layer,
how the canonical copy represents it, whether a following BatchNorm folds into it, and why
relevance may leak there. Every other module reads this table; built-in layers are registered in
:mod:`tf_dtd.relevance.handlers` exactly as users register theirs with
:func:`register_layer_rule`.

A handler has the signature ``handler(layer, rule, context) -> keras.layers.Layer | None``:
``layer`` is the canonical copy of the forward layer, ``rule`` the rule the composite gives it and
``context`` a :class:`HandlerContext`. The returned layer is called on
``[*forward_inputs, relevance, *constants]`` and returns the relevance at the forward inputs;
``None`` means relevance passes through unchanged (element-wise layers with one input).
"""

import dataclasses

from tf_dtd.errors import InvalidArgumentError, UnsupportedLayerError, describe

__all__ = ["LayerType", "HandlerContext", "register_layer_rule", "register", "lookup", "find",
           "RULE_KINDS"]

# What a layer can take, by Rule.applies_to: every kind a user's handler may see.
RULE_KINDS = ("linear", "pass", "maximum", "product")

_TYPES = {}


@dataclasses.dataclass(frozen=True)
class HandlerContext:
    """What a handler may know beyond the layer and its rule.

    Attributes:
        name: the name to give the relevance layer.
        is_first: the layer reads the model input (through layers that carry the pixels).
        nonnegative_inputs: per forward input, whether it is known to be ≥ 0.
        input_constants: names of the rule's input constants (``rule.input_constants()``,
            e.g. z^B's ``"low"`` and ``"high"``) that the rewriter can pass to the relevance
            layer, carried from the model input to this layer's input; a relevance layer asks for
            them by listing them in its ``constant_inputs`` attribute.
        dtype: the dtype relevance layers compute in (float32, or float64 under a float64
            policy; never float16, even for a mixed-precision model).
        input_ranges: per forward input, bounds ``(low, high)`` its values are known to hold
            (infinite where unknown); a ``Multiply`` operand within [0, 1] is a gate.
        position: ``(index, count)`` of a kernel layer among the model's kernel layers, else
            ``None``.
        input_padding: per forward input, the ``((before, after), ...)`` zeros per spatial axis
            that a ``ZeroPadding`` added to it just before this layer, or ``None``.
    """

    name: str
    is_first: bool
    nonnegative_inputs: tuple
    input_constants: tuple = ()
    dtype: str = "float32"
    input_ranges: tuple = ()
    position: tuple = None
    input_padding: tuple = ()


@dataclasses.dataclass(frozen=True)
class LayerType:
    """What tf_dtd knows about one Keras layer class (and its subclasses).

    Attributes:
        handler: ``handler(layer, rule, context) -> keras.layers.Layer | None`` (module doc).
        rules: the rule kinds (``Rule.applies_to``) or rule classes the layer takes; ``()`` for
            layers whose relevance does not depend on a rule (routing, pass-through).
        default_rule: the layer's own default, which the composite's ``default`` does not
            override (max-pooling: ``WinnerTakeAll()``; only ``by_name``, ``by_type``, ``first``
            and the composite's shorthands do); ``None``: the composite's ``default``.
        fallback_rule: the rule used when the composite's ``default`` is of a kind the layer does
            not take (LayerNormalization under z⁺: ``Pass()``).
        description: how relevance crosses the layer, in words (``tf-dtd info``).
        carries_input_box: every output copies, selects or averages input values (or is zero
            padding), so a kernel layer behind it still reads the pixels and the z^B box can be
            carried to it.
        kernel: the layer is a kernel layer (Dense, convolutions): ``Composite.first`` and
            ``by_index`` apply to it, and its position counts among the kernel layers; ``None``
            (users' layers): it is one where it has a ``kernel`` attribute.
        canonical: ``canonical(layer) -> [layers]``: the layers that replace it in the canonical
            copy (e.g. a relevance layer that also computes the forward map), or ``None`` to
            copy it as it is.
        folds_batch_norm: a BatchNormalization reading only this layer's output is folded into
            its kernel and bias.
        absorbs_padding: a ``ZeroPadding`` read only by this (``valid``) layer becomes part of it
            (``canonical`` gets ``pad=``): its zeros are then no inputs to any rule, exactly as
            with ``same`` padding.
        leak: why relevance may leak at the layer, for ``conservation_report``; ``None`` where
            the rule tells (kernel layers) or nothing leaks.
    """

    handler: object
    rules: tuple = RULE_KINDS
    default_rule: object = None
    fallback_rule: object = None
    description: str = "custom handler"
    carries_input_box: bool = False
    kernel: bool = False
    canonical: object = None
    folds_batch_norm: bool = False
    absorbs_padding: bool = False
    leak: str = None

    def takes(self, rule):
        """Whether the layer can apply ``rule``: ``rules`` lists rule kinds
        (``rule.applies_to``) or rule classes."""
        return any(isinstance(rule, kind) if isinstance(kind, type) else rule.applies_to == kind
                   for kind in self.rules)


def register(layer_class, layer_type, *, builtin=False):
    """Record ``layer_type`` for ``layer_class`` (and its subclasses without a record).

    A ``builtin`` record never replaces one a user registered before tf_dtd's built-in layer
    types were loaded.
    """
    if not isinstance(layer_class, type):
        raise InvalidArgumentError(
            f"register_layer_rule needs a layer class. Received: layer_class={layer_class!r}"
        )
    if not callable(layer_type.handler):
        raise InvalidArgumentError(
            f"register_layer_rule needs a callable handler. Received: "
            f"handler={layer_type.handler!r}"
        )
    if builtin:
        _TYPES.setdefault(layer_class, layer_type)
    else:
        _TYPES[layer_class] = layer_type


def register_layer_rule(layer_class, handler):
    """Teach tf_dtd how relevance flows back through ``layer_class`` (and its subclasses).

    Args:
        layer_class: a Keras layer (or operation) class.
        handler: ``handler(layer, rule, context) -> keras.layers.Layer | None``; see
            :mod:`tf_dtd.registry`. The layer it returns must be serialisable (``get_config``)
            for the relevance model to be saved. The handler receives the composite's rule for
            the layer, whatever its kind.

    Example:
        >>> tf_dtd.register_layer_rule(MyScale, lambda layer, rule, ctx: None)  # pass-through
    """
    name = getattr(handler, "__name__", type(handler).__name__)
    register(layer_class, LayerType(handler, description=f"custom handler {name}", kernel=None))


def find(layer):
    """The :class:`LayerType` of ``type(layer)`` or its closest base class, or ``None``."""
    for cls in type(layer).__mro__:
        if cls in _TYPES:
            return _TYPES[cls]
    return None


def lookup(layer):
    """The :class:`LayerType` of ``layer``.

    Raises:
        UnsupportedLayerError: no class in the MRO has a record.
    """
    layer_type = find(layer)
    if layer_type is None:
        raise UnsupportedLayerError(
            f"No relevance handler for layer {describe(layer)}. Register one with "
            "tf_dtd.register_layer_rule(LayerClass, handler), or replace the layer by supported "
            "ones."
        )
    return layer_type
