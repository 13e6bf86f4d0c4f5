"""Bring a traced model into the form the rules expect, on a copy only.

:func:`canonical_model` replays a :class:`tf_dtd.model.graph.Graph` into a new flat Functional
model: the forward half of the relevance model. On the way it

- guards the input against empty batches (:mod:`tf_dtd.model.batch`);
- replaces each layer whose :class:`tf_dtd.registry.LayerType` has a ``canonical`` factory (the
  kernel layers) by that replacement — a relevance layer that also computes the forward map —
  with a fused activation split into an ``Activation`` layer of its own, so the kernel layer's
  output is its pre-activation ``z``;
- folds a BatchNormalization that directly follows such a layer into its kernel and bias, and a
  ``ZeroPadding`` that directly precedes a ``valid`` one into its padding;
- removes a final softmax / sigmoid, so that the output is the logits;
- copies every other layer from its config.

The caller's model and layers are never touched.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tf_dtd import registry
from tf_dtd.errors import TfDtdError, describe
from tf_dtd.model.analysis import activation_name, zero_padding_of
from tf_dtd.model.batch import NonEmptyBatch
from tf_dtd.model.graph import UniqueNames, trace

__all__ = ["OUTPUT_SQUASHERS", "Origin", "Canonical", "canonical_model", "logit_model",
           "kernel_weights", "weight_tensors", "fold_batch_norm", "batch_norm_affine",
           "canonical_weights"]

OUTPUT_SQUASHERS = ("softmax", "sigmoid")


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a layer of the canonical copy comes from.

    Attributes:
        layer: the user's layer (``None`` for the batch guard).
        norm: the user's BatchNormalization folded into it, or ``None``.
        role: ``"layer"`` (a copy or replacement of ``layer``), ``"activation"`` (its fused
            activation, split off) or ``"guard"``.
    """

    layer: object
    norm: object = None
    role: str = "layer"


@dataclasses.dataclass(frozen=True)
class Canonical:
    """The canonical copy: ``model``, and the :class:`Origin` of each of its layers by name."""

    model: object
    origins: dict
    folded: tuple = ()  # (BatchNorm or ZeroPadding name, name of the layer it folds into)
    removed: str = None  # the name of the removed final squasher, if any


def canonical_model(graph, *, name, relevance_dtype="float32", guard=True):
    """The canonical copy of ``graph`` (see the module doc) as a :class:`Canonical`."""
    folds, skipped = _folds(graph)
    pads = _paddings(graph, skipped)
    output_node = graph.producers()[graph.output_id]
    squasher = activation_name(output_node.layer) in OUTPUT_SQUASHERS
    removed = None
    if squasher and isinstance(output_node.layer, (keras.layers.Activation, keras.layers.Softmax)):
        skipped[id(output_node)] = output_node.inputs[0]
        removed, squasher = output_node.layer.name, False

    source = graph.tensors[graph.input_id]
    inputs = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype,
                         name=graph.input_name)
    names = UniqueNames({graph.input_name})
    origins, values = {}, {graph.input_id: inputs}
    if guard:
        guarded = NonEmptyBatch(name=names("non_empty_batch"))
        values[graph.input_id] = guarded(inputs)
        origins[guarded.name] = Origin(None, role="guard")
    copies = {}
    for node in graph.nodes:
        if id(node) in skipped:
            values[node.outputs[0]] = values[skipped[id(node)]]
            continue
        if id(node.layer) not in copies:
            strip = squasher and node is output_node
            copies[id(node.layer)] = _copy(node.layer, folds.get(id(node)), strip, names,
                                           relevance_dtype, origins, pads.get(id(node)))
        first, *rest = copies[id(node.layer)]
        unbuilt = not getattr(first, "built", True)
        replaced = origins[first.name].layer is node.layer and _replaced(node.layer)
        outputs = node.call(first, [values[i] for i in node.inputs], keywords=not replaced)
        if unbuilt and origins[first.name].layer is node.layer and not replaced:
            weights = node.layer.get_weights() if hasattr(node.layer, "get_weights") else []
            if weights:
                first.set_weights(weights)
        for layer in rest:
            outputs = layer(outputs)
        for tensor_id, tensor in zip(node.outputs, keras.tree.flatten(outputs)):
            values[tensor_id] = tensor
    if squasher:
        removed = f"{output_node.layer.name} ({activation_name(output_node.layer)})"
    folded = tuple((folds[id(n)].name, n.layer.name) for n in graph.nodes if id(n) in folds)
    folded += tuple((pads[id(n)][1].name, n.layer.name) for n in graph.nodes if id(n) in pads)
    model = keras.Model(inputs, values[graph.output_id], name=name)
    return Canonical(model, origins, folded, removed)


def _copy(layer, norm, strip_activation, names, relevance_dtype, origins, pad=None):
    """The layers that stand for ``layer`` in the canonical copy, weights set."""
    layer_type = registry.find(layer)
    if layer_type is None or layer_type.canonical is None:
        copy = _clone(layer, names)
        origins[copy.name] = Origin(layer)
        return [copy]
    replacement = layer_type.canonical(
        layer, norm=norm, pad=None if pad is None else pad[0],
        name=names(f"{layer.name}_relevance"), relevance_dtype=relevance_dtype)
    origins[replacement.name] = Origin(layer, norm)
    result = [replacement]
    activation = layer.get_config().get("activation")
    if not strip_activation and activation_name(layer) not in (None, "linear"):
        split = keras.layers.Activation(activation, dtype=layer.dtype_policy,
                                        name=names(f"{layer.name}_activation"))
        origins[split.name] = Origin(layer, role="activation")
        result.append(split)
    return result


def _replaced(layer):
    layer_type = registry.find(layer)
    return layer_type is not None and layer_type.canonical is not None


def _clone(layer, names):
    try:
        config = layer.get_config()
        # The copy's weights are set right after it is built: skip random initialisation.
        config.update({k: "zeros" for k in config if k.endswith("_initializer")})
        config["name"] = names(config.get("name", layer.name))
        copy = type(layer).from_config(config)
    except TfDtdError:
        raise
    except (TypeError, ValueError, NotImplementedError, KeyError, AttributeError) as error:
        raise TfDtdError(
            f"Could not copy layer {describe(layer)} from its config ({error}). tf_dtd never "
            "edits your model, so every layer must round-trip through get_config / from_config."
        ) from error
    return copy


def _folds(graph):
    """Which BatchNorm nodes fold into which linear node: ``({id(linear): norm}, skipped)``."""
    consumers, producers = graph.consumers(), graph.producers()
    uses = {}
    for node in graph.nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    folds, skipped = {}, {}
    for node in graph.nodes:
        linear = producers.get(node.inputs[0]) if node.inputs else None
        if linear is not None and _foldable(linear, node, consumers, uses, graph):
            folds[id(linear)] = node.layer
            skipped[id(node)] = node.inputs[0]
    return folds, skipped


def _paddings(graph, skipped):
    """ZeroPadding nodes read only by a ``valid`` layer that absorbs them: ``{id(consumer node):
    (((before, after), ...) per spatial axis, the padding layer)}``; the padding nodes join
    ``skipped``."""
    consumers, producers = graph.consumers(), graph.producers()
    uses = {}
    for node in graph.nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    pads = {}
    for node in graph.nodes:
        padding = producers.get(node.inputs[0]) if len(node.inputs) == 1 else None
        amounts = zero_padding_of(padding)
        if amounts is None:
            continue
        layer_type = registry.find(node.layer)
        if not (layer_type is not None and layer_type.absorbs_padding
                and getattr(node.layer, "padding", None) == "valid"
                and getattr(node.layer, "data_format", None) == padding.layer.data_format
                and uses[id(node.layer)] == 1 and uses[id(padding.layer)] == 1
                and len(consumers.get(padding.outputs[0], ())) == 1
                and id(padding) not in skipped):
            continue
        pads[id(node)] = (amounts, padding.layer)
        skipped[id(padding)] = padding.inputs[0]
    return pads


def _foldable(linear, norm, consumers, uses, graph):
    """A BatchNorm reads a kernel layer's output that nothing else reads, with no activation
    between, along the layer's channel axis."""
    if not isinstance(norm.layer, keras.layers.BatchNormalization):
        return False
    layer_type = registry.find(linear.layer)
    if layer_type is None or not layer_type.folds_batch_norm or len(linear.outputs) != 1:
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


def weight_tensors(layer):
    """``layer``'s weights in Keras' order, as tensors read from its variables. A variable made
    from such a tensor shares its buffer until either variable is written (TensorFlow copies
    on write): no second copy of an unchanged model's weights, and none made through NumPy
    (VGG16: 0.45 of the rewrite's 0.83 s). ``tf.convert_to_tensor``, not
    ``keras.ops.convert_to_tensor``, which returns the Keras variable itself."""
    return [tf.convert_to_tensor(v) for v in layer.weights]


def kernel_weights(layer, names):
    """The weights of a kernel ``layer`` by name (``names`` in Keras' weight order; the
    bias is absent without ``use_bias``), as :func:`weight_tensors`."""
    return dict(zip([n for n in names if n != "bias" or getattr(layer, "use_bias", True)],
                    weight_tensors(layer)))


def batch_norm_affine(norm):
    """``(scale, shift)`` of a BatchNormalization in inference mode: ``y = x·scale + shift``."""
    mean = np.asarray(norm.moving_mean, dtype="float64")
    variance = np.asarray(norm.moving_variance, dtype="float64")
    gamma = np.asarray(norm.gamma, dtype="float64") if norm.scale else 1.0
    beta = np.asarray(norm.beta, dtype="float64") if norm.center else 0.0
    scale = np.broadcast_to(gamma / np.sqrt(variance + norm.epsilon), mean.shape)
    shift = np.broadcast_to(beta - mean * scale, mean.shape)
    dtype = norm.moving_mean.dtype
    return scale.astype(dtype), shift.astype(dtype)


def fold_batch_norm(weights, norm, key, out_axes):
    """``weights`` of a linear layer followed by ``norm`` (inference mode), in float64 maths.

    ``weights[key]`` is scaled along its output-channel axes ``out_axes``: ``(-1,)`` (Dense,
    ConvND, a SeparableConv's pointwise kernel), ``(-2,)`` (ConvNDTranspose) or ``(-2, -1)``
    (DepthwiseConv: output channel ``c·M + m``).
    """
    dtype = keras.backend.standardize_dtype(weights[key].dtype)
    mean = np.asarray(norm.moving_mean, dtype="float64")
    variance = np.asarray(norm.moving_variance, dtype="float64")
    gamma = np.asarray(norm.gamma, dtype="float64") if norm.scale else 1.0
    beta = np.asarray(norm.beta, dtype="float64") if norm.center else 0.0
    scale = np.broadcast_to(gamma / np.sqrt(variance + norm.epsilon), mean.shape)
    kernel = np.asarray(weights[key], dtype="float64")
    shape = [1] * kernel.ndim
    for axis, size in zip(out_axes, kernel.shape[len(kernel.shape) - len(out_axes):]):
        shape[axis] = size
    kernel = kernel * scale.reshape(shape)
    bias = np.asarray(weights.get("bias", 0.0), dtype="float64")
    folded = {**weights, key: kernel.astype(dtype),
              "bias": np.broadcast_to((bias - mean) * scale + beta, mean.shape).astype(dtype)}
    return folded


def canonical_weights(layer, origin):
    """The current weights of the canonical ``layer`` computed from its :class:`Origin` (what
    refreshes a relevance model after the user's model changed), as ``layer.get_weights()``
    orders them."""
    if origin.layer is None or origin.role != "layer":
        return []
    layer_type = registry.find(origin.layer)
    if layer_type is not None and layer_type.canonical is not None:
        fresh = layer_type.canonical(origin.layer, norm=origin.norm, pad=None, name="fresh",
                                     relevance_dtype="float32")
        return [fresh._initial[name] for name in type(fresh)._weight_names
                if name in fresh._initial]
    return origin.layer.get_weights()


def logit_model(model):
    """``model`` without its final softmax / sigmoid: a ``keras.Model`` computing the logits.

    A fused activation (``Dense(10, activation="softmax")``) is removed by a copy of that layer
    with ``activation="linear"`` and the same weights, called on the layer's input tensor; an
    ``Activation("softmax")`` or ``Softmax`` layer is cut off. A nested model ending in a squasher
    goes through the canonical copy (nested models flattened, BatchNorm folded, no batch guard).
    A model whose output is already linear is returned as it is. ``model`` is never modified.

    Example:
        >>> logits = logit_model(model).predict(x)       # model ends in Dense(..., "softmax")
    """
    producer = _output_layer(model)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    if isinstance(producer, keras.Model):
        if logit_model(producer) is producer:
            return model
        return canonical_model(trace(model), name=f"{model.name}_logits", guard=False).model
    if producer is None or activation_name(producer) not in OUTPUT_SQUASHERS:
        return model
    if isinstance(producer, (keras.layers.Activation, keras.layers.Softmax)):
        return keras.Model(inputs, producer.input, name=f"{model.name}_logits")
    head = type(producer).from_config({**producer.get_config(), "activation": "linear"})
    outputs = head(producer.input)
    head.set_weights(producer.get_weights())
    return keras.Model(inputs, outputs, name=f"{model.name}_logits")


def _output_layer(model):
    """The top-level layer whose output is the model's output (``None`` if not found)."""
    if len(model.outputs) != 1:
        return None
    for layer in reversed(model.layers):
        try:
            if layer.output is model.outputs[0]:
                return layer
        except (AttributeError, ValueError):  # a layer called several times
            continue
    return None
