"""Bring a traced model into the form the rules expect, on a copy only.

:func:`canonical_model` replays a :class:`tf_dtd.graph.Graph` into a new flat Functional model
made of cloned layers: a BatchNormalization that directly follows a Dense or convolution layer is
folded into that layer's kernel and bias, a SeparableConv is split into its depthwise and its
pointwise convolution (two linear layers, each of which gets the separable layer's rule), and a
final softmax / sigmoid is removed so that the output is the logits. The caller's model and
layers are never touched.
"""

import keras
import numpy as np

from tf_dtd.errors import TfDtdError, describe
from tf_dtd.model.analysis import activation_name
from tf_dtd.model.graph import UniqueNames

__all__ = ["canonical_model", "is_split"]

L = keras.layers
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_LINEAR_FOLDABLE = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D) + _SEPARABLE + _TRANSPOSED + _DEPTHWISE
_OUTPUT_SQUASHERS = ("softmax", "sigmoid")


def canonical_model(graph, *, name):
    """A new flat model computing the logits of ``graph``, with BatchNorm folded.

    Returns:
        ``(model, origins)``: the canonical ``keras.Model``, and for each of its layers, by name,
        the user's layer it copies (names differ where flattening nested models made two names
        collide; both halves of a split SeparableConv have the same origin).
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
    clones, weights_set, origins = {}, set(), {}
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
            clones[key] = (_split(node.layer, overrides, names) if is_split(node.layer)
                           else [_clone(node.layer, overrides, names)])
            origins.update({clone.name: node.layer for clone in clones[key]})
        first, *rest = clones[key]
        outputs = node.call(first, [values[i] for i in node.inputs])
        for clone in rest:
            outputs = clone(outputs)
        outputs = keras.tree.flatten(outputs)
        if key not in weights_set:
            weights = node.layer.get_weights() if hasattr(node.layer, "get_weights") else []
            if fold is not None:
                weights = _folded_weights(node.layer, fold.layer)
            if len(clones[key]) == 2:  # separable: [depthwise], [pointwise, bias...]
                clones[key][0].set_weights(weights[:1])
                clones[key][1].set_weights(weights[1:])
            elif weights:
                first.set_weights(weights)
            weights_set.add(key)
        for tensor_id, tensor in zip(node.outputs, outputs):
            values[tensor_id] = tensor
    model = keras.Model(inputs, values[graph.output_id], name=name)
    return model, origins


def is_split(layer):
    """Whether the canonical model replaces ``layer`` by several layers (SeparableConv)."""
    return isinstance(layer, _SEPARABLE)


def _split(layer, overrides, names):
    """A SeparableConv as DepthwiseConv (no bias) followed by a 1×1 Conv (bias, activation)."""
    config = {**layer.get_config(), **overrides}
    rank = len(config["kernel_size"])
    depthwise_class = {1: L.DepthwiseConv1D, 2: L.DepthwiseConv2D}[rank]
    conv_class = {1: L.Conv1D, 2: L.Conv2D}[rank]
    common = dict(data_format=config["data_format"], dtype=config["dtype"])
    depthwise = depthwise_class(
        kernel_size=config["kernel_size"], strides=config["strides"],
        padding=config["padding"], depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"], use_bias=False,
        depthwise_initializer="zeros", name=names(f"{layer.name}_depthwise"), **common)
    pointwise = conv_class(
        filters=config["filters"], kernel_size=1, activation=config["activation"],
        use_bias=config["use_bias"], kernel_initializer="zeros", bias_initializer="zeros",
        name=names(f"{layer.name}_pointwise"), **common)
    return [depthwise, pointwise]


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
    """Weights of ``linear`` followed by ``norm`` (inference mode), in float64 maths.

    The kernel scaled is the one whose axis runs over output channels: the last axis (Dense,
    ConvND, a SeparableConv's pointwise kernel), the one before it (ConvNDTranspose), or the last
    two together (DepthwiseConv: output channel ``c·M + m``).
    """
    weights = [np.asarray(w, dtype="float64") for w in linear.get_weights()]
    dtype = linear.get_weights()[0].dtype
    kernels, bias = (weights[:-1], weights[-1]) if linear.use_bias else (weights, 0.0)
    mean = np.asarray(norm.moving_mean, dtype="float64")
    variance = np.asarray(norm.moving_variance, dtype="float64")
    gamma = np.asarray(norm.gamma, dtype="float64") if norm.scale else 1.0
    beta = np.asarray(norm.beta, dtype="float64") if norm.center else 0.0
    scale = np.broadcast_to(gamma / np.sqrt(variance + norm.epsilon), mean.shape)
    kernel = kernels[-1]
    if isinstance(linear, _TRANSPOSED):
        kernel = kernel * scale[:, None]
    elif isinstance(linear, _DEPTHWISE):
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * scale
    folded_bias = np.broadcast_to((bias - mean) * scale + beta, mean.shape)
    return [w.astype(dtype) for w in (*kernels[:-1], kernel, folded_bias)]
