"""Bring a traced model into the form the rules expect, on a copy only.

:func:`canonical_model` replays a :class:`tf_dtd.graph.Graph` into a new flat Functional model
made of cloned layers: a BatchNormalization that directly follows a Dense or Conv layer is folded
into that layer's kernel and bias, and a final softmax / sigmoid is removed so that the output is
the logits. The caller's model and layers are never touched.
"""

import keras
import numpy as np

from tf_dtd.analysis import activation_name
from tf_dtd.errors import TfDtdError, describe
from tf_dtd.graph import UniqueNames

__all__ = ["canonical_model"]

_LINEAR_FOLDABLE = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                    keras.layers.Conv3D)
_OUTPUT_SQUASHERS = ("softmax", "sigmoid")


def canonical_model(graph, *, name):
    """A new flat model computing the logits of ``graph``, with BatchNorm folded.

    Returns:
        ``(model, original_names)``: the canonical ``keras.Model``, and for each of its layers
        the name of the user's layer it copies (they differ where flattening nested models made
        two names collide).
    """
    consumers = graph.consumers()
    producers = graph.producers()
    uses = {}
    for node in graph.nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1

    folds = {}  # id(linear node) -> batch-norm node
    skipped = {}  # id(node) -> the tensor id its output aliases
    for node in graph.nodes:
        producer = producers.get(node.inputs[0]) if node.inputs else None
        if producer is not None and _foldable(producer, node, consumers, uses, graph):
            folds[id(producer)] = node
            skipped[id(node)] = node.inputs[0]

    output_node = producers[graph.output_id]
    strip_activation = activation_name(output_node.layer) in _OUTPUT_SQUASHERS
    if strip_activation and isinstance(
        output_node.layer, (keras.layers.Activation, keras.layers.Softmax)
    ):
        skipped[id(output_node)] = output_node.inputs[0]
        strip_activation = False

    source = graph.tensors[graph.input_id]
    inputs = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype,
                         name=graph.input_name)
    values = {graph.input_id: inputs}
    clones, weights_set, original_names = {}, set(), {}
    names = UniqueNames({graph.input_name})
    for node in graph.nodes:
        if id(node) in skipped:
            values[node.outputs[0]] = values[skipped[id(node)]]
            continue
        fold = folds.get(id(node))
        key = id(node.layer)
        if key not in clones:
            overrides = {}
            if fold is not None:
                overrides["use_bias"] = True
            if node is output_node and strip_activation:
                overrides["activation"] = "linear"
            clones[key] = _clone(node.layer, overrides, names)
            original_names[clones[key].name] = node.layer.name
        clone = clones[key]
        outputs = keras.tree.flatten(node.call(clone, [values[i] for i in node.inputs]))
        if key not in weights_set:
            weights = node.layer.get_weights()
            if fold is not None:
                weights = _folded_weights(node.layer, fold.layer)
            if weights:
                clone.set_weights(weights)
            weights_set.add(key)
        for tensor_id, tensor in zip(node.outputs, outputs):
            values[tensor_id] = tensor
    model = keras.Model(inputs, values[graph.output_id], name=name)
    return model, original_names


def _clone(layer, overrides, names):
    try:
        config = layer.get_config()
        # The copy's weights are set right after it is built: skip random initialisation.
        config.update({k: "zeros" for k in config if k.endswith("_initializer")})
        config.update(overrides)
        config["name"] = names(config.get("name", layer.name))
        return type(layer).from_config(config)
    except TfDtdError:
        raise
    except Exception as error:
        raise TfDtdError(
            f"Could not copy layer {describe(layer)} from its config ({error}). tf_dtd never "
            "edits your model, so every layer must round-trip through get_config / from_config."
        ) from error


def _foldable(linear, norm, consumers, uses, graph):
    """A BatchNorm reads a Dense/Conv output that nothing else reads, with no activation between."""
    if not isinstance(norm.layer, keras.layers.BatchNormalization):
        return False
    if not isinstance(linear.layer, _LINEAR_FOLDABLE) or len(linear.outputs) != 1:
        return False
    if activation_name(linear.layer) not in ("linear", None):
        return False
    if uses[id(linear.layer)] != 1 or uses[id(norm.layer)] != 1:
        return False
    if len(consumers.get(linear.outputs[0], ())) != 1 or linear.outputs[0] == graph.output_id:
        return False
    rank = len(graph.tensors[linear.outputs[0]].shape)
    channels_first = getattr(linear.layer, "data_format", "channels_last") == "channels_first"
    channel_axis = 1 if channels_first else rank - 1
    return norm.layer.axis % rank == channel_axis


def _folded_weights(linear, norm):
    """Kernel and bias of ``linear`` followed by ``norm`` (inference mode), in float64 maths."""
    kernel = np.asarray(linear.kernel, dtype="float64")
    bias = np.asarray(linear.bias, dtype="float64") if linear.use_bias else 0.0
    mean = np.asarray(norm.moving_mean, dtype="float64")
    variance = np.asarray(norm.moving_variance, dtype="float64")
    gamma = np.asarray(norm.gamma, dtype="float64") if norm.scale else 1.0
    beta = np.asarray(norm.beta, dtype="float64") if norm.center else 0.0
    scale = gamma / np.sqrt(variance + norm.epsilon)
    dtype = linear.kernel.dtype
    folded_bias = (bias - mean) * scale + beta
    return [(kernel * scale).astype(dtype), np.broadcast_to(folded_bias, mean.shape).astype(dtype)]
