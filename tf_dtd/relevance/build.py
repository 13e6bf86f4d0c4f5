"""Build the relevance model from a :class:`~tf_dtd.relevance.plan.Plan`.

The forward half is the canonical copy itself. :func:`build` makes each step's relevance layer
(its handler), then walks the nodes backwards calling them; relevance arriving at one tensor from
several consumers is summed. No layer class is special-cased here: what each node needs was
decided in the plan. An activation output a relevance layer reads is computed again from the
activation's input where that input is held for the pass anyway, and an addend that only an
``Add`` reads from the sum and the other addends (:mod:`tf_dtd.relevance.recompute`); which
forward tensors serve in place of others is decided first (:mod:`tf_dtd.relevance.reuse`).
"""

import dataclasses

import keras
import numpy as np

from tf_dtd import boxes, checks
from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError, UnsupportedModelError, describe
from tf_dtd.model import analysis
from tf_dtd.model.batch import TrimBatch
from tf_dtd.relevance import reuse
from tf_dtd.relevance.endpoints import InputConstant, TargetRelevance
from tf_dtd.relevance.recompute import RECOMPUTED_LAYERS, AddendAgain, AfterRelevance

__all__ = ["Built", "build", "assemble"]


@dataclasses.dataclass(frozen=True, eq=False)
class Built:
    """The symbolic relevance graph of a plan.

    Attributes:
        plan: the :class:`~tf_dtd.relevance.plan.Plan` it was built from.
        inputs: the Keras inputs (``[x]``, or ``[x, class_ids]`` for ``target="input"``).
        logits: the canonical logits (of the guarded batch).
        relevance: the relevance at the model input.
        at_output: per step index, the relevance arriving at the node's output.
        sent: per step index, the relevance the node sends to each of its inputs.
        reverse: per step index, the layer that carried relevance back (``None``: passed).
        calls: per step index, the tensors that layer was called on.
        namer: hands out layer names unique in the relevance model.
    """

    plan: object
    inputs: list
    logits: object
    relevance: object
    at_output: dict
    sent: dict
    reverse: dict
    calls: dict
    namer: object

    def weight_bindings(self):
        """``(layer, origin)`` for every layer of the relevance model whose weights are computed
        from a user's layer: what :func:`tf_dtd.sync_weights` refreshes."""
        bindings = [(step.layer, step.origin) for step in self.plan.steps
                    if step.origin.role == "layer" and getattr(step.layer, "weights", None)]
        for index, reverse in self.reverse.items():
            copy = getattr(reverse, "forward_layer", None)
            if copy is not None and copy.weights:
                bindings.append((copy, self.plan.steps[index].origin))
        return tuple(bindings)


def build(plan):
    """Walk ``plan``'s canonical graph backwards: a :class:`Built`.

    Raises:
        UnsupportedLayerError: a step of the plan is unsupported.
        UnsupportedModelError: the model's output is not ``(batch, classes)``.
    """
    plan.check_supported()
    graph, dtype = plan.graph, plan.dtype
    x = plan.canonical.model.inputs[0]
    logits = graph.tensors[graph.output_id]
    if len(logits.shape) != 2:
        raise UnsupportedModelError(
            f"tf_dtd explains models whose output is (batch, classes). Received: output shape "
            f"{tuple(logits.shape)} from model {describe(plan.model)}."
        )
    namer = _Namer(plan)
    inputs = [x]
    if plan.target == "input":
        class_ids = keras.Input(shape=(), dtype="int32", name=namer("class_ids"))
        inputs.append(class_ids)
        start = TargetRelevance("input", name=namer("target_relevance"), dtype=dtype)(
            [logits, class_ids])
    else:
        checks.check_target(plan.target, logits.shape[-1])
        start = TargetRelevance(plan.target, name=namer("target_relevance"), dtype=dtype)(logits)
    walk = _Walk(plan, namer)
    relevance = walk.run(start)
    return Built(plan, inputs, logits, relevance, walk.at_output, walk.sent, walk.reverse,
                 walk.calls, namer)


def assemble(built, *, return_prediction=False, layers=None, name=None):
    """The ``keras.Model`` of a :class:`Built` graph, its outputs cut to the real batch."""
    plan, namer = built.plan, built.namer
    x = built.inputs[0]

    def trim(tensor, label):
        return TrimBatch(name=namer(label))([tensor, x])

    relevance = keras.layers.Activation("linear", dtype=plan.dtype, name=namer("relevance"))(
        built.relevance)
    outputs = [relevance, trim(built.logits, "logits")] if return_prediction else relevance
    if layers is not None:
        outputs = {"relevance": relevance, "layers": {
            label: trim(tensor, f"{label}_relevance_at")
            for label, tensor in _relevance_at(built, layers).items()}}
        if return_prediction:
            outputs["logits"] = trim(built.logits, "logits")
    model = keras.Model(built.inputs if len(built.inputs) > 1 else x, outputs,
                        name=name or f"{plan.model.name}_relevance")
    model.trainable = False
    return model


def _relevance_at(built, names):
    """``{name: relevance at the output of the user's layer name}``."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidArgumentError(
            f"layers= takes a list of layer names. Received: layers={names!r}")
    last = {}
    for index, step in enumerate(built.plan.steps):
        if step.user_layer is not None and step.origin.role == "layer":
            last[step.user_layer.name] = index
    unknown = [n for n in names if n not in last]
    if unknown:
        raise InvalidArgumentError(
            f"layers= names layers without relevance of their own: {unknown}. A BatchNorm "
            "folded into the layer before it and a removed final softmax have none; name "
            "the layer before them (model.summary() lists the names)."
        )
    return {name: built.at_output[last[name]] for name in names}


class _Namer:
    """Layer names unique among the canonical copy's and every name handed out before."""

    def __init__(self, plan):
        from tf_dtd.model.graph import UniqueNames

        self.names = UniqueNames(
            [layer.name for layer in plan.canonical.model.layers]
            + [step.context.name for step in plan.steps])

    def __call__(self, base):
        return self.names(base)


class _Walk:
    """Walks the canonical graph backwards, calling each step's handler."""

    def __init__(self, plan, namer):
        self.plan = plan
        self.graph = plan.graph
        self.namer = namer
        self.producers = self.graph.producers()
        self.step_of = {step.node.outputs[0]: index for index, step in enumerate(plan.steps)}
        self.recomputed, self.again = {}, {}
        self.constants = {}
        self.at_output, self.sent, self.reverse, self.calls = {}, {}, {}, {}

    def run(self, start):
        """Relevance at the graph input, starting from ``start`` at its output."""
        for index, step in enumerate(self.plan.steps):
            self.reverse[index] = self.reverse_layer(step)
        self.rectified = reuse.rectified_outputs(self.plan, self.reverse)
        self.derived = reuse.derived_addends(self.plan, self.reverse)
        self.totals = {self.rectified.get(index, self.plan.steps[index].node.outputs[0])
                       for index in self.derived.values()}
        incoming = {self.graph.output_id: [start]}
        for index in reversed(range(len(self.plan.steps))):
            step = self.plan.steps[index]
            node = step.node
            if len(node.outputs) != 1:
                raise UnsupportedModelError(
                    f"Layer {describe(node.layer)} has {len(node.outputs)} outputs; tf_dtd "
                    "handles layers with one output."
                )
            relevance = self.summed(incoming.pop(node.outputs[0]), f"{node.layer.name}_sum")
            self.at_output[index] = relevance
            self.sent[index] = self.step_relevance(index, step, relevance)
            for tensor_id, tensor in zip(node.inputs, self.sent[index]):
                incoming.setdefault(tensor_id, []).append(tensor)
        return self.summed(incoming[self.graph.input_id], "input_sum")

    def summed(self, tensors, name):
        """Relevance reaching one tensor from several consumers adds up."""
        if len(tensors) == 1:
            return tensors[0]
        return keras.layers.Add(name=self.namer(name), dtype=self.plan.dtype)(tensors)

    @staticmethod
    def reverse_layer(step):
        """The layer that carries relevance back through ``step`` (``None``: passed)."""
        if isinstance(step.rule, rules_lib.Pass):
            return None
        return step.layer_type.handler(step.node.layer, step.rule, step.context)

    def addend_again(self, tensor_id, relevance):
        """The addend ``tensor_id`` computed again when ``relevance`` arrives (once)."""
        if tensor_id not in self.again:
            index = self.derived[tensor_id]
            node = self.plan.steps[index].node
            total = self.graph.tensors[self.rectified.get(index, node.outputs[0])]
            others = [self.forward_input(i, relevance) for i in node.inputs if i != tensor_id]
            step = self.plan.steps[self.step_of[tensor_id]]
            name = (step.user_layer or step.layer).name
            self.again[tensor_id] = AddendAgain(name=self.namer(f"{name}_output_again"))(
                [total, *others, relevance])
        return self.again[tensor_id]

    def forward_input(self, tensor_id, relevance):
        """The forward tensor ``tensor_id`` as a relevance layer reads it: the output of an
        activation whose input ``z`` the pass holds anyway (the layer before reads its own
        output, or ``z`` is a sum an addend is computed again from) is computed again from
        ``z`` when ``relevance`` arrives, and so is an addend only an ``Add`` reads, from the
        sum (see :mod:`tf_dtd.relevance.recompute`)."""
        if tensor_id in self.derived:
            return self.addend_again(tensor_id, relevance)
        tensor = self.graph.tensors[tensor_id]
        index = self.step_of.get(tensor_id)
        if tensor_id in self.rectified.values():
            return tensor  # held for the layer before, which reads it as its z
        if index is None or tensor_id in self.recomputed:
            return self.recomputed.get(tensor_id, tensor)
        step = self.plan.steps[index]
        if self.reverse[index] is not None or not isinstance(step.layer, RECOMPUTED_LAYERS):
            return tensor
        (z_id,) = step.node.inputs
        before = self.step_of.get(z_id)
        reads = getattr(self.reverse.get(before), "reads_output", None)
        held = z_id in self.totals or (  # a sum the pass holds for an addend computed again
            reads is not None and reads(self.graph.tensors[z_id].dtype))
        if before is None or not held:
            return tensor
        z = AfterRelevance(name=self.namer(f"{step.layer.name}_input_again"))(
            [self.graph.tensors[z_id], relevance])
        self.recomputed[tensor_id] = step.layer(z)
        return self.recomputed[tensor_id]

    def step_relevance(self, index, step, relevance):
        node = step.node
        reverse = self.reverse[index]
        if isinstance(step.rule, rules_lib.Pass):
            return [self.passed(step, relevance)]
        if reverse is None:
            return [self.passed(step, relevance, handler=True)]
        wanted = tuple(getattr(reverse, "constant_inputs", ()))
        if not set(wanted) <= set(step.context.input_constants):
            raise UnsupportedModelError(
                f"The relevance layer of {describe(node.layer)} asks for input constants "
                f"{wanted}, but only {step.context.input_constants} are available there."
            )
        constants = [self.constant(node.inputs[0], step.rule, key) for key in wanted]
        forward_inputs = [self.forward_input(i, relevance) for i in node.inputs]
        output_id = self.rectified.get(index, node.outputs[0])
        output = [] if not getattr(reverse, "reuses_output", False) else [
            self.addend_again(output_id, relevance) if output_id in self.derived
            else self.graph.tensors[output_id]]
        self.calls[index] = [*forward_inputs, *output, relevance, *constants]
        result = keras.tree.flatten(reverse(self.calls[index]))
        if len(result) != len(node.inputs):
            raise UnsupportedModelError(
                f"The relevance layer of {describe(node.layer)} returned {len(result)} tensors "
                f"for {len(node.inputs)} forward inputs; it must return one per input."
            )
        return result

    def passed(self, step, relevance, handler=False):
        """Relevance goes through unchanged, so the shape must not change."""
        node = step.node
        shapes = [tuple(self.graph.tensors[i].shape) for i in (*node.inputs, node.outputs[0])]
        if len(node.inputs) == 1 and shapes[0] == shapes[1]:
            return relevance
        if handler:
            raise UnsupportedModelError(
                f"The handler of layer {describe(node.layer)} returned None (pass-through), "
                "which only works for layers with one input of the output's shape. "
                f"Received: input shapes {shapes[:-1]}, output shape {shapes[-1]}"
            )
        raise InvalidArgumentError(
            f"Pass() keeps relevance unchanged and needs a layer with one input of its "
            f"output's shape. Received: layer {describe(step.user_layer or node.layer)} with "
            f"input shapes {shapes[:-1]} and output shape {shapes[-1]}"
        )

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
                                                 dtype=self.plan.dtype)
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

