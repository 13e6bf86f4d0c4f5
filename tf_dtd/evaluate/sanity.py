"""Sanity check by cascading model-parameter randomisation, with NumPy Spearman and SSIM.

Adebayo et al. (2018), *Sanity checks for saliency maps*, NeurIPS, arXiv:1810.03292. Starting at
the output, the weights of one kernel layer after another are re-drawn at random (cumulatively)
on a copy of the model; after each step the explainer explains the same inputs for the same
classes. An explanation that depends on what the model learned drifts away from the original:
its rank correlation and structural similarity with the original heatmaps fall.

Example:
    >>> from tf_dtd.evaluate import baselines, sanity
    >>> steps = sanity.randomization_check(model, x, baselines.lrp("lrp_epsilon"))
    >>> [(s["layer"], round(s["spearman"], 2)) for s in steps]   # top layer first
"""

import warnings

import keras
import numpy as np

from tf_dtd import checks
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate.baselines import predict_logits
from tf_dtd.model.analysis import has_kernel

__all__ = ["randomization_check", "gaussian_reinitialization", "spearman", "ssim"]


def gaussian_reinitialization(weights, rng):
    """New weights for one layer: every tensor drawn from N(0, σ²), σ = std of the first one.

    The first tensor is the kernel (σ falls back to 0.05 for an all-constant kernel); the bias
    and any other tensor of the layer are drawn with the kernel's σ.
    """
    sigma = float(np.std(weights[0])) or 0.05
    return [rng.normal(0.0, sigma, np.shape(w)).astype(np.asarray(w).dtype) for w in weights]


def randomization_check(model, x, explainer, *, targets=None, seed=0, reinitialize=None):
    """Cascading randomisation of the kernel layers of a copy of ``model``, top layer first.

    ``model`` is cloned (``keras.models.clone_model`` + ``set_weights``) and never modified.
    Kernel layers (Dense, convolutions; nested models included) are randomised from the output
    down, cumulatively; step ``i`` draws from ``numpy.random.default_rng([seed, i])``. After each
    step ``explainer(copy, x, targets)`` is compared with ``explainer(model, x, targets)``, per
    sample, on the channel-summed heatmaps:

    - ``spearman``: Spearman rank correlation (:func:`spearman`);
    - ``spearman_abs``: the same on the absolute values of the channel-summed maps, as
      Adebayo et al. also report;
    - ``ssim``: SSIM (:func:`ssim`) of the two maps, each min-max normalised to ``[0, 1]``.

    Each is the mean over samples (a pair with a constant map has no rank correlation and is
    left out of the mean; NaN if every pair is).

    Args:
        model: a Keras classifier.
        x: a NumPy batch of inputs (channels-last; channels are summed).
        explainer: ``explainer(model, x, targets) -> heatmaps`` (see
            :mod:`tf_dtd.evaluate.baselines`).
        targets: ``(N,)`` int class ids; by default the model's top class on ``x``.
        seed: int >= 0.
        reinitialize: ``(weights, rng) -> new weights`` for one layer;
            :func:`gaussian_reinitialization` by default.

    Returns:
        One dict per step: ``{"layer": name, "spearman": float, "spearman_abs": float,
        "ssim": float}``, the top (output) layer first.
    """
    x = checks.float_batch(x, model)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"Expected seed to be an int >= 0. Received: seed={seed!r}")
    if targets is None:
        targets = predict_logits(model, x).argmax(axis=1)
    targets = checks.check_class_ids(targets, len(x), model.output_shape[-1], name="targets")
    reinitialize = reinitialize or gaussian_reinitialization
    original = _reduce(explainer(model, x, targets), x)

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    results = []
    for step, layer in enumerate(reversed(_kernel_layers(copy))):
        layer.set_weights(reinitialize(layer.get_weights(), np.random.default_rng([seed, step])))
        randomised = _reduce(explainer(copy, x, targets), x)
        results.append({
            "layer": layer.name,
            "spearman": _mean([spearman(a, b) for a, b in zip(original, randomised)]),
            "spearman_abs": _mean([spearman(np.abs(a), np.abs(b))
                                   for a, b in zip(original, randomised)]),
            "ssim": _mean([ssim(_unit(a), _unit(b)) for a, b in zip(original, randomised)]),
        })
    return results


def spearman(a, b):
    """Spearman rank correlation of two arrays (flattened), ties given their average rank.

    NaN when either array is constant.

    Example:
        >>> spearman([1, 2, 2, 3], [10, 20, 30, 40])
        0.9486832980505138
    """
    a, b = np.ravel(a), np.ravel(b)
    if a.shape != b.shape or a.size < 2:
        raise InvalidArgumentError(
            "Expected two arrays of the same size, at least 2. Received: sizes "
            f"{a.size} and {b.size}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / norm) if norm > 0 else float("nan")


def ssim(a, b, *, window=7, data_range=1.0):
    """Mean structural similarity (Wang et al., 2004) of two maps of the same shape.

    Local means, variances and the covariance are taken over every ``window``-wide square (cube)
    inside the map (no padding), with the sample-covariance factor ``n / (n − 1)``;
    ``C1 = (0.01·data_range)²``, ``C2 = (0.03·data_range)²``. These are the defaults of
    ``skimage.metrics.structural_similarity``. The window shrinks to the map's smallest side
    (kept odd). 1.0 for identical maps.

    Example:
        >>> ssim(np.eye(8), np.eye(8))
        1.0
    """
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    if a.shape != b.shape or a.ndim == 0:
        raise InvalidArgumentError(
            f"Expected two maps of the same shape. Received: shapes {a.shape} and {b.shape}")
    size = min(window, *a.shape)
    size -= 1 - size % 2
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = size ** a.ndim
    cov_norm = n / (n - 1) if n > 1 else 1.0

    def local_mean(v):
        axes = tuple(range(a.ndim, 2 * a.ndim))
        return np.lib.stride_tricks.sliding_window_view(v, (size,) * a.ndim).mean(axis=axes)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = cov_norm * (local_mean(a * a) - mu_a * mu_a)
    var_b = cov_norm * (local_mean(b * b) - mu_b * mu_b)
    cov = cov_norm * (local_mean(a * b) - mu_a * mu_b)
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(numerator / denominator))


def _average_ranks(v):
    """Ranks 1..n of ``v``; tied values share the mean of their ranks."""
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(v)]
    groups = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(v))
    ranks[order] = ((starts + ends + 1) / 2.0)[groups]
    return ranks


def _kernel_layers(model):
    """Kernel layers of ``model`` in topological order, nested models expanded, each once."""
    found = []
    for layer in model.layers:
        inner = _kernel_layers(layer) if isinstance(layer, keras.Model) else (
            [layer] if has_kernel(layer) else [])
        found.extend(item for item in inner if all(item is not f for f in found))
    return found


def _reduce(heatmaps, x):
    """Channel-summed float64 heatmaps (``(N, D)`` inputs have no channel axis)."""
    heatmaps = np.asarray(heatmaps, "float64")
    if heatmaps.shape != x.shape:
        raise InvalidArgumentError(
            f"Expected the explainer to return heatmaps of shape {x.shape}. Received: "
            f"{heatmaps.shape}")
    return heatmaps if x.ndim == 2 else heatmaps.sum(axis=-1)


def _unit(h):
    """``h`` min-max normalised to ``[0, 1]`` (zeros for a constant map)."""
    span = h.max() - h.min()
    return (h - h.min()) / span if span > 0 else np.zeros_like(h)


def _mean(values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))
