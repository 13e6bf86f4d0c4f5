"""Activations recomputed in the relevance pass instead of held from the forward pass.

A relevance layer reads its forward input ``x``; LRP-ε (and every rule with a part whose
denominator is the layer's own output, or that looks at its sign) also reads the layer's output
``z``. Where ``x`` is an activation of the ``z`` of the layer before (``x = relu(z)``), holding
both from the forward pass to the relevance pass doubles what the pass holds. The builder
(:mod:`tf_dtd.relevance.build`) then feeds the relevance layer ``activation(z)`` computed again
once relevance reaches it (:class:`AfterRelevance`): an element-wise op, and ``x`` is freed
as soon as the forward pass has used it. Behind a plain ReLU whose readers send no relevance
where it is 0, the builder has the layer read ``relu(z)`` as its ``z`` instead, and nothing is
computed again (:func:`tf_dtd.relevance.reuse.rectified_outputs`).

An addend of a sum that only the sum reads (ResNet's third convolution, whose output the
``Add``'s LRP-ε and the convolution's own ε read) is computed again as the sum's ``z`` minus the
other addends (:class:`AddendAgain`, :func:`~tf_dtd.relevance.reuse.derived_addends`), which
the pass holds anyway: equal up to float32 rounding where the sum is positive, and wherever the
``Add`` reads ``relu(sum)`` as its ``z``, the units with ``sum ≤ 0`` hold no relevance. Where
the ``Add`` reads no output of its own (z⁺), the pass holds the sum in place of the activation
after it, which is computed again from the sum like the activations above.
"""

import keras

from tf_dtd.relevance.tape import after

__all__ = ["AddendAgain", "AfterRelevance", "RECOMPUTED_LAYERS"]

# Element-wise activation layers without state: calling one again gives the same values.
RECOMPUTED_LAYERS = (keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                     keras.layers.ELU)


@keras.saving.register_keras_serializable(package="tf_dtd")
class AfterRelevance(keras.layers.Layer):
    """``[values, relevance] -> values``, computed no earlier than ``relevance``.

    Without it TensorFlow would recompute an activation as soon as its input exists (right
    after the forward pass) and hold it until relevance reaches the layer that reads it.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)  # keep each tensor's dtype
        super().__init__(**kwargs)

    def call(self, inputs):
        values, relevance = inputs
        return after(relevance, values)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="tf_dtd")
class AddendAgain(keras.layers.Layer):
    """``[total, *others, relevance] -> total − Σ others``, computed no earlier than ``relevance``:
    one addend of a sum from the sum and the other addends, instead of held from the forward pass.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    def call(self, inputs):
        *values, relevance = inputs
        total, *others = after(relevance, values)
        for other in others:
            total = total - other
        return total

    def compute_output_shape(self, input_shape):
        return input_shape[0]
