"""Refresh a relevance model with the current weights of the model it was built from.

TEMPORARY implementation, to be replaced by the core one (same name and signature): it builds
a throwaway relevance model from ``model`` with the arguments recorded by
:func:`remember_arguments` and copies its weights over. The core version recomputes the BatchNorm
folding and the rules' modified weights in place and needs no recorded arguments.
"""

import weakref

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.rewriter import relevance_model as build_relevance_model

__all__ = ["sync_weights", "remember_arguments"]

_ARGUMENTS = weakref.WeakKeyDictionary()  # TEMPORARY: relevance model -> build arguments


def remember_arguments(relevance_model, **arguments):
    """TEMPORARY: record the keyword arguments ``relevance_model`` was built with.

    Example:
        >>> rel = tf_dtd.relevance_model(model, "deep_taylor", return_prediction=True)
        >>> remember_arguments(rel, rules="deep_taylor", return_prediction=True)
    """
    _ARGUMENTS[relevance_model] = dict(arguments)


def sync_weights(relevance_model, model):
    """Copy the current weights of ``model`` into the relevance model built from it.

    BatchNorm folding and the rules' modified weights are recomputed; the relevance model keeps
    its graph and its traced functions (no rebuild, no retrace). Use it during training, e.g.
    in a callback, to explain the model as it is now.

    TEMPORARY implementation: it rebuilds a throwaway relevance model from ``model`` with the
    arguments recorded by :func:`remember_arguments`, and copies its weights.

    Args:
        relevance_model: a relevance model built from ``model`` (or from a model of the same
            architecture).
        model: the Keras model, with its current weights.

    Returns:
        ``relevance_model``, updated in place.

    Raises:
        InvalidArgumentError: the relevance model's arguments were not recorded, or it does not
            match ``model``'s architecture.

    Example:
        >>> model.fit(x, y, epochs=1)
        >>> tf_dtd.sync_weights(relevance, model)   # heatmaps of the trained weights
    """
    if relevance_model not in _ARGUMENTS:
        raise InvalidArgumentError(
            "Expected a relevance model whose build arguments were recorded with "
            "tf_dtd.relevance.sync.remember_arguments (temporary sync_weights). Received: "
            f"relevance_model={relevance_model.name!r}")
    fresh = build_relevance_model(model, **_ARGUMENTS[relevance_model])
    weights = fresh.get_weights()
    current = relevance_model.get_weights()
    shapes = [w.shape for w in current], [w.shape for w in weights]
    if shapes[0] != shapes[1]:
        raise InvalidArgumentError(
            f"Expected the relevance model of model {model.name!r}. Received: a relevance model "
            f"{relevance_model.name!r} with {len(current)} weights of other shapes")
    relevance_model.set_weights(weights)
    return relevance_model
