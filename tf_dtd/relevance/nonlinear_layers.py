"""Relevance layers for interactions that no linear LRP rule covers: products and LayerNorm.

Both are modelling choices, documented in ``docs/layers.md``:

- :class:`ShareRelevance` gives each factor of a product a fixed share of the relevance. A gate
  (squeeze-and-excitation) gets none and its signal all ("signal takes all", Arras et al. 2017);
  ``Composite(multiply="split")`` gives each of the n factors ``1/n`` (the "half" rule of
  Arras et al. 2019).
- :class:`LayerNormRelevance` treats the per-sample standard deviation as a constant and keeps
  the centring as the linear map it is (Ali et al. 2022, "XAI for Transformers"); relevance is
  then shared proportionally through that map, and ``beta`` absorbs its share like a bias.
"""

import keras
from keras import ops

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.layers import ProportionalRelevance, _RelevanceLayer

__all__ = ["ShareRelevance", "LayerNormRelevance"]

_register = keras.saving.register_keras_serializable(package="tf_dtd")


@_register
class ShareRelevance(_RelevanceLayer):
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

    ``z_i = γ_i (x_i − mean(x)) / σ + β_i`` with ``σ`` fixed is affine in ``x``, so the
    proportional rule ``R_j = Σ_i x_j ∂z_i/∂x_j · R_i / z_i`` applies. Without ``β`` it
    conserves relevance; ``β`` absorbs its share. With ``rms_scaling`` the map is a per-sample
    scaling and relevance passes through unchanged.

    Args:
        layer: the forward ``LayerNormalization`` (or its serialised dict).
        epsilon: the stabiliser of ``z`` (see :class:`tf_dtd.layers.ProportionalRelevance`).
    """

    def _forward(self, x):
        layer = self.forward_layer
        x = ops.cast(x, self.compute_dtype)
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
        if layer.beta is not None:
            z = z + ops.reshape(ops.cast(layer.beta, x.dtype), shape)
        return z
