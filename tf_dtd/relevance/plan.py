"""Decide, then build: what the reverse pass does at every node, as frozen, printable records.

:func:`decide` traces the user's model, builds its canonical copy (:mod:`tf_dtd.model.canonize`)
and records for every node of the canonical graph the user's layer it stands for, its layer type
(:mod:`tf_dtd.registry`), the rule the composite gives it and the :class:`HandlerContext` its
handler receives (first layer, position, value ranges, carried constants). Building the relevance
model (:mod:`tf_dtd.relevance.build`), ``tf-dtd info``, :func:`tf_dtd.diagnose` and
:func:`tf_dtd.evaluate.conservation_report` all read this :class:`Plan`. An unsupported layer does
not stop :func:`decide`: its step carries the error, so a report can list every such layer.
"""

import dataclasses

import keras
import numpy as np

from tf_dtd import checks, composites, registry
from tf_dtd.errors import InvalidArgumentError, TfDtdError, UnsupportedLayerError, describe
from tf_dtd.model import analysis, canonize
from tf_dtd.model import graph as graph_lib
from tf_dtd.registry import HandlerContext
from tf_dtd.relevance import handlers  # noqa: F401  (registers the built-in layer types)

__all__ = ["Step", "Plan", "decide", "relevance_dtype", "forward_facts"]

_NOT_ELEMENTWISE = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True)
class Step:
    """What the reverse pass does at one node of the canonical graph.

    Attributes:
        name: the canonical layer's name.
        origin: the user's layer it stands for (see :class:`tf_dtd.model.canonize.Origin`).
        layer_type: the :class:`tf_dtd.registry.LayerType` whose handler runs.
        rule: the rule the composite gives it (``None`` where the layer has no rule choice).
        context: the :class:`tf_dtd.HandlerContext` its handler receives.
        output_shape: the node's output shape.
        error: why the layer is unsupported, else ``None``.
        node: the canonical graph node (layer, input and output tensor ids).
    """

    name: str
    origin: object = dataclasses.field(repr=False)
    layer_type: object = dataclasses.field(repr=False)
    rule: object
    context: HandlerContext
    output_shape: tuple
    error: str = None
    node: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def layer(self):
        """The canonical layer."""
        return self.node.layer

    @property
    def user_layer(self):
        """The user's layer (``None`` for layers the canonical copy adds, like the batch guard)."""
        return self.origin.layer

    @property
    def description(self):
        """How relevance crosses the layer, in words."""
        if self.error is not None:
            return "unsupported"
        if self.origin.role == "activation":
            return "passed through (activation)"
        return self.layer_type.description


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every decision the reverse pass needs, in graph order (input side first).

    Attributes:
        model: the user's model.
        composite: the :class:`tf_dtd.Composite` that gave the rules.
        input_range: the checked ``input_range`` (``None`` or a pair of arrays).
        target: ``"max"``, an int class index or ``"input"``.
        dtype: the dtype relevance is computed in.
        traced: the user's model as a :class:`tf_dtd.model.graph.Graph`.
        canonical: the :class:`tf_dtd.model.canonize.Canonical` copy (``None`` when a layer is
            unsupported: nothing will be built, and the steps follow the user's graph).
        graph: the graph the steps follow: the canonical copy's.
        steps: one :class:`Step` per node of ``graph``.
    """

    model: object = dataclasses.field(repr=False)
    composite: object
    input_range: object = dataclasses.field(repr=False)
    target: object
    dtype: str
    traced: object = dataclasses.field(repr=False)
    canonical: object = dataclasses.field(repr=False)
    graph: object = dataclasses.field(repr=False)
    steps: tuple = dataclasses.field(repr=False)

    @property
    def errors(self):
        """The steps of unsupported layers."""
        return [step for step in self.steps if step.error is not None]

    def check_supported(self):
        """Raise :class:`tf_dtd.UnsupportedLayerError` for the first unsupported layer."""
        for step in self.errors:
            raise UnsupportedLayerError(step.error)


def relevance_dtype():
    """float32, or float64 under a float64 policy: relevance is never computed in float16."""
    wide = "float64" in (keras.config.floatx(), keras.config.dtype_policy().compute_dtype)
    return "float64" if wide else "float32"


def decide(model, rules="deep_taylor_bounded", *, input_range=None, target="max"):
    """The :class:`Plan` of ``model`` under ``rules`` (arguments as for ``relevance_model``).

    Example:
        >>> plan = tf_dtd.relevance.plan.decide(model, "lrp_epsilon")
        >>> [(step.name, step.rule) for step in plan.steps]
    """
    input_range = checks.check_input_range(input_range)
    composite = composites.resolve(rules, input_range)
    traced = graph_lib.trace(model)
    _check_names(composite, traced)
    output_layer = traced.producers()[traced.output_id].layer
    unsupported = {id(node.layer): error for node in traced.nodes
                   if (error := _unsupported(node.layer, node.layer is output_layer))
                   is not None}
    dtype = relevance_dtype()
    canonical = None
    if unsupported:  # nothing will be built: decide on the user's own graph, for the report
        graph, origins = traced, [canonize.Origin(node.layer) for node in traced.nodes]
    else:
        canonical = canonize.canonical_model(traced, name=f"{model.name}_canonical",
                                             relevance_dtype=dtype)
        graph = graph_lib.trace(canonical.model)
        origins = [canonical.origins.get(node.layer.name, canonize.Origin(node.layer))
                   for node in graph.nodes]
    ranges, first = forward_facts(graph, input_range)
    types = [_type_of(origin.layer) if origin.role == "layer" and origin.layer
             else _type_of(node.layer) for node, origin in zip(graph.nodes, origins)]
    kernels = list(dict.fromkeys(
        id(origin.layer) for origin, layer_type in zip(origins, types)
        if origin.role == "layer" and _is_kernel(origin.layer, layer_type)))
    namer = graph_lib.UniqueNames(layer.name for layer in (
        canonical.model.layers if canonical else [n.layer for n in graph.nodes]))
    steps, producers = [], graph.producers()
    for node, origin, layer_type in zip(graph.nodes, origins, types):
        error = unsupported.get(id(origin.layer))
        is_first = id(node) in first
        position = None
        if origin.role == "layer" and id(origin.layer) in kernels:
            position = (kernels.index(id(origin.layer)), len(kernels))
        rule = None
        if error is None:
            user = origin.layer if origin.role == "layer" and origin.layer else node.layer
            reads_flat = len(graph.tensors[node.inputs[0]].shape) == 2 if node.inputs else False
            rule = composite.rule_for(user, layer_type, is_first=is_first, position=position,
                                      reads_flat=reads_flat)
        own = layer_type.canonical is not None and origin.role == "layer" and canonical
        context = HandlerContext(
            name=node.layer.name if own else namer(f"{node.layer.name}_relevance"),
            is_first=is_first,
            nonnegative_inputs=tuple(ranges[i][0] >= 0 for i in node.inputs),
            input_constants=tuple(sorted(rule.input_constants())) if is_first and rule else (),
            dtype=dtype,
            input_ranges=tuple(ranges[i] for i in node.inputs),
            position=position,
            input_padding=tuple(analysis.zero_padding_of(producers.get(i)) for i in node.inputs),
        )
        steps.append(Step(node.layer.name, origin, layer_type, rule, context,
                          tuple(graph.tensors[node.outputs[0]].shape), error, node))
    plan = Plan(model, composite, input_range, target, dtype, traced, canonical, graph,
                tuple(steps))
    _check_first_rule(plan)
    return plan


def _is_kernel(layer, layer_type):
    """A kernel layer: by its type's record, or, for users' layers, by having a kernel."""
    return layer_type.kernel if layer_type.kernel is not None else analysis.has_kernel(layer)


def _type_of(layer):
    return registry.find(layer) or registry.LayerType(None, rules=(), description="unsupported")


def _unsupported(layer, is_output):
    """Why ``layer`` cannot be explained, or ``None`` (a final softmax is removed, not used)."""
    if registry.find(layer) is None:
        try:
            registry.lookup(layer)
        except TfDtdError as error:
            return str(error)
    name = analysis.activation_name(layer)
    if name in _NOT_ELEMENTWISE and not is_output:
        return (f"Layer {describe(layer)} applies {name} inside the model; it is not "
                "element-wise and only a final softmax is removed. Register a handler with "
                "tf_dtd.register_layer_rule.")
    return None


def forward_facts(graph, input_range):
    """Bounds of every tensor, and which nodes read the pixels (through box-carrying layers)."""
    ranges = {graph.input_id: analysis.UNBOUNDED if input_range is None else (
        float(np.min(input_range[0])), float(np.max(input_range[1])))}
    carries_pixels = {graph.input_id}
    first = set()
    for node in graph.nodes:
        operands = node.operands([ranges[i] for i in node.inputs])
        bounds = analysis.output_range(node.layer, operands)
        ranges.update({i: bounds for i in node.outputs})
        if node.inputs and all(i in carries_pixels for i in node.inputs):
            first.add(id(node))
            if analysis.carries_input_box(node.layer) or analysis.is_increasing_front_end(
                    node.layer):
                carries_pixels.update(node.outputs)
    return ranges, first


def _check_names(composite, traced):
    """``by_name`` keys must name layers of the model: a typo must not pass silently."""
    unknown = set(composite.by_name) - {node.layer.name for node in traced.nodes}
    if unknown:
        raise InvalidArgumentError(
            f"Composite.by_name names layers the model does not have: {sorted(unknown)}. "
            "Layer names of nested models are their own names (model.summary() lists them)."
        )


def _check_first_rule(plan):
    """A composite's first-layer rule must reach a layer that reads the pixels, not vanish."""
    first_rule = plan.composite.first
    if first_rule is None or plan.errors:
        return
    reached = [step for step in plan.steps if step.context.is_first and step.rule is not None
               and step.origin.role == "layer" and (step.context.position is not None or (
                   step.layer_type.carries_input_box and step.layer_type.default_rule is None))]
    if reached:
        return
    blockers = [describe(step.user_layer or step.layer) for step in plan.steps
                if step.context.is_first and not analysis.carries_input_box(step.layer)]
    raise InvalidArgumentError(
        f"The first-layer rule {first_rule!r} reaches no Dense or convolution layer: the model "
        f"input first passes through {', '.join(blockers) or 'no layer'}, and only padding, "
        "reshaping, concatenation, pooling and dropout layers carry the pixels (and the rule's "
        "box or mask) to a first layer. Use a preset without a first-layer rule ('deep_taylor', "
        "'lrp_epsilon'), or a tf_dtd.Composite without `first` that gives the layer behind it "
        "its rule by_name, e.g. ZBox(low, high) with the bounds of that layer's input."
    )
