"""Build the relevance model: the forward graph plus its mirror of relevance layers.

:func:`relevance_model` traces the user's model (:mod:`tf_dtd.graph`), checks that every layer
has a handler, builds a canonical copy (:mod:`tf_dtd.canonize`), then walks the copy backwards:
each node's handler (:mod:`tf_dtd.relevance.registry`) returns the layer that carries relevance from the
node's output to its inputs; relevance arriving at one tensor from several consumers is summed.
No layer class is special-cased here.
"""

import keras
import numpy as np

from tf_dtd import boxes, checks, composites
from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError, UnsupportedModelError, describe
from tf_dtd.model import analysis, canonize
from tf_dtd.model import graph as graph_lib
from tf_dtd.relevance import registry
from tf_dtd.relevance.layers import InputConstant, KernelRelevance, TargetRelevance

__all__ = ["relevance_model", "explain"]


def relevance_model(model, rules="deep_taylor_bounded", *, input_range=None, target="max",
                    return_prediction=False, layers=None, name=None):
    """Clone ``model`` into a Keras model that maps inputs to relevance heatmaps.

    Relevance starts at the selected pre-activation logit (a final softmax / sigmoid is
    removed), so for a conservative rule set the heatmap of a sample sums to that logit.

    Args:
        model: a built Functional or Sequential model with one input and one output; nested
            models are allowed. It is never modified.
        rules: a preset name (see ``tf_dtd.PRESETS``), one rule for every kernel layer, or a
            :class:`tf_dtd.Composite`.
        input_range: ``(low, high)``, the box the inputs live in — scalars or arrays that
            broadcast to one sample (per channel or per pixel). Required by presets using z^B.
        target: ``"max"`` (the top logit of each sample), an ``int`` class index, or
            ``"input"``: the model then takes ``[x, class_ids]`` with int ``class_ids`` of shape
            ``(batch,)``.
        return_prediction: also return the logits: outputs ``[relevance, logits]``.
        layers: names of layers of ``model`` whose relevance to return as well: the relevance
            arriving at each one's output (from all its readers). The outputs are then a dict
            ``{"relevance": ..., "layers": {name: ...}}`` (plus ``"logits"`` with
            ``return_prediction``). A BatchNorm folded into the layer before it, or a removed
            final softmax, has no relevance of its own: name the layer before it.
        name: name of the relevance model; ``"<model>_relevance"`` by default.

    Returns:
        A ``keras.Model``; ``predict(x)`` returns relevance with the shape of ``x``.

    Raises:
        UnsupportedModelError: subclassed or unbuilt model, several inputs or outputs.
        UnsupportedLayerError: a layer without a handler (see ``tf_dtd.register_layer_rule``).
        InvalidArgumentError: a bad ``rules``, ``input_range`` or ``target``.

    Example:
        >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded",
        ...                                    input_range=(0.0, 1.0))
        >>> heatmaps = relevance.predict(images)          # same shape as images
    """
    walk, inputs, logits, relevance = build_walk(model, rules, input_range, target)
    dtype = walk.dtype
    relevance = keras.layers.Activation("linear", dtype=dtype, name=walk.namer("relevance"))(
        relevance)
    outputs = [relevance, logits] if return_prediction else relevance
    if layers is not None:
        outputs = {"relevance": relevance, "layers": walk.relevance_at(layers)}
        if return_prediction:
            outputs["logits"] = logits
    result = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs,
                         name=name or f"{model.name}_relevance")
    result.trainable = False
    return result


def build_walk(model, rules, input_range, target):
    """Trace, canonise and walk ``model`` backwards.

    Returns:
        ``(walk, inputs, logits, relevance)``: the finished :class:`_ReverseWalk` (it knows the
        relevance at every node's output and what each node sent to its inputs), the Keras
        inputs, the logits tensor and the relevance at the model input.
    """
    input_range = checks.check_input_range(input_range)
    composite = composites.resolve(rules, input_range)
    traced = graph_lib.trace(model)
    for node in traced.nodes:
        if not canonize.is_split(node.layer):  # its parts have handlers
            registry.find_handler(node.layer)

    _check_names(composite, traced)

    forward, origins = canonize.canonical_model(traced, name=f"{model.name}_canonical")
    canonical = graph_lib.trace(forward)
    namer = graph_lib.UniqueNames(layer.name for layer in forward.layers)
    dtype = _relevance_dtype()
    x = forward.inputs[0]
    logits = canonical.tensors[canonical.output_id]
    if len(logits.shape) != 2:
        raise UnsupportedModelError(
            f"tf_dtd explains models whose output is (batch, classes). Received: output shape "
            f"{tuple(logits.shape)} from model {describe(model)}."
        )
    inputs = [x]
    if target == "input":
        class_ids = keras.Input(shape=(), dtype="int32", name=namer("class_ids"))
        inputs.append(class_ids)
        start = TargetRelevance("input", name=namer("target_relevance"), dtype=dtype)(
            [logits, class_ids])
    else:
        checks.check_target(target, logits.shape[-1])
        start = TargetRelevance(target, name=namer("target_relevance"), dtype=dtype)(logits)

    walk = _ReverseWalk(canonical, composite, namer, origins, input_range, dtype)
    return walk, inputs, logits, walk.run(start)


def explain(model, x, rules="deep_taylor_bounded", *, input_range=None, target="max",
            return_prediction=False, name=None, batch_size=32, verbose=0):
    """One call: relevance heatmaps of ``x`` under ``model`` as NumPy arrays.

    Takes the arguments of :func:`relevance_model`; ``target`` may also be an array of class ids,
    one per sample (instead of ``"input"``). A NumPy ``x`` is checked first: numeric, the
    model's sample shape; an empty batch gives empty results; inputs outside the z^B box of the
    rules give a :class:`tf_dtd.errors.InputRangeWarning` (z^B relevance can turn negative there).

    Example:
        >>> heatmaps = tf_dtd.explain(model, images, input_range=(0.0, 1.0))
    """
    if isinstance(target, str) and target == "input":
        raise InvalidArgumentError(
            "explain takes the class ids directly: pass target=<array of class ids, one per "
            "sample>. Received: target='input'"
        )
    if np.ndim(target) == 0 and not isinstance(target, str):
        target = int(target) if np.issubdtype(np.asarray(target).dtype, np.integer) else target
    is_array = not (hasattr(x, "element_spec") or not hasattr(x, "__len__"))
    if is_array:
        x = checks.check_batch(x, model)
    class_ids = None
    if not isinstance(target, (str, int)):
        if not is_array:
            raise InvalidArgumentError(
                "Per-sample class ids need x as an array. For a tf.data dataset use "
                "relevance_model(..., target='input') and yield ((x, class_ids),) batches. "
                f"Received: x of type {type(x).__name__}"
            )
        class_ids = checks.check_class_ids(target, len(x), model.output_shape[-1])
        target = "input"
    rel_model = relevance_model(model, rules, input_range=input_range, target=target,
                                return_prediction=return_prediction, name=name)
    if is_array:
        checks.warn_outside_box(x, composites.resolve(rules, checks.check_input_range(
            input_range)).first)
        if len(x) == 0:  # Keras cannot predict on an empty batch
            empty = [np.zeros((0, *tuple(t.shape[1:])), t.dtype) for t in rel_model.outputs]
            return empty if return_prediction else empty[0]
    data = x if class_ids is None else [x, class_ids]
    return rel_model.predict(data, batch_size=batch_size, verbose=verbose)


class _ReverseWalk:
    """Walks the canonical graph backwards, calling each node's handler."""

    def __init__(self, canonical, composite, namer, origins, input_range, dtype):
        self.graph = canonical
        self.dtype = dtype
        self.composite = composite
        self.namer = namer
        self.origins = origins
        self.ranges, self.first = forward_facts(canonical, input_range)
        # Positions count the user's kernel layers (a split SeparableConv is one).
        kernel_origins = list(dict.fromkeys(
            id(self.origin(n)) for n in canonical.nodes if analysis.has_kernel(n.layer)))
        self.positions = {key: (i, len(kernel_origins)) for i, key in enumerate(kernel_origins)}
        self.producers = canonical.producers()
        self.constants = {}
        self.first_kernel_found = False
        self.rules = {}  # id(node) -> the rule the composite gave the node
        self.at_output = {}  # id(node) -> relevance arriving at the node's output
        self.sent = {}  # id(node) -> the relevance the node sends to each of its inputs

    def run(self, start):
        """Relevance at the graph input, starting from ``start`` at its output."""
        incoming = {self.graph.output_id: [start]}
        for node in reversed(self.graph.nodes):
            if len(node.outputs) != 1:
                raise UnsupportedModelError(
                    f"Layer {describe(node.layer)} has {len(node.outputs)} outputs; tf_dtd "
                    "handles layers with one output."
                )
            relevance = self.summed(incoming.pop(node.outputs[0]), f"{node.layer.name}_sum")
            self.at_output[id(node)] = relevance
            self.sent[id(node)] = self.node_relevance(node, relevance)
            for tensor_id, tensor in zip(node.inputs, self.sent[id(node)]):
                incoming.setdefault(tensor_id, []).append(tensor)
        self._check_first_kernel_found()
        return self.summed(incoming[self.graph.input_id], "input_sum")

    def relevance_at(self, names):
        """``{name: relevance at the output of the user's layer name}`` (after :meth:`run`)."""
        last = {}
        for node in self.graph.nodes:  # a split SeparableConv: its pointwise half comes last
            last[self.origin(node).name] = node
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise InvalidArgumentError(
                f"layers= takes a list of layer names. Received: layers={names!r}")
        unknown = [n for n in names if n not in last]
        if unknown:
            raise InvalidArgumentError(
                f"layers= names layers without relevance of their own: {unknown}. A BatchNorm "
                "folded into the layer before it and a removed final softmax have none; name "
                "the layer before them (model.summary() lists the names)."
            )
        return {name: self.at_output[id(last[name])] for name in names}

    def origin(self, node):
        """The user's layer that the canonical ``node`` copies."""
        return self.origins.get(node.layer.name, node.layer)

    def summed(self, tensors, name):
        """Relevance reaching one tensor from several consumers adds up."""
        if len(tensors) == 1:
            return tensors[0]
        return keras.layers.Add(name=self.namer(name), dtype=self.dtype)(tensors)

    def node_relevance(self, node, relevance):
        is_first = id(node) in self.first
        origin = self.origin(node)
        position = self.positions.get(id(origin)) if analysis.has_kernel(node.layer) else None
        rule = self.composite.rule_for(origin, is_first=is_first, position=position)
        self.rules[id(node)] = rule
        if isinstance(rule, rules_lib.Pass):
            return [self.passed(node, relevance)]
        context = registry.HandlerContext(
            name=self.namer(f"{node.layer.name}_relevance"),
            is_first=is_first,
            nonnegative_inputs=tuple(self.ranges[i][0] >= 0 for i in node.inputs),
            input_constants=tuple(sorted(rule.input_constants())) if is_first else (),
            dtype=self.dtype,
            max_pooling=self.composite.max_pooling,
            input_ranges=tuple(self.ranges[i] for i in node.inputs),
            multiply=self.composite.multiply,
        )
        reverse = registry.find_handler(node.layer)(node.layer, rule, context)
        if reverse is None:
            (output_id,) = node.outputs
            shapes = [tuple(self.graph.tensors[i].shape) for i in (*node.inputs, output_id)]
            if len(node.inputs) != 1 or shapes[0] != shapes[1]:
                raise UnsupportedModelError(
                    f"The handler of layer {describe(node.layer)} returned None (pass-through), "
                    "which only works for layers with one input of the output's shape. "
                    f"Received: input shapes {shapes[:-1]}, output shape {shapes[-1]}"
                )
            return [relevance]
        wanted = tuple(getattr(reverse, "constant_inputs", ()))
        if is_first and (wanted or isinstance(reverse, KernelRelevance)):
            self.first_kernel_found = True
        if not set(wanted) <= set(context.input_constants):
            raise UnsupportedModelError(
                f"The relevance layer of {describe(node.layer)} asks for input constants "
                f"{wanted}, but only {context.input_constants} are available there."
            )
        constants = [self.constant(node.inputs[0], rule, key) for key in wanted]
        forward_inputs = [self.graph.tensors[i] for i in node.inputs]
        result = keras.tree.flatten(reverse([*forward_inputs, relevance, *constants]))
        if len(result) != len(node.inputs):
            raise UnsupportedModelError(
                f"The relevance layer of {describe(node.layer)} returned {len(result)} tensors "
                f"for {len(node.inputs)} forward inputs; it must return one per input."
            )
        return result

    def passed(self, node, relevance):
        """The Pass rule: relevance goes through unchanged, so the shape must not change."""
        (output_id,) = node.outputs
        shapes = [tuple(self.graph.tensors[i].shape) for i in (*node.inputs, output_id)]
        if len(node.inputs) != 1 or shapes[0] != shapes[1]:
            raise InvalidArgumentError(
                f"Pass() keeps relevance unchanged and needs a layer with one input of its "
                f"output's shape. Received: layer {describe(node.layer)} with input shapes "
                f"{shapes[:-1]} and output shape {shapes[-1]}"
            )
        return relevance

    def constant(self, tensor_id, rule, key):
        """The rule's input constant ``key`` carried from the model input to ``tensor_id``."""
        memo = (tensor_id, id(rule), key)
        if memo not in self.constants:
            if tensor_id == self.graph.input_id:
                x = self.graph.tensors[tensor_id]
                array = np.asarray(rule.input_constants()[key])
                boxes.check_broadcastable(array.shape, x.shape[1:],
                                              f"{type(rule).__name__}.{key}")
                layer = InputConstant.from_value(array, name=self.namer(f"input_{key}"),
                                                 dtype=self.dtype)
                value = layer(x)
            else:  # a box-carrying layer (padding, reshaping, ...): replay it on the constant
                node = self.producers[tensor_id]
                carried = [self.constant(i, rule, key) for i in node.inputs]
                if key == "ones" and analysis.is_increasing_front_end(node.layer):
                    value = carried[0]  # a mask of real inputs: element-wise maps keep it
                else:
                    value = keras.tree.flatten(node.call(node.layer, carried))[0]
            self.constants[memo] = value
        return self.constants[memo]

    def _check_first_kernel_found(self):
        """A composite's first-layer rule must reach a kernel layer, not silently vanish."""
        if self.composite.first is None or self.first_kernel_found:
            return
        blockers = [describe(node.layer) for node in self.graph.nodes
                    if id(node) in self.first and not analysis.carries_input_box(node.layer)]
        raise InvalidArgumentError(
            f"The first-layer rule {self.composite.first!r} reaches no Dense or convolution "
            f"layer: the model input first passes through {', '.join(blockers) or 'no layer'}, "
            "and only padding, reshaping, concatenation, pooling and dropout layers carry "
            "the pixels (and the rule's box or mask) to a first layer. Use a preset without a "
            "first-layer rule ('deep_taylor', 'lrp_epsilon'), or a tf_dtd.Composite without "
            "`first` that gives the layer behind it its rule by_name, e.g. "
            "ZBox(low, high) with the bounds of that layer's input."
        )


def forward_facts(canonical, input_range):
    """Bounds of every tensor, and which nodes read the pixels (through box-carrying layers)."""
    ranges = {canonical.input_id: analysis.UNBOUNDED if input_range is None else (
        float(np.min(input_range[0])), float(np.max(input_range[1])))}
    carries_pixels = {canonical.input_id}
    first = set()
    for node in canonical.nodes:
        operands = node.operands([ranges[i] for i in node.inputs])
        bounds = analysis.output_range(node.layer, operands)
        ranges.update({i: bounds for i in node.outputs})
        if node.inputs and all(i in carries_pixels for i in node.inputs):
            first.add(id(node))
            if analysis.carries_input_box(node.layer) or analysis.is_increasing_front_end(
                    node.layer):
                carries_pixels.update(node.outputs)
    return ranges, first


def _relevance_dtype():
    """float32, or float64 under a float64 policy: relevance is never computed in float16."""
    wide = "float64" in (keras.config.floatx(), keras.config.dtype_policy().compute_dtype)
    return "float64" if wide else "float32"


def _check_names(composite, traced):
    """``by_name`` keys must name layers of the model: a typo must not pass silently."""
    unknown = set(composite.by_name) - {node.layer.name for node in traced.nodes}
    if unknown:
        raise InvalidArgumentError(
            f"Composite.by_name names layers the model does not have: {sorted(unknown)}. "
            "Layer names of nested models are their own names (model.summary() lists them)."
        )
