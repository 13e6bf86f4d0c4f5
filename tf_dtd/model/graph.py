"""Flatten a Functional / Sequential Keras model into a list of nodes in topological order.

This is the only module that reads Keras internals (``_keras_history``, ``_inbound_nodes``, the
``arguments`` of a Keras ``Node``); everything else works on the :class:`Graph` it returns.
Nested Functional and Sequential models are expanded in place, so the graph only holds leaf
layers and operations.
"""

import dataclasses

import keras

from tf_dtd.errors import UnsupportedModelError, describe

__all__ = ["Graph", "Node", "UniqueNames", "trace", "operation_classes", "application_layers"]


@dataclasses.dataclass(frozen=True)
class Node:
    """One call of a layer: ``outputs = layer(inputs)``.

    ``inputs`` and ``outputs`` are tensor ids (keys of :attr:`Graph.tensors`); ``arguments`` is
    the call's structure (positional / keyword arguments), reused by :meth:`call`.
    """

    layer: object
    inputs: tuple
    outputs: tuple
    arguments: object = dataclasses.field(repr=False, compare=False)
    argument_keys: tuple = dataclasses.field(repr=False, compare=False)

    def call(self, layer, values, *, keywords=True):
        """Call ``layer`` (this node's layer or a replacement) on ``values``, one per input,
        with the structure (and, with ``keywords``, the keyword arguments) of the original
        call."""
        args, kwargs = self.arguments.fill_in(dict(zip(self.argument_keys, values)))
        return layer(*args, **kwargs) if keywords else layer(*args)

    def operands(self, values):
        """The call's positional arguments, flattened, with ``values`` (one per input) in place
        of the tensors and constants as they are: ``x + 3.0`` gives ``[values[0], 3.0]``."""
        slots = [_Slot(index) for index in range(len(values))]
        args, _ = self.arguments.fill_in(dict(zip(self.argument_keys, slots)))
        return [values[a.index] if isinstance(a, _Slot) else a for a in keras.tree.flatten(args)]


class _Slot:
    """Marks where the ``index``-th input sits among a call's arguments."""

    def __init__(self, index):
        self.index = index


@dataclasses.dataclass(frozen=True)
class Graph:
    """A flat model: ``nodes`` in topological order from ``input_id`` to ``output_id``."""

    nodes: tuple
    input_id: int
    output_id: int
    tensors: dict = dataclasses.field(repr=False)
    input_name: str = "input"

    def consumers(self):
        """Tensor id -> the nodes that read it."""
        result = {}
        for node in self.nodes:
            for tensor_id in node.inputs:
                result.setdefault(tensor_id, []).append(node)
        return result

    def producers(self):
        """Tensor id -> the node that wrote it."""
        return {tensor_id: node for node in self.nodes for tensor_id in node.outputs}


class UniqueNames:
    """Hands out layer names never handed out or ``taken`` before: ``base``, ``base_1``, ..."""

    def __init__(self, taken=()):
        self.used = set(taken)

    def __call__(self, base):
        name, index = base, 0
        while name in self.used:
            index += 1
            name = f"{base}_{index}"
        self.used.add(name)
        return name


def is_graph_model(layer):
    """Whether ``layer`` is a Functional or Sequential model that :func:`trace` can expand."""
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or _is_functional(layer)
    )


def operation_classes():
    """The Keras operations (``x + y``, ``x * 0.5``, ...) a Functional model may record as nodes,
    by name: ``{"Add": class, "Subtract": ..., "Multiply": ..., "TrueDivide": ...}``."""
    from keras.src.ops import numpy as numpy_ops

    return {name: getattr(numpy_ops, name)
            for name in ("Add", "Subtract", "Multiply", "TrueDivide")}


def application_layers():
    """Layer classes that keras.applications define but do not export, by name (those found)."""
    found = {}
    for module, name in (("convnext", "LayerScale"), ("inception_resnet_v2", "CustomScaleLayer")):
        try:
            found[name] = getattr(
                __import__(f"keras.src.applications.{module}", fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
    return found


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _inputs_outputs(model):
    if not is_graph_model(model):
        raise UnsupportedModelError(
            f"Model {describe(model)} is a subclassed model: tf_dtd needs a Functional or "
            "Sequential model whose layer graph it can read. Rebuild it with keras.Input and "
            "the functional API."
        )
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise UnsupportedModelError(
            f"Model {describe(model)} is not built: give it a keras.Input or call "
            "model.build(input_shape) first."
        )
    return inputs, outputs


def trace(model):
    """Return the :class:`Graph` of a model with one input and one output.

    Raises:
        UnsupportedModelError: subclassed or unbuilt model, several inputs or outputs, or a
            nested model used more than once.
    """
    inputs, outputs = _inputs_outputs(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"tf_dtd explains models with one input and one output. Received: model "
            f"{describe(model)} with {len(inputs)} inputs and {len(outputs)} outputs."
        )
    tracer = _Tracer()
    input_id = id(inputs[0])
    tracer.tensors[input_id] = inputs[0]
    (output_id,) = tracer.expand(model, [input_id])
    if not tracer.nodes:
        raise UnsupportedModelError(
            f"Model {describe(model)} has no layers between its input and output."
        )
    input_name = inputs[0]._keras_history.operation.name
    return Graph(tuple(tracer.nodes), input_id, output_id, tracer.tensors, input_name)


class _Tracer:
    def __init__(self):
        self.nodes = []
        self.tensors = {}
        self.alias = {}
        self.expanded = set()

    def resolve(self, tensor):
        return self.alias.get(id(tensor), id(tensor))

    def expand(self, model, input_ids):
        """Emit the nodes of ``model`` fed by ``input_ids``; return its output tensor ids."""
        inputs, outputs = _inputs_outputs(model)
        if id(model) in self.expanded:
            raise UnsupportedModelError(
                f"Nested model {describe(model)} is called more than once; tf_dtd cannot "
                "flatten shared sub-models yet."
            )
        self.expanded.add(id(model))
        for inner, outer_id in zip(inputs, input_ids):
            self.alias[id(inner)] = outer_id
        boundary = {id(t) for t in inputs}
        for keras_node in _topological_nodes(outputs, boundary):
            operation = keras_node.operation
            in_ids = [self.resolve(t) for t in keras_node.input_tensors]
            if is_graph_model(operation):
                out_ids = self.expand(operation, in_ids)
                for outer, inner_id in zip(keras_node.output_tensors, out_ids):
                    self.alias[id(outer)] = inner_id
                continue
            for tensor in keras_node.output_tensors:
                self.tensors[id(tensor)] = tensor
            self.nodes.append(
                Node(
                    layer=operation,
                    inputs=tuple(in_ids),
                    outputs=tuple(id(t) for t in keras_node.output_tensors),
                    arguments=keras_node.arguments,
                    argument_keys=tuple(id(t) for t in keras_node.input_tensors),
                )
            )
        return [self.resolve(t) for t in outputs]


def _producer(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _topological_nodes(outputs, boundary):
    """Keras nodes between ``boundary`` tensor ids and ``outputs``, producers first."""
    order, state = [], {}
    stack = [(_producer(t), False) for t in reversed(outputs) if id(t) not in boundary]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            if state.get(id(node)) != "done":
                state[id(node)] = "done"
                order.append(node)
            continue
        if id(node) in state:
            continue
        state[id(node)] = "open"
        stack.append((node, True))
        for tensor in reversed(node.input_tensors):
            if id(tensor) in boundary:
                continue
            parent = _producer(tensor)
            if parent.is_input:
                raise UnsupportedModelError(
                    f"Layer {describe(node.operation)} reads an input that is not the model's "
                    "own input; tf_dtd explains models with one input."
                )
            if id(parent) not in state:
                stack.append((parent, False))
    return order
