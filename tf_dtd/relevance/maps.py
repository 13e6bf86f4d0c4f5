"""Relevance through layers without a kernel of their own: linear maps, routing, products.

- :class:`MapRelevance`: a rule on a linear map with fixed weights — ``Add`` (weights 1),
  ``Subtract`` (1, −1), ``Average``, average pooling, bilinear up-sampling, InceptionResNet's
  scaled residual — exactly as on a kernel layer: LRP-0 shares ``x_m / Σ x``, z⁺ shares
  ``x_m⁺ / Σ x⁺``, and so on.
- :class:`RoutingRelevance`: layers that only move or select values (reshaping, padding,
  concatenation, ``Maximum``): relevance follows the values exactly.
- max-pooling: :mod:`tf_dtd.relevance.pooling`.
- :class:`ShareRelevance`: products (gates), each factor a fixed share.
- :class:`LayerNormRelevance`: LayerNormalization with σ held constant (Ali et al., 2022).
"""

import keras
import numpy as np
from keras import ops

from tf_dtd import rules as rules_lib
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.engine import LinearRelevance, vjp
from tf_dtd.relevance.forward_copy import ForwardCopy

__all__ = ["MapRelevance", "ProportionalRelevance", "RoutingRelevance", "ShareRelevance",
           "LayerNormRelevance"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


@_register
class MapRelevance(ForwardCopy, LinearRelevance):
    """A linear rule on a linear map without a kernel: ``z = f(k_1·x_1, …, k_M·x_M)``.

    ``f`` is the forward layer; ``k_m`` are fixed per-operand scales (``Subtract`` is ``Add``
    with scales ``(1, −1)``). With ``positive=True`` the map's own weights are ≥ 0 (sums,
    averages, pooling, interpolation), so every linear rule applies through input variants
    (``x⁺``, ``x⁻``, ones); otherwise only LRP-0/ε do (they need no weight signs).

    Args:
        layer: the forward layer (or its serialised dict).
        rule: a linear rule (``Z()`` by default).
        operand_scales: one scale per operand (all 1 by default).
        positive: whether ``f``'s weights are all ≥ 0.
        **kwargs: see :class:`~tf_dtd.relevance.engine.LinearRelevance`.
    """

    def __init__(self, layer, rule=None, *, operand_scales=None, positive=True, **kwargs):
        super().__init__(rules_lib.Z() if rule is None else rule, **kwargs)
        self._wrap(layer)
        self.operand_scales = None if operand_scales is None else tuple(
            float(k) for k in operand_scales)
        if self.operand_scales is not None:
            self.num_inputs = len(self.operand_scales)
        self.positive = bool(positive)
        self._check_rule(self.rule)

    def configure(self, rule, **kwargs):
        self._check_rule(rule)
        super().configure(rule, **kwargs)

    def _check_rule(self, rule):
        if not self.positive and not isinstance(rule, rules_lib.Epsilon):
            raise InvalidArgumentError(
                f"Layer '{self.name}' is a linear map with signed weights: it takes Z or "
                f"Epsilon (which need no weight signs), or Pass. Received: {rule!r}"
            )

    @property
    def nonnegative_kernel(self):
        return self.positive and all(k >= 0 for k in self.operand_scales or ())

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if self.operand_scales is None:  # called as [*xs, relevance, *constants]
            self.num_inputs = len(shapes) - 1 - len(self.constant_inputs)
        self._build_wrapped(shapes[:self.num_inputs])

    def linear(self, xs, kernel):
        return self._apply(*[x * kernel[m] for m, x in enumerate(xs)])

    def elementwise(self, shapes):
        return (isinstance(self.forward_layer, (keras.layers.Add, keras.layers.Average))
                and all(tuple(s) == tuple(shapes[0]) for s in shapes))

    def kernel_value(self):
        scales = self.operand_scales or (1.0,) * self.num_inputs
        return ops.convert_to_tensor(np.asarray(scales), dtype=self.relevance_dtype)

    def flat(self, masks):
        ones = ops.ones((len(masks),), masks[0].dtype)
        return self._flat_via(lambda *m: self.linear(list(m), ones), masks)

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape[:self.num_inputs]]
        return shapes if self.num_inputs > 1 else shapes[0]

    def get_config(self):
        scales = None if self.operand_scales is None else list(self.operand_scales)
        return {**super().get_config(), "layer": keras.layers.serialize(self.forward_layer),
                "operand_scales": scales, "positive": self.positive}


@_register
class ProportionalRelevance(MapRelevance):
    """Share relevance in proportion to the contributions: ``R_i = x_i · Jᵀ (R / z)``.

    LRP-0 (``epsilon=0``) or LRP-ε on any layer that is linear in its inputs and has no kernel
    of its own — the building block for a user's custom linear layer.

    Args:
        layer: the forward layer (or its serialised dict).
        epsilon: the stabiliser of ``z``; exactly-zero denominators give zero relevance.
    """

    def __init__(self, layer, *, epsilon=0.0, rule=None, positive=False, **kwargs):
        if not epsilon >= 0:
            raise InvalidArgumentError(f"epsilon must be >= 0. Received: epsilon={epsilon}")
        if rule is None:
            rule = rules_lib.Epsilon(float(epsilon)) if epsilon else rules_lib.Z()
        super().__init__(layer, rule, positive=positive, **kwargs)


@_register
class RoutingRelevance(ForwardCopy, keras.layers.Layer):
    """Route relevance exactly through a layer that only moves or selects values.

    ``R_in = Jᵀ R``: for Flatten, Reshape, Permute, padding, cropping, Concatenate and
    winner-take-all max-pooling every output copies one input, so each output's relevance lands
    on that input, nothing created or lost (a tie in a pooling window goes to one winner).

    Args:
        layer: the forward layer (or its serialised dict).
    """

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self._wrap(layer)

    def build(self, input_shape):
        self._build_wrapped([tuple(s) for s in list(input_shape)[:-1]])

    def call(self, inputs):
        *xs, relevance = inputs
        _, _, grads = vjp(self._apply, xs, relevance)
        return list(grads) if len(xs) > 1 else grads[0]

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape[:-1]]
        return shapes if len(shapes) > 1 else shapes[0]

    def get_config(self):
        return {**super().get_config(), "layer": keras.layers.serialize(self.forward_layer)}


@_register
class ShareRelevance(keras.layers.Layer):
    """Give forward input ``i`` the share ``shares[i]`` of the relevance at the output.

    An input that was broadcast in the forward call (a ``(1, 1, C)`` gate times an
    ``(H, W, C)`` signal) receives its share summed over the broadcast axes, so the shares add
    up to the output's relevance.

    Args:
        shares: one non-negative number per forward input.

    Example:
        >>> ShareRelevance([1.0, 0.0])([signal, gate, relevance])  # all to the signal
    """

    def __init__(self, shares, **kwargs):
        super().__init__(**kwargs)
        shares = tuple(float(share) for share in shares)
        if not shares or min(shares) < 0:
            raise InvalidArgumentError(
                f"shares must be one non-negative number per input. Received: shares={shares}"
            )
        self.shares = shares

    def call(self, inputs):
        *xs, relevance = inputs
        if len(xs) != len(self.shares):
            raise InvalidArgumentError(
                f"{self.name} has {len(self.shares)} shares but was called on {len(xs)} inputs."
            )
        result = []
        for x, share in zip(xs, self.shares):
            if share == 0:
                result.append(ops.zeros_like(ops.cast(x, relevance.dtype)))
            else:
                result.append(_sum_to_shape(share * relevance, x.shape))
        return result if len(result) > 1 else result[0]

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape[:-1]]
        return shapes if len(shapes) > 1 else shapes[0]

    def get_config(self):
        return {**super().get_config(), "shares": list(self.shares)}


def _sum_to_shape(relevance, shape):
    """Undo broadcasting: sum ``relevance`` over the axes ``shape`` lacks or has as 1."""
    extra = len(relevance.shape) - len(shape)
    if extra > 0:
        relevance = ops.sum(relevance, axis=tuple(range(extra)))
    axes = tuple(axis for axis in range(1, len(shape))
                 if shape[axis] == 1 and relevance.shape[axis] != 1)
    return ops.sum(relevance, axis=axes, keepdims=True) if axes else relevance


@_register
class LayerNormRelevance(ProportionalRelevance):
    """Relevance through ``LayerNormalization`` with the standard deviation held constant.

    ``z_i = γ_i (x_i − mean(x)) / σ + β_i`` with ``σ`` fixed is affine in ``x``, so LRP-0/ε
    ``R_j = Σ_i x_j ∂z_i/∂x_j · R_i / z_i`` applies (Ali et al., 2022, "XAI for Transformers",
    arXiv:2202.07304). Without ``β`` it conserves relevance; ``β`` absorbs its share. With
    ``rms_scaling`` the map is a per-sample scaling and relevance passes through unchanged.

    Args:
        layer: the forward ``LayerNormalization`` (or its serialised dict).
        epsilon, rule: see :class:`ProportionalRelevance`.
    """

    def linear(self, xs, kernel):
        layer, x = self.forward_layer, xs[0] * kernel[0]
        rank = len(x.shape)
        axes = sorted(a % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple))
                                         else [layer.axis]))
        shape = [x.shape[a] if a in axes else 1 for a in range(rank)]
        shape[0] = 1
        variance = ops.var(x, axis=axes, keepdims=True)
        inverse_std = ops.stop_gradient(ops.rsqrt(variance + layer.epsilon))
        centred = x if layer.rms_scaling else x - ops.mean(x, axis=axes, keepdims=True)
        z = centred * inverse_std
        if layer.gamma is not None:
            z = z * ops.reshape(ops.cast(layer.gamma, x.dtype), shape)
        return z

    def bias_value(self):
        beta = self.forward_layer.beta
        return None if beta is None else ops.cast(beta, self.relevance_dtype)

    def add_bias(self, z, bias):
        layer = self.forward_layer
        rank = len(z.shape)
        axes = [a % rank for a in (layer.axis if isinstance(layer.axis, (list, tuple))
                                   else [layer.axis])]
        shape = [z.shape[a] if a in axes else 1 for a in range(rank)]
        shape[0] = 1
        return z + ops.reshape(bias, shape)
