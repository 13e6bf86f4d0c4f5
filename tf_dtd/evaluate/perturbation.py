"""Region perturbation: does destroying the most relevant regions first hurt the model most?

Samek et al. (2017), *Evaluating the visualization of what a deep neural network has learned*,
IEEE TNNLS 28(11), arXiv:1509.06321. Each image is cut into a grid of square regions, the regions
are ranked by their relevance, and they are perturbed one after another (most relevant first,
or least relevant first); after each step the model's **logit** of the target class is read.
A faithful heatmap makes the logit fall fast under most-relevant-first: a large AOPC,

    AOPC = 1/(L+1) Σ_{k=0}^{L} ⟨f(x^(0)) − f(x^(k))⟩,

with ``x^(k)`` the input after ``k`` regions are perturbed and ⟨·⟩ the mean over samples.

Example:
    >>> from tf_dtd.evaluate.perturbation import region_perturbation
    >>> heatmaps = tf_dtd.explain(model, x, input_range=(0.0, 1.0))
    >>> result = region_perturbation(model, x, heatmaps, region_size=4, steps=20)
    >>> result.aopc, result.curve.shape                 # float, (21,)
"""

import dataclasses

import numpy as np

from tf_dtd import checks
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate.baselines import (
    logit_model,
    logit_predictor,
    per_sample_value,
    sample_rngs,
)

__all__ = ["PerturbationResult", "region_perturbation", "region_labels", "box_blur"]

ORDERS = ("most_relevant_first", "least_relevant_first")
FILLS = ("uniform", "constant", "blur")


@dataclasses.dataclass(frozen=True, eq=False)
class PerturbationResult:
    """What :func:`region_perturbation` measured.

    Attributes:
        scores: ``(N, steps + 1)`` target logits; column ``k`` after ``k`` regions perturbed.
        curve: ``(steps + 1,)`` mean over samples of ``scores[:, 0] − scores[:, k]``.
        aopc: the mean of ``curve`` (area over the perturbation curve).
        order: the ranking used, ``"most_relevant_first"`` or ``"least_relevant_first"``.
        fill: the replacement, ``"uniform"``, ``"constant"`` or ``"blur"``.
        targets: ``(N,)`` the explained class of each sample.
    """

    scores: np.ndarray
    curve: np.ndarray
    aopc: float
    order: str
    fill: str
    targets: np.ndarray

    @property
    def aopc_per_sample(self):
        """``(N,)``: each sample's own AOPC (their mean is :attr:`aopc`)."""
        return np.mean(self.scores[:, :1] - self.scores, axis=1)


def region_perturbation(model, x, heatmaps, *, targets=None, region_size=4, steps=20,
                        order="most_relevant_first", fill="uniform", fill_value=0.0,
                        value_range=(0.0, 1.0), seed=0, batch_size=256):
    """Perturb the regions of ``x`` in the order of ``heatmaps`` and record the target logit.

    Regions are the cells of a grid of ``region_size`` squares over the spatial axes, anchored at
    the top-left corner; where a size is not a multiple of ``region_size`` the last row / column
    of cells is narrower (:func:`region_labels`). A region's relevance is the sum of the heatmap
    over its pixels and channels; ties keep grid order. Inputs are channels-last
    ``(N, H, W, C)`` or ``(N, T, C)``; ``(N, D)`` inputs are 1-D signals of one channel.

    The score is the pre-softmax logit (:func:`tf_dtd.evaluate.baselines.logit_model`). All
    perturbed inputs of one step go through the model together (in chunks of ``batch_size``).
    A sample's scores depend only on that sample: the uniform noise is drawn once per sample from
    a generator seeded by ``seed`` *and the sample's content* (not its position in the batch), so
    evaluating samples together or apart gives the same numbers, and equal images get equal
    noise. A perturbed region keeps its noise in later steps.

    Args:
        model: a Keras classifier with output ``(batch, classes)``.
        x: the inputs, a NumPy batch of the model's sample shape.
        heatmaps: relevance of ``x``, same shape as ``x``.
        targets: ``(N,)`` int class ids; by default the model's top class on ``x``.
        region_size: side of a square region, in pixels.
        steps: how many regions to perturb (``L``), at most the number of regions.
        order: ``"most_relevant_first"`` (MoRF) or ``"least_relevant_first"`` (LeRF).
        fill: ``"uniform"`` noise in ``value_range``; ``"constant"``: ``fill_value`` (scalar or
            broadcastable to one sample, e.g. per channel); ``"blur"``: the input blurred by a
            ``region_size`` box filter (:func:`box_blur`).
        seed: int >= 0 for ``fill="uniform"``.
        batch_size: samples per model call.

    Returns:
        A :class:`PerturbationResult`.

    Raises:
        InvalidArgumentError: a bad shape, option or count.
    """
    x = checks.float_batch(x, model)
    if len(x) == 0:
        raise InvalidArgumentError("Expected at least one sample. Received: x of shape "
                                   f"{x.shape}")
    heat = np.asarray(heatmaps)
    if heat.shape != x.shape or heat.dtype.kind not in "fiub" or not np.all(np.isfinite(heat)):
        raise InvalidArgumentError(
            f"Expected finite numeric heatmaps of the shape of x, {x.shape}. Received: heatmaps "
            f"of shape {heat.shape} and dtype {heat.dtype}")
    checks.check_choice("order", order, ORDERS)
    checks.check_choice("fill", fill, FILLS)
    region_size = checks.positive_int("region_size", region_size)
    steps = checks.positive_int("steps", steps)
    view = x[..., None] if x.ndim == 2 else x
    heat = (heat[..., None] if x.ndim == 2 else heat).astype("float64")
    labels = region_labels(view.shape[1:-1], region_size)
    regions = int(labels.max()) + 1
    if steps > regions:
        raise InvalidArgumentError(
            f"Expected steps <= {regions}, the number of {region_size}-pixel regions of a "
            f"{view.shape[1:-1]} input. Received: steps={steps}")

    predict = logit_predictor(logit_model(model), x, checks.positive_int("batch_size", batch_size))
    clean = predict(x)
    targets = clean.argmax(axis=1) if targets is None else targets
    targets = checks.check_class_ids(targets, len(x), clean.shape[-1], name="targets")
    rank = _region_ranks(heat, labels, regions, order)
    replacement = _replacement(view, fill, fill_value, value_range, seed, region_size)

    rows = np.arange(len(x))
    scores = np.zeros((len(x), steps + 1), x.dtype)
    scores[:, 0] = clean[rows, targets]
    for k in range(1, steps + 1):
        mask = rank[:, labels] < k                                   # (N, *spatial)
        perturbed = np.where(mask[..., None], replacement, view).reshape(x.shape)
        scores[:, k] = predict(perturbed)[rows, targets]
    curve = np.mean(scores[:, :1].astype("float64") - scores, axis=0)
    return PerturbationResult(scores=scores, curve=curve, aopc=float(curve.mean()),
                              order=order, fill=fill, targets=targets)


def region_labels(spatial_shape, region_size):
    """Region index of every position of a ``spatial_shape`` grid of ``region_size`` cells.

    Cells are numbered in row-major order; a border cell is narrower where the size is not a
    multiple of ``region_size``.

    Example:
        >>> region_labels((3, 5), 2)
        array([[0, 0, 1, 1, 2],
               [0, 0, 1, 1, 2],
               [3, 3, 4, 4, 5]])
    """
    region_size = checks.positive_int("region_size", region_size)
    grid = tuple(-(-size // region_size) for size in spatial_shape)
    cells = np.meshgrid(*(np.arange(size) // region_size for size in spatial_shape),
                        indexing="ij")
    return np.ravel_multi_index(cells, grid)


def box_blur(x, size):
    """Mean over a ``size``-wide box along each spatial axis of a channels-last batch.

    Borders repeat the edge values (a constant image stays constant); for an even ``size`` the
    box reaches one pixel further right / down than left / up.

    Example:
        >>> box_blur(np.ones((1, 5, 5, 3)), 3).shape
        (1, 5, 5, 3)
    """
    size = checks.positive_int("size", size)
    out = np.asarray(x, "float64")
    for axis in range(1, out.ndim - 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = ((size - 1) // 2, size // 2)
        windows = np.lib.stride_tricks.sliding_window_view(
            np.pad(out, pad, mode="edge"), size, axis=axis)
        out = windows.mean(axis=-1)
    return out.astype(np.asarray(x).dtype)


def _region_ranks(heat, labels, regions, order):
    """``(N, regions)``: the step (0-based) at which each region of each sample is perturbed."""
    n = len(heat)
    pixels = heat.sum(axis=-1).reshape(n, -1)
    keys = (np.arange(n)[:, None] * regions + labels.reshape(1, -1)).ravel()
    relevance = np.bincount(keys, weights=pixels.ravel(), minlength=n * regions)
    relevance = relevance.reshape(n, regions)
    ranking = np.argsort(-relevance if order == "most_relevant_first" else relevance,
                         axis=1, kind="stable")
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.arange(regions)[None], axis=1)
    return rank


def _replacement(view, fill, fill_value, value_range, seed, region_size):
    """The values each region takes once perturbed, shaped like ``view``."""
    if fill == "blur":
        return box_blur(view, region_size)
    if fill == "constant":
        return np.broadcast_to(per_sample_value(fill_value, view, "fill_value"), view.shape)
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not low < high:
        raise InvalidArgumentError(
            f"Expected value_range=(low, high) with low < high. Received: "
            f"value_range={value_range!r}")
    noise = [rng.uniform(low, high, view.shape[1:]) for rng in sample_rngs(view, seed)]
    return np.stack(noise).astype(view.dtype)
