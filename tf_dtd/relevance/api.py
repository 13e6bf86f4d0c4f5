"""The public entry points: :func:`relevance_model`, :func:`explain` and :func:`sync_weights`."""

import contextlib
import logging
import weakref

import numpy as np

from tf_dtd import checks, composites
from tf_dtd.errors import InvalidArgumentError, describe
from tf_dtd.model import canonize
from tf_dtd.model import graph as graph_lib
from tf_dtd.relevance.build import assemble, build
from tf_dtd.relevance.plan import decide

__all__ = ["relevance_model", "explain", "sync_weights"]

# What sync_weights needs, per relevance model: (layer, origin) pairs and the user's layers.
_BINDINGS = weakref.WeakKeyDictionary()
# explain's relevance models, per user model: {arguments: relevance model}.
_EXPLAIN_CACHE = weakref.WeakKeyDictionary()


def relevance_model(model, rules="deep_taylor_bounded", *, input_range=None, target="max",
                    return_prediction=False, layers=None, name=None):
    """Clone ``model`` into a Keras model that maps inputs to relevance heatmaps.

    Relevance starts at the selected pre-activation logit (a final softmax / sigmoid is
    removed), so for a conservative rule set the heatmap of a sample sums to that logit.

    Args:
        model: a built Functional or Sequential model with one input and one output; nested
            models are allowed. It is never modified.
        rules: a preset name (see ``tf_dtd.PRESETS``), one rule for every kernel layer, or a
            :class:`tf_dtd.Composite`.
        input_range: ``(low, high)``, the box the inputs live in — scalars or arrays that
            broadcast to one sample (per channel or per pixel). Required by presets using z^B.
        target: ``"max"`` (the top logit of each sample), an ``int`` class index, or
            ``"input"``: the model then takes ``[x, class_ids]`` with int ``class_ids`` of shape
            ``(batch,)``.
        return_prediction: also return the logits: outputs ``[relevance, logits]``.
        layers: names of layers of ``model`` whose relevance to return as well: the relevance
            arriving at each one's output (from all its readers). The outputs are then a dict
            ``{"relevance": ..., "layers": {name: ...}}`` (plus ``"logits"`` with
            ``return_prediction``). A BatchNorm folded into the layer before it, or a removed
            final softmax, has no relevance of its own: name the layer before it.
        name: name of the relevance model; ``"<model>_relevance"`` by default.

    Returns:
        A ``keras.Model``; ``predict(x)`` returns relevance with the shape of ``x``. Calling it
        on a batch of 0 samples returns an empty result of the right shape (Keras' ``predict``
        itself refuses empty inputs).

    Raises:
        UnsupportedModelError: subclassed or unbuilt model, several inputs or outputs.
        UnsupportedLayerError: a layer without a handler (see ``tf_dtd.register_layer_rule``).
        InvalidArgumentError: a bad ``rules``, ``input_range`` or ``target``.

    Example:
        >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded",
        ...                                    input_range=(0.0, 1.0))
        >>> heatmaps = relevance.predict(images)          # same shape as images
    """
    plan = decide(model, rules, input_range=input_range, target=target)
    built = build(plan)
    result = assemble(built, return_prediction=return_prediction, layers=layers, name=name)
    _BINDINGS[result] = (built.weight_bindings(), _user_layers(model))
    return result


def sync_weights(relevance_model, model):
    """Copy the current weights of ``model`` into a relevance model built from it.

    BatchNorm folding and everything else derived from the weights are recomputed; the
    relevance model is neither rebuilt nor retraced (its variables are assigned), so a training
    loop can refresh its heatmaps cheaply.

    Args:
        relevance_model: a model returned by :func:`relevance_model` in this process.
        model: the model it was built from (whose weights may have changed since).

    Returns:
        ``relevance_model``, refreshed.

    Raises:
        InvalidArgumentError: ``relevance_model`` was not built from ``model`` in this process
            (a reloaded relevance model has no link to a Keras model).

    Example:
        >>> relevance = tf_dtd.relevance_model(model, "lrp_epsilon")
        >>> model.fit(x, y, epochs=1)
        >>> tf_dtd.sync_weights(relevance, model)          # heatmaps of the trained weights
    """
    bindings = _BINDINGS.get(relevance_model)
    if bindings is None or not bindings[1] <= _user_layers(model):
        raise InvalidArgumentError(
            f"sync_weights needs a relevance model built by tf_dtd.relevance_model from model "
            f"{describe(model)} in this process. Received: relevance model "
            f"{describe(relevance_model)}"
        )
    for layer, origin in bindings[0]:
        weights = canonize.canonical_weights(layer, origin)
        if weights:
            layer.set_weights(weights)
    return relevance_model


def _user_layers(model):
    return frozenset(id(node.layer) for node in graph_lib.trace(model).nodes)


def explain(model, x, rules="deep_taylor_bounded", *, input_range=None, target="max",
            return_prediction=False, name=None, batch_size=32, verbose=0):
    """One call: relevance heatmaps of ``x`` under ``model`` as NumPy arrays.

    Takes the arguments of :func:`relevance_model`; ``target`` may also be an array of class ids,
    one per sample (instead of ``"input"``). A NumPy ``x`` is checked first: numeric, the
    model's sample shape; an empty batch gives empty results; inputs outside the z^B box of the
    rules give a :class:`tf_dtd.errors.InputRangeWarning` (z^B relevance can turn negative there).
    The relevance model is built once per model and arguments and reused (with the model's
    current weights) by later calls, so ``explain`` in a loop does not retrace.

    Example:
        >>> heatmaps = tf_dtd.explain(model, images, input_range=(0.0, 1.0))
    """
    if isinstance(target, str) and target == "input":
        raise InvalidArgumentError(
            "explain takes the class ids directly: pass target=<array of class ids, one per "
            "sample>. Received: target='input'"
        )
    if np.ndim(target) == 0 and not isinstance(target, str):
        target = int(target) if np.issubdtype(np.asarray(target).dtype, np.integer) else target
    is_array = not (hasattr(x, "element_spec") or not hasattr(x, "__len__"))
    if is_array:
        x = checks.check_batch(x, model)
    class_ids = None
    if not isinstance(target, (str, int)):
        if not is_array:
            raise InvalidArgumentError(
                "Per-sample class ids need x as an array. For a tf.data dataset use "
                "relevance_model(..., target='input') and yield ((x, class_ids),) batches. "
                f"Received: x of type {type(x).__name__}"
            )
        class_ids = checks.check_class_ids(target, len(x), model.output_shape[-1])
        target = "input"
    rel_model = _cached(model, rules, input_range, target, return_prediction, name)
    if is_array:
        checks.warn_outside_box(x, composites.resolve(rules, checks.check_input_range(
            input_range)).first)
        if len(x) == 0:  # Keras' predict refuses an empty batch
            empty = [np.zeros((0, *tuple(t.shape[1:])), t.dtype) for t in rel_model.outputs]
            return empty if return_prediction else empty[0]
    data = x if class_ids is None else [x, class_ids]
    with _first_traces_unreported():
        return rel_model.predict(data, batch_size=batch_size, verbose=verbose)


class _FirstTraceFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing".

    TensorFlow counts traces per Python function, and every Keras model's predict function is
    the same closure: explaining with a sixth preset or a sixth model traces a new relevance
    model once, which TensorFlow reports as retracing. ``explain``'s cache makes repeated calls
    with the same arguments reuse one trace (tests/test_explain_cache.py checks the count).
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _first_traces_unreported():
    logger, dropped = logging.getLogger("tensorflow"), _FirstTraceFilter()
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def _cached(model, rules, input_range, target, return_prediction, name):
    """The relevance model of these arguments, built on first use and synced afterwards."""
    key = (_rules_key(rules), _range_key(input_range), target, bool(return_prediction), name)
    try:
        per_model = _EXPLAIN_CACHE.get(model)
        if per_model is None:
            per_model = _EXPLAIN_CACHE[model] = {}
            weakref.finalize(model, _release, per_model)
    except TypeError:  # not weak-referenceable: no caching
        per_model = {}
    if key in per_model:
        cached, _ = per_model[key]
        sync_weights(cached, model)
        return cached
    result = relevance_model(model, rules, input_range=input_range, target=target,
                             return_prediction=return_prediction, name=name)
    per_model[key] = (result, rules)  # rules kept alive: its id is part of the key
    return result


def _release(per_model):
    """The model is gone: free its cached relevance models.

    Keras' traced predict function is kept alive by TensorFlow beyond the model that traced it,
    and its closure holds the relevance model; dropping it lets the relevance model go.
    """
    for relevance, _ in per_model.values():
        relevance.predict_function = None
    per_model.clear()


def _rules_key(rules):
    return rules if isinstance(rules, str) else ("id", id(rules))


def _range_key(input_range):
    if input_range is None:
        return None
    low, high = checks.check_input_range(input_range)
    return tuple((a.shape, a.tobytes()) for a in (low, high))
