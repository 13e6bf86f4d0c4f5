"""Forward tensors the relevance pass reads in place of others it would have to hold.

A relevance layer that reads its own output ``z`` (a denominator, a sign) and whose output only a
plain ReLU reads can read ``relu(z)`` instead, where no unit with ``z ≤ 0`` holds relevance
(:func:`rectified_outputs`): the pass then holds the ReLU's output alone. An addend that only an
``Add`` reads is computed again from the sum and the other addends (:func:`derived_addends`,
:class:`~tf_dtd.relevance.recompute.AddendAgain`). The builder (:mod:`tf_dtd.relevance.build`)
asks both once, before it walks the graph.
"""

import keras

from tf_dtd.model import analysis
from tf_dtd.relevance.recompute import RECOMPUTED_LAYERS

__all__ = ["derived_addends", "rectified_outputs"]


class _Graph:
    """The plan's graph, its steps' relevance layers, and who reads what."""

    def __init__(self, plan, reverse):
        self.graph, self.steps, self.reverse = plan.graph, plan.steps, reverse
        self.consumers = self.graph.consumers()
        self.step_of = {step.node.outputs[0]: index for index, step in enumerate(self.steps)}

    def readers(self, tensor_id):
        """``(node, relevance layer or None)`` for every node that reads ``tensor_id``."""
        return [(node, self.reverse.get(self.step_of.get(node.outputs[0])))
                for node in self.consumers.get(tensor_id, [])]

    def no_relevance_at_zeros(self, tensor_id):
        """Whether the relevance reaching ``tensor_id`` is 0 wherever its value is: every
        reader sends none where its input is 0, or (winner-take-all max-pooling) sends there
        only what reaches outputs that are 0, which hold none in turn."""
        readers = self.readers(tensor_id)
        if tensor_id == self.graph.output_id or not readers:
            return False
        for node, layer in readers:
            if getattr(layer, "sends_zero_where_input_is_zero", bool)():
                continue
            if not (getattr(layer, "feeds_zeros_only_from_zeros", bool)()
                    and self.no_relevance_at_zeros(node.outputs[0])):
                return False
        return True

    def holds_sum(self, node, layer, dtype):
        """Whether the pass would hold an ``Add``'s sum anyway: its relevance layer reads no
        output of its own, and every reader of the sum reads it as a forward input or is an
        activation the builder then computes again from it when relevance arrives."""
        reads = getattr(layer, "reads_output", None)
        sum_id = node.outputs[0]
        readers = self.readers(sum_id)
        if reads is None or reads(dtype) or sum_id == self.graph.output_id or not readers:
            return False
        return all(own is not None or isinstance(reader.layer, RECOMPUTED_LAYERS)
                   for reader, own in readers)


def rectified_outputs(plan, reverse):
    """Step index -> the output of the plain ReLU it reads as its ``z``.

    A layer whose output only a ReLU reads, and that reads it unit by unit and only where
    relevance is (LRP-0, ε, γ's sign), can read ``relu(z)`` instead where no relevance reaches
    the ReLU's output where it is 0: units with ``z ≤ 0`` then hold none, and elsewhere
    ``relu(z) = z``, bit for bit. The pass then holds the ReLU's output alone and computes no
    ReLU again, and the forward pass can fuse it into the map (ResNet50, LRP-ε, batch 8: the
    ReLUs were 7 % of the time, computed twice; VGG16, γbox: each γ convolution's ``z``).

    Args:
        plan: the :class:`~tf_dtd.relevance.plan.Plan`.
        reverse: step index -> its relevance layer (``None``: passed).
    """
    graph, result = _Graph(plan, reverse), {}
    for index, layer in reverse.items():
        z_id = graph.steps[index].node.outputs[0]
        readers = graph.readers(z_id)
        reads = getattr(layer, "reads_output_unit_by_unit", None)
        if len(readers) != 1 or reads is None or not reads(graph.graph.tensors[z_id].dtype):
            continue
        relu = graph.step_of.get(readers[0][0].outputs[0])
        if relu is None:
            continue
        relu_id = graph.steps[relu].node.outputs[0]
        if (reverse[relu] is None and _is_plain_relu(graph.steps[relu].layer)
                and graph.graph.tensors[relu_id].dtype == graph.graph.tensors[z_id].dtype
                and graph.no_relevance_at_zeros(relu_id)):
            result[index] = relu_id
    return result


def derived_addends(plan, reverse):
    """Tensor id -> step index of the ``Add`` whose sum minus its other addends gives it.

    An addend that only an ``Add`` reads, where the addend's own layer reads its output not at
    all or unit by unit (a denominator; γ's sign), is computed again as ``sum − Σ others``, and
    the pass no longer holds it (ResNet50: the third convolution of each block, 4× the width
    of the other two), when the pass holds the sum anyway:

    - the ``Add`` reads its ``z`` as a denominator and sends relevance only as products of its
      inputs (LRP-0, ε); where it reads ``relu(sum)`` as its ``z``, the addend computed again
      is wrong at units with ``sum ≤ 0``, which hold no relevance;
    - or the ``Add`` reads no output of its own (z⁺, whose denominator is the addends'
      positive parts), and every reader of the sum reads it as a forward input or is an
      activation that the builder then computes again from it (ResNet's ReLU after the sum):
      the pass holds the sum instead of the activation, and the addend computed again is the
      held one up to the rounding of the sum everywhere.

    Where rounding flips the sign of a unit near 0, γ takes the other sign's coefficients
    there, and z⁺ credits the unit's positive part to the other addend; what moves is as small
    as the unit, except where the sum absorbed a positive addend below half a unit in the last
    place of a negative other: z⁺ then spreads that unit's relevance to the other addend.
    Not behind a layer that passes relevance through (a ``Dropout``: its input is what is
    held; a ReLU whose output a layer reads as its ``z``; the model input).

    Args:
        plan: the :class:`~tf_dtd.relevance.plan.Plan`.
        reverse: step index -> its relevance layer (``None``: passed).
    """
    graph, result = _Graph(plan, reverse), {}
    for index, layer in reverse.items():
        node = graph.steps[index].node
        dtype = graph.graph.tensors[node.outputs[0]].dtype
        if type(graph.steps[index].layer) is not keras.layers.Add or layer is None:
            continue
        if not (_reads_sum_as_denominator(layer, dtype) or graph.holds_sum(node, layer, dtype)):
            continue
        for operand in reversed(node.inputs):
            producer = graph.step_of.get(operand)
            own = None if producer is None else reverse[producer]
            if (own is None or node.inputs.count(operand) != 1
                    or graph.consumers.get(operand) != [node]
                    or _reads_output_beyond_units(own, dtype)):
                continue
            result[operand] = index
            break
    return result


def _reads_sum_as_denominator(layer, dtype):
    """Whether an ``Add``'s relevance layer reads its ``z`` as a denominator alone and sends
    relevance only as products of its inputs."""
    reads = getattr(layer, "reads_output_as_denominator", None)
    return bool(reads and reads(dtype)) and layer.sends_zero_where_input_is_zero()


def _reads_output_beyond_units(layer, dtype):
    """Whether a relevance layer reads its forward output other than unit by unit (a statistic
    of the sample, relative ε)."""
    reads = getattr(layer, "reads_output", None)
    return bool(reads and reads(dtype)) and not layer.reads_output_unit_by_unit(dtype)


def _is_plain_relu(layer):
    """``max(x, 0)``: a ``ReLU`` without cap, slope or threshold, or ``Activation("relu")``."""
    if isinstance(layer, keras.layers.ReLU):
        return (layer.max_value is None and not layer.negative_slope
                and not layer.threshold)
    return (isinstance(layer, keras.layers.Activation)
            and analysis.activation_name(layer) == "relu")
