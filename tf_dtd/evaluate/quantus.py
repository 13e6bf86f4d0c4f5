"""tf_dtd as an ``explain_func`` for the Quantus metrics library (no Quantus dependency).

The contract, read from Quantus 0.6.0's source (``quantus/metrics/base.py``: ``general_preprocess``
and ``explain_batch``; ``quantus/helpers/model/tf_model.py``; ``quantus/helpers/utils.py``):

- Quantus keeps ``x_batch`` **channels-first** internally (``utils.make_channel_first``:
  ``np.moveaxis(x, -1, -3)`` for images, ``np.moveaxis(x, -1, -2)`` for 1-D signals) and its
  metrics compare the attributions with that array, so attributions must come back
  channels-first.
- Which layout ``explain_func`` receives depends on the metric: ``Metric.explain_batch`` (used by
  most metrics) first converts the batch to the model's layout (``TensorFlowModel.shape_input``,
  channels-last for a Keras model wrapped with ``channel_first=False``), while ``MPRT`` passes the
  plain Keras model and the channels-first batch. So the same call must accept both layouts
  and always answer in Quantus' channels-first layout; the inputs' layout is inferred from the
  model's input shape.
- ``explain_func`` is called as ``explain_func(model=keras_model, inputs=x, targets=y,
  **explain_func_kwargs)`` (``device=...`` added when the metric was given one), with NumPy int
  class ids of shape ``(N,)``.
- Quantus' ``TensorFlowModel`` reads the metric's ``channel_first`` both as the layout of
  ``x_batch`` and as the layout of the model: for a channels-last Keras model, pass ``x_batch``
  channels-last with ``channel_first=False`` (a channels-first ``x_batch`` reaches the model
  untransposed and fails in ``predict``).
- ``asserts.assert_attributions`` compares the attributions with the *model-layout* batch in
  ``explain_batch``: for a channels-last model with several channels, sum the channels
  (``reduce_axes=(1,)``), otherwise ``(N, C, H, W)`` against ``(N, H, W, C)`` fails its check.
- The randomisation metrics change the weights of a model copy between calls, so nothing may be
  cached per model object: each call builds a fresh relevance model.

Example:
    >>> import quantus
    >>> from tf_dtd.evaluate.quantus import quantus_explain_func
    >>> metric = quantus.PixelFlipping(features_in_step=64)
    >>> scores = metric(model=model, x_batch=x_nhwc, y_batch=y, channel_first=False,
    ...                 explain_func=quantus_explain_func,
    ...                 explain_func_kwargs={"rules": "deep_taylor_bounded",
    ...                                      "input_range": (0.0, 1.0)})
"""

import numpy as np

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.api import explain

__all__ = ["quantus_explain_func"]


def quantus_explain_func(model, inputs, targets, *, rules="deep_taylor_bounded",
                         input_range=None, channel_first=None, model_channel_first=False,
                         reduce_axes=None, batch_size=32, device=None):
    """Heatmaps of ``inputs`` for ``targets`` in Quantus' channels-first layout.

    Args:
        model: the Keras model Quantus passes (``model.get_model()`` of its wrapper).
        inputs: NumPy batch, channels-first (Quantus' own layout) or in the model's layout
            (what ``Metric.explain_batch`` passes); see the module docstring.
        targets: int class ids, ``(N,)``; a single int is used for every sample.
        rules: a tf_dtd preset, rule or Composite (``"deep_taylor_bounded"`` needs
            ``input_range``).
        input_range: ``(low, high)`` of the inputs, in the model's own layout.
        channel_first: whether ``inputs`` are channels-first (their axis 1 must move last to fit
            a channels-last model). ``None`` infers it: channels-first when ``inputs`` fit the
            model's input shape only with axis 1 moved last, channels-last when they fit only
            as they are; an error where both fit (e.g. ``(N, 8, 8, 8)``) or neither does.
        model_channel_first: whether the model itself takes channels-first inputs (a Keras
            model built with ``data_format="channels_first"``); then nothing is transposed.
        reduce_axes: axes of the returned channels-first layout (not 0) to sum with
            ``keepdims``, e.g. ``(1,)`` to sum the channels; ``None`` keeps all.
        batch_size: samples per relevance-model call.
        device: accepted and ignored (Quantus adds it; Keras places the computation).

    Returns:
        float NumPy heatmaps, channels-first ``(N, C, *spatial)`` whatever the layout of
        ``inputs`` (unchanged for samples without a channel axis, ``(N, features)``).

    Raises:
        InvalidArgumentError: ``reduce_axes`` containing 0, or inputs that fit the model in
            both layouts or in neither.

    Example:
        >>> a = quantus_explain_func(model, x_nhwc, y, input_range=(0.0, 1.0))
        >>> a.shape == np.moveaxis(x_nhwc, -1, 1).shape
        True
    """
    del device
    inputs = np.asarray(inputs)
    axes = None if reduce_axes is None else tuple(int(a) for a in np.atleast_1d(reduce_axes))
    if axes is not None and any(a % max(inputs.ndim, 1) == 0 for a in axes):
        raise InvalidArgumentError(
            f"Expected reduce_axes without the batch axis 0. Received: reduce_axes={reduce_axes!r}")
    expected = tuple(model.input_shape[1:])
    has_channels = inputs.ndim >= 3 and not model_channel_first
    if not has_channels:
        channel_first = False
    elif channel_first is None:
        channel_first = _infer_channel_first(inputs.shape[1:], expected)
    x = np.moveaxis(inputs, 1, -1) if channel_first else inputs
    if np.ndim(targets) == 0:
        targets = np.full(len(inputs), targets)
    heatmaps = np.asarray(explain(model, x, rules, input_range=input_range,
                                  target=np.asarray(targets), batch_size=batch_size))
    heatmaps = np.moveaxis(heatmaps, -1, 1) if has_channels else heatmaps
    return heatmaps if axes is None else heatmaps.sum(axis=axes, keepdims=True)


def _infer_channel_first(sample, expected):
    """Whether axis 1 of inputs of shape ``(N, *sample)`` must move last to fit ``expected``."""
    def fits(shape):
        return len(shape) == len(expected) and all(
            e is None or e == s for e, s in zip(expected, shape))

    moved = sample[1:] + sample[:1]
    if fits(moved) != fits(sample):
        return fits(moved)
    raise InvalidArgumentError(
        f"Expected inputs of shape (N, {', '.join(map(str, expected))}) or its channels-first "
        "version, and only one of them; pass channel_first=True or False. Received: inputs of "
        f"shape (N, {', '.join(map(str, sample))})")
