"""Baseline explainers to compare LRP / Deep Taylor heatmaps with, all with one signature.

An *explainer* is a callable ``explainer(model, x, targets) -> heatmaps``: ``x`` a NumPy batch,
``targets`` int class ids of shape ``(N,)``, ``heatmaps`` a NumPy array shaped like ``x``. The
faithfulness metrics (:mod:`tf_dtd.evaluate.perturbation`, :mod:`tf_dtd.evaluate.sanity`) take
any explainer, so tf_dtd's presets (:func:`lrp`) and the baselines go through the same code.

Every score is the **pre-softmax logit** of the target class (:func:`logit_model`). Gradients
are taken with TF ops on whole batches (integrated gradients and occlusion batch their steps /
occluded copies too); each sample's result depends only on that sample.

Example:
    >>> from tf_dtd.evaluate import baselines
    >>> targets = baselines.predict_logits(model, x).argmax(axis=1)
    >>> explainers = {"gradient": baselines.gradient, "ig": baselines.integrated_gradients(),
    ...               "lrp": baselines.lrp("deep_taylor_bounded", input_range=(0.0, 1.0))}
    >>> heatmaps = {name: f(model, x, targets) for name, f in explainers.items()}
"""

import hashlib
import itertools

import numpy as np
import tensorflow as tf

from tf_dtd import checks
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.model.canonize import logit_model
from tf_dtd.relevance.api import explain

__all__ = [
    "logit_model", "logit_predictor", "predict_logits", "sample_rngs", "random_baseline",
    "gradient", "gradient_times_input", "integrated_gradients", "occlusion", "lrp",
]

def predict_logits(model, x, *, batch_size=256):
    """The logits of ``x`` under ``model`` (final softmax / sigmoid removed), ``(N, classes)``."""
    x = checks.float_batch(x, model)
    return logit_predictor(logit_model(model), x, checks.positive_int("batch_size", batch_size))(x)


def sample_rngs(x, seed):
    """One ``numpy.random.Generator`` per sample, seeded by ``seed`` and the sample's content.

    The same sample gets the same stream wherever it sits in a batch (batch invariance); two
    equal samples get equal streams.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"Expected seed to be an int >= 0. Received: seed={seed!r}")
    rngs = []
    for sample in np.asarray(x):
        digest = hashlib.blake2b(np.ascontiguousarray(sample, "float32").tobytes(),
                                 digest_size=8).digest()
        rngs.append(np.random.default_rng([int(seed), *np.frombuffer(digest, "uint32")]))
    return rngs


def per_sample_value(value, x, name):
    """``value`` broadcast to one sample of the batch ``x``, in ``x``'s dtype."""
    try:
        return np.broadcast_to(np.asarray(value, x.dtype), x.shape[1:])
    except ValueError:
        raise InvalidArgumentError(
            f"Expected a {name} that broadcasts to one sample of shape {x.shape[1:]}. "
            f"Received: {name} of shape {np.shape(value)}") from None


def random_baseline(seed=0):
    """An explainer returning uniform noise in ``[0, 1)``: the floor any heatmap should beat.

    Example:
        >>> heatmaps = random_baseline(seed=1)(model, x, targets)
    """
    def random_heatmaps(model, x, targets):
        x = checks.float_batch(x, model)
        checks.check_class_ids(targets, len(x), model.output_shape[-1], name="targets")
        return np.stack([rng.random(x.shape[1:]) for rng in sample_rngs(x, seed)]).astype(
            _dtype(x)).reshape(x.shape)

    random_heatmaps.__name__ = f"random_baseline(seed={seed})"
    return random_heatmaps


def gradient(model, x, targets, *, batch_size=64):
    """∂f_t/∂x: the gradient of the target logit f_t (Simonyan et al., 2014; no absolute value).

    Example:
        >>> heatmaps = gradient(model, x, targets)
    """
    x, targets, logits = _prepare(model, x, targets)
    return _differentiator(logits, x, checks.positive_int("batch_size", batch_size))(x, targets)


def gradient_times_input(model, x, targets, *, batch_size=64):
    """x ⊙ ∂f_t/∂x (Shrikumar et al., 2016): LRP-0 on bias-free ReLU networks.

    Example:
        >>> heatmaps = gradient_times_input(model, x, targets)
    """
    x, targets, logits = _prepare(model, x, targets)
    return x * _differentiator(logits, x, checks.positive_int("batch_size", batch_size))(x, targets)


def integrated_gradients(steps=32, baseline=0.0, *, batch_size=256):
    """Integrated gradients (Sundararajan et al., 2017, arXiv:1703.01365) as an explainer.

    ``(x − x') ⊙ (1/m) Σ_k ∂f_t/∂x (x' + α_k (x − x'))`` with the midpoint rule
    ``α_k = (k + ½)/m``, ``m = steps``; ``x'`` is ``baseline`` (scalar, or an array that
    broadcasts to one sample). Σ IG ≈ f_t(x) − f_t(x') (completeness). All steps of a chunk of
    ``batch_size // steps`` samples go through the model in one call.

    Example:
        >>> heatmaps = integrated_gradients(steps=64)(model, x, targets)
    """
    steps = checks.positive_int("steps", steps)
    batch_size = checks.positive_int("batch_size", batch_size)
    alphas = (np.arange(steps) + 0.5) / steps

    def ig(model, x, targets):
        x, targets, logits = _prepare(model, x, targets)
        base = per_sample_value(baseline, x, "baseline")
        shape = (-1, *x.shape[1:])
        path = alphas.astype(x.dtype).reshape((steps, 1) + (1,) * (x.ndim - 1))
        gradients = _differentiator(logits, x, batch_size)
        chunk = max(1, batch_size // steps)
        out = np.zeros_like(x)
        for start in range(0, len(x), chunk):
            diff = x[start:start + chunk] - base
            points = (base + path * diff).reshape(shape)   # step-major: (steps·n, ...)
            ids = np.tile(targets[start:start + chunk], steps)
            grads = gradients(points, ids).reshape((steps,) + diff.shape)
            out[start:start + chunk] = diff * grads.mean(axis=0)
        return out

    ig.__name__ = f"integrated_gradients(steps={steps})"
    return ig


def occlusion(patch=4, stride=None, fill=0.0, *, batch_size=256):
    """Occlusion (Zeiler & Fergus, 2014, arXiv:1311.2901) as an explainer.

    A ``patch``-sized square (all channels) slides over the spatial axes with ``stride``
    (default ``patch``; the last patch of each row and column touches the border). Each patch is
    replaced by ``fill`` and the drop ``f_t(x) − f_t(x_occluded)`` is spread evenly over the
    patch's pixels and channels (a non-overlapping patch's heatmap sums to its drop); pixels
    covered by several patches take the mean. All occluded copies of a chunk of samples go
    through the model together. Inputs are channels-last; ``(N, D)`` inputs are 1-D signals.

    Example:
        >>> heatmaps = occlusion(patch=4, stride=2)(model, x, targets)
    """
    patch = checks.positive_int("patch", patch)
    stride = patch if stride is None else checks.positive_int("stride", stride)
    batch_size = checks.positive_int("batch_size", batch_size)

    def occlude(model, x, targets):
        x, targets, logits = _prepare(model, x, targets)
        view = x[..., None] if x.ndim == 2 else x
        masks = _patch_masks(view.shape[1:-1], patch, stride)          # (P, *spatial)
        share = masks / masks.sum(axis=tuple(range(1, masks.ndim)), keepdims=True)
        share = share / view.shape[-1]
        cover = masks.sum(axis=0)
        predict = logit_predictor(logits, x, batch_size)
        clean = predict(x)[np.arange(len(x)), targets]
        out = np.zeros_like(view)
        chunk = max(1, batch_size // len(masks))
        for start in range(0, len(x), chunk):
            part = view[start:start + chunk]
            copies = np.where(masks[None, ..., None], np.asarray(fill, x.dtype), part[:, None])
            scores = predict(copies.reshape((-1, *x.shape[1:])))
            ids = np.repeat(targets[start:start + chunk], len(masks))
            drops = clean[start:start + chunk, None] - scores[np.arange(len(ids)), ids].reshape(
                len(part), len(masks))
            spread = np.tensordot(drops, share, axes=1)                   # (n, *spatial)
            out[start:start + chunk] = (spread / np.maximum(cover, 1))[..., None]
        return out.reshape(x.shape)

    occlude.__name__ = f"occlusion(patch={patch}, stride={stride})"
    return occlude


def lrp(rules="deep_taylor_bounded", *, input_range=None, batch_size=32):
    """An explainer calling ``tf_dtd.explain(model, x, rules, input_range=..., target=targets)``.

    Example:
        >>> heatmaps = lrp("lrp_epsilon")(model, x, targets)
    """
    def relevance(model, x, targets):
        x = checks.float_batch(x, model)
        targets = checks.check_class_ids(targets, len(x), model.output_shape[-1], name="targets")
        return np.asarray(explain(model, x, rules, input_range=input_range, target=targets,
                                  batch_size=batch_size))

    relevance.__name__ = f"lrp({rules!r})"
    return relevance


def _patch_masks(spatial, patch, stride):
    """Boolean masks ``(P, *spatial)``, one per patch position."""
    starts = []
    for size in spatial:
        width = min(patch, size)
        axis = list(range(0, size - width + 1, stride))
        if axis[-1] + width < size:
            axis.append(size - width)
        starts.append([(s, s + width) for s in axis])
    masks = np.zeros((int(np.prod([len(s) for s in starts])), *spatial), bool)
    for index, corner in enumerate(itertools.product(*starts)):
        masks[(index, *(slice(a, b) for a, b in corner))] = True
    return masks


def _dtype(x):
    return "float64" if np.asarray(x).dtype == np.float64 else "float32"


def _prepare(model, x, targets):
    x = checks.float_batch(x, model)
    targets = checks.check_class_ids(targets, len(x), model.output_shape[-1], name="targets")
    return x, targets, logit_model(model)


def logit_predictor(logits_model, x, batch_size):
    """``predict(batch) -> logits`` for batches like ``x``, in chunks of ``batch_size``, through
    one traced function (traced once, however many calls)."""
    spec = tf.TensorSpec((None, *x.shape[1:]), x.dtype)
    step = tf.function(lambda inputs: tf.cast(logits_model(inputs, training=False), x.dtype),
                       input_signature=[spec])
    classes = logits_model.output_shape[-1]

    def predict(batch):
        parts = [step(tf.constant(batch[i:i + batch_size])).numpy()
                 for i in range(0, len(batch), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, classes), x.dtype)

    return predict


def _differentiator(logits_model, x, batch_size):
    """``gradients(batch, targets)``: ∂ logit[n, targets[n]] / ∂ batch[n] for every sample."""
    specs = [tf.TensorSpec((None, *x.shape[1:]), x.dtype), tf.TensorSpec((None,), "int32")]

    @tf.function(input_signature=specs)
    def step(inputs, class_ids):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            logits = tf.cast(logits_model(inputs, training=False), inputs.dtype)
            chosen = tf.gather(logits, class_ids, axis=1, batch_dims=1)
        return tape.gradient(chosen, inputs)   # samples are independent: sum = per sample

    def gradients(batch, targets):
        out = np.zeros_like(batch)
        for i in range(0, len(batch), batch_size):
            out[i:i + batch_size] = step(tf.constant(batch[i:i + batch_size]),
                                         tf.constant(targets[i:i + batch_size])).numpy()
        return out

    return gradients
