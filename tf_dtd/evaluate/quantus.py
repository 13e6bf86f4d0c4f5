"""tf_dtd as an ``explain_func`` for the Quantus metrics library (no Quantus dependency).

The contract, read from Quantus' source (github.com/understandable-machine-intelligence-lab/
Quantus, ``quantus/metrics/base.py``, ``Metric.general_preprocess``, and
``quantus/helpers/utils.py``):

- Before explaining, Quantus moves ``x_batch`` to **channels-first** (``utils.make_channel_first``:
  ``np.moveaxis(x, -1, -3)`` for images, ``np.moveaxis(x, -1, -2)`` for 1-D signals), also for a
  channels-last Keras model; its ``TensorFlowModel`` wrapper moves the channels back only for its
  own ``predict``.
- It then calls ``explain_func(model=model.get_model(), inputs=x_batch, targets=y_batch,
  **explain_func_kwargs)``: the plain ``keras.Model``, a NumPy batch, and NumPy int class ids of
  shape ``(N,)`` (some metrics call it positionally, ``explain_func(model, x, y, **kwargs)``,
  or with one sample, ``targets`` of shape ``(1,)``). When a ``device`` is given to the metric,
  ``device=...`` is added to the keyword arguments.
- It expects a NumPy array back with the batch size of ``inputs`` and its layout: the shape of
  ``inputs``, or fewer axes such as a summed channel axis (``utils.expand_attribution_channel``
  adds them back), then checks it with ``asserts.assert_attributions``.
- The randomisation metrics (MPRT) randomise the weights of one model copy in place between
  calls, so nothing may be cached per model object: each call builds a fresh relevance model.

Example:
    >>> import quantus
    >>> from tf_dtd.evaluate.quantus import quantus_explain_func
    >>> metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=20)
    >>> scores = metric(model=model, x_batch=x_nchw, y_batch=y, a_batch=None,
    ...                 explain_func=quantus_explain_func,
    ...                 explain_func_kwargs={"rules": "deep_taylor_bounded",
    ...                                      "input_range": (0.0, 1.0)})
"""

import numpy as np

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.api import explain

__all__ = ["quantus_explain_func"]


def quantus_explain_func(model, inputs, targets, *, rules="deep_taylor_bounded",
                         input_range=None, channel_first=None, reduce_axes=None,
                         batch_size=32, device=None):
    """Heatmaps of ``inputs`` for ``targets`` in Quantus' layout, via :func:`tf_dtd.explain`.

    Args:
        model: the Keras model Quantus passes (``model.get_model()`` of its wrapper).
        inputs: NumPy batch, channels-first as Quantus passes it (see the module docstring).
        targets: int class ids, ``(N,)``; a single int is used for every sample.
        rules: a tf_dtd preset, rule or Composite (``"deep_taylor_bounded"`` needs
            ``input_range``).
        input_range: ``(low, high)`` of the inputs, in the model's own layout.
        channel_first: whether ``inputs`` must have their axis 1 moved last to fit the model.
            ``None`` infers it: moved when ``inputs`` do not fit the model's input shape as
            they are but do with axis 1 moved last (for a channels-last model, Quantus'
            case), kept when only the given layout fits; an error where both fit (e.g.
            ``(N, 8, 8, 8)``) or neither does.
        reduce_axes: axes (of the returned layout, not 0) to sum with ``keepdims``, e.g.
            ``(1,)`` for one channel, as Quantus' own explainers allow; ``None`` keeps all.
        batch_size: samples per relevance-model call.
        device: accepted and ignored (Quantus adds it; Keras places the computation).

    Returns:
        float NumPy heatmaps in the layout of ``inputs`` (channels-first in → channels-first out).

    Example:
        >>> a = quantus_explain_func(model, x_nchw, y, input_range=(0.0, 1.0))
        >>> a.shape == x_nchw.shape
        True
    """
    del device
    inputs = np.asarray(inputs)
    axes = None if reduce_axes is None else tuple(int(a) for a in np.atleast_1d(reduce_axes))
    if axes is not None and any(a % max(inputs.ndim, 1) == 0 for a in axes):
        raise InvalidArgumentError(
            f"Expected reduce_axes without the batch axis 0. Received: reduce_axes={reduce_axes!r}")
    expected = tuple(model.input_shape[1:])
    if channel_first is None:
        channel_first = _infer_channel_first(inputs.shape[1:], expected)
    x = np.moveaxis(inputs, 1, -1) if channel_first else inputs
    if np.ndim(targets) == 0:
        targets = np.full(len(inputs), targets)
    heatmaps = np.asarray(explain(model, x, rules, input_range=input_range,
                                  target=np.asarray(targets), batch_size=batch_size))
    heatmaps = np.moveaxis(heatmaps, -1, 1) if channel_first else heatmaps
    return heatmaps if axes is None else heatmaps.sum(axis=axes, keepdims=True)


def _infer_channel_first(sample, expected):
    """Whether axis 1 of inputs of shape ``(N, *sample)`` must move last to fit ``expected``."""
    def fits(shape):
        return len(shape) == len(expected) and all(
            e is None or e == s for e, s in zip(expected, shape))

    if len(sample) < 2:
        return False
    moved = sample[1:] + sample[:1]
    if fits(moved) != fits(sample):
        return fits(moved)
    raise InvalidArgumentError(
        f"Expected inputs of shape (N, {', '.join(map(str, expected))}) or its channels-first "
        "version, and only one of them; pass channel_first=True or False. Received: inputs of "
        f"shape (N, {', '.join(map(str, sample))})")
