"""Build the relevance model: the forward graph plus its mirror of relevance layers.

:func:`relevance_model` traces the user's model (:mod:`tf_dtd.graph`), checks that every layer
has a handler, builds a canonical copy (:mod:`tf_dtd.canonize`), then walks the copy backwards:
each node's handler (:mod:`tf_dtd.registry`) returns the layer that carries relevance from the
node's output to its inputs; relevance arriving at one tensor from several consumers is summed.
No layer class is special-cased here.
"""

import keras
import numpy as np

from tf_dtd import canonize, composites, graph as graph_lib, registry
from tf_dtd.errors import InvalidArgumentError, UnsupportedModelError, describe
from tf_dtd.layers import TargetRelevance

__all__ = ["relevance_model", "explain"]


def relevance_model(model, rules="deep_taylor_bounded", *, input_range=None, target="max",
                    return_prediction=False, name=None):
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
    input_range = _check_input_range(input_range)
    composite = composites.resolve(rules, input_range)
    traced = graph_lib.trace(model)
    for node in traced.nodes:
        registry.find_handler(node.layer)

    forward, _ = canonize.canonical_model(traced, name=f"{model.name}_canonical")
    canonical = graph_lib.trace(forward)
    x = forward.inputs[0]
    logits = canonical.tensors[canonical.output_id]
    if len(logits.shape) != 2:
        raise UnsupportedModelError(
            f"tf_dtd explains models whose output is (batch, classes). Received: output shape "
            f"{tuple(logits.shape)} from model {describe(model)}."
        )
    num_classes = logits.shape[-1]
    inputs = [x]
    if target == "input":
        class_ids = keras.Input(shape=(), dtype="int32", name="class_ids")
        inputs.append(class_ids)
        start = TargetRelevance("input", name="target_relevance")([logits, class_ids])
    else:
        _check_target(target, num_classes)
        start = TargetRelevance(target, name="target_relevance")(logits)

    relevance = _reverse(canonical, composite, start, input_range)
    relevance = keras.layers.Activation("linear", dtype="float32", name="relevance")(relevance)
    outputs = [relevance, logits] if return_prediction else relevance
    result = keras.Model(inputs if len(inputs) > 1 else x, outputs,
                         name=name or f"{model.name}_relevance")
    result.trainable = False
    return result


def explain(model, x, rules="deep_taylor_bounded", *, input_range=None, target="max",
            return_prediction=False, batch_size=32, verbose=0):
    """One call: relevance heatmaps of ``x`` under ``model`` as NumPy arrays.

    Takes the arguments of :func:`relevance_model`; ``target`` may also be an array of class ids
    (one per sample).

    Example:
        >>> heatmaps = tf_dtd.explain(model, images, input_range=(0.0, 1.0))
    """
    class_ids = None
    if not isinstance(target, (str, int, np.integer)):
        class_ids = np.asarray(target).astype("int32").reshape(-1)
        target = "input"
    rel_model = relevance_model(model, rules, input_range=input_range, target=target,
                                return_prediction=return_prediction)
    data = x if class_ids is None else [np.asarray(x), class_ids]
    return rel_model.predict(data, batch_size=batch_size, verbose=verbose)


def _reverse(canonical, composite, start, input_range):
    """Walk the canonical graph backwards from ``start``; return the relevance at its input."""
    nonnegative, first = _forward_facts(canonical, input_range)
    namer = _Namer()
    incoming = {canonical.output_id: [start]}
    for node in reversed(canonical.nodes):
        if len(node.outputs) != 1:
            raise UnsupportedModelError(
                f"Layer {describe(node.layer)} has {len(node.outputs)} outputs; tf_dtd handles "
                "layers with one output."
            )
        out_relevance = _summed(incoming.pop(node.outputs[0]), namer(f"{node.layer.name}_sum"))
        context = registry.HandlerContext(
            name=namer(f"{node.layer.name}_relevance"),
            is_first=id(node) in first,
            nonnegative_inputs=tuple(nonnegative.get(i, False) for i in node.inputs),
        )
        rule = composite.rule_for(node.layer, is_first=context.is_first)
        reverse = registry.find_handler(node.layer)(node.layer, rule, context)
        if reverse is None:
            if len(node.inputs) != 1:
                raise UnsupportedModelError(
                    f"The handler of layer {describe(node.layer)} returned None (pass-through), "
                    "which only works for layers with one input."
                )
            in_relevance = [out_relevance]
        else:
            forward_inputs = [canonical.tensors.get(i) for i in node.inputs]
            in_relevance = keras.tree.flatten(reverse([*forward_inputs, out_relevance]))
        for tensor_id, tensor in zip(node.inputs, in_relevance):
            incoming.setdefault(tensor_id, []).append(tensor)
    return _summed(incoming[canonical.input_id], namer("input_sum"))


def _forward_facts(canonical, input_range):
    """Which tensors are ≥ 0, and which nodes read the input through weightless layers."""
    input_nonnegative = input_range is not None and bool(np.all(np.asarray(input_range[0]) >= 0))
    nonnegative = {canonical.input_id: input_nonnegative}
    reaches_input = {canonical.input_id}
    first = set()
    for node in canonical.nodes:
        inputs_nonnegative = [nonnegative.get(i, False) for i in node.inputs]
        is_nonnegative = canonize.output_nonnegative(node.layer, inputs_nonnegative)
        nonnegative.update({i: is_nonnegative for i in node.outputs})
        if any(i in reaches_input for i in node.inputs):
            first.add(id(node))
            if not node.layer.weights:
                reaches_input.update(node.outputs)
    return nonnegative, first


class _Namer:
    """Unique layer names: ``base``, then ``base_1``, ``base_2``, ..."""

    def __init__(self):
        self.used = set()

    def __call__(self, base):
        name, index = base, 0
        while name in self.used:
            index += 1
            name = f"{base}_{index}"
        self.used.add(name)
        return name


def _summed(tensors, name):
    """Relevance reaching one tensor from several consumers adds up."""
    if len(tensors) == 1:
        return tensors[0]
    return keras.layers.Add(name=name)(tensors)


def _check_input_range(input_range):
    if input_range is None:
        return None
    try:
        low, high = input_range
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"input_range must be a pair (low, high). Received: input_range={input_range!r}"
        ) from None
    low, high = np.asarray(low, dtype="float64"), np.asarray(high, dtype="float64")
    if np.any(np.broadcast_to(low, np.broadcast_shapes(low.shape, high.shape)) >= high):
        raise InvalidArgumentError(
            f"input_range needs low < high everywhere. Received: input_range={input_range!r}"
        )
    return low, high


def _check_target(target, num_classes):
    if target == "max":
        return
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidArgumentError(
            f"target must be 'max', 'input' or an int class index. Received: target={target!r}"
        )
    if not 0 <= target < num_classes:
        raise InvalidArgumentError(
            f"target must be a class index in [0, {num_classes}). Received: target={target}"
        )
