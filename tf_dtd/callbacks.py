"""Keras callbacks that watch explanations while a model trains.

:class:`RelevanceMonitor` logs the heatmaps of a fixed set of samples to TensorBoard at the end of
every n-th epoch, with scalars that say how well they behave (conservation, negative relevance,
relevance inside given masks).

Example:
    >>> monitor = tf_dtd.callbacks.RelevanceMonitor(
    ...     images[:8], "deep_taylor_bounded", input_range=(0.0, 1.0), log_dir="logs")
    >>> model.fit(x, y, epochs=5, callbacks=[monitor, keras.callbacks.TensorBoard("logs")])
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_dtd import checks, visualize
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.api import relevance_model as build_relevance_model
from tf_dtd.relevance.api import sync_weights

__all__ = ["RelevanceMonitor"]

HEATMAPS = "relevance/heatmaps"
CONSERVATION_ERROR = "relevance/conservation_error"
NEGATIVE_SHARE = "relevance/negative_share"
MASS_IN_MASK = "relevance/mass_in_mask"


class RelevanceMonitor(keras.callbacks.Callback):
    """Log the heatmaps of fixed samples to TensorBoard while a model trains.

    The relevance model is built once, when training starts, and its predict function traced
    once; at the end of every ``every_n_epochs``-th epoch its weights are refreshed from the
    training model (:func:`tf_dtd.sync_weights`: BatchNorm folding and the rules' modified
    weights recomputed, no rebuild, no retrace), the samples are explained, and the callback
    writes to ``log_dir/relevance`` (a run next to Keras' ``train`` and ``validation``), at
    step = epoch (0-based):

    - ``relevance/heatmaps``: one image, the heatmap grid (:func:`tf_dtd.visualize.grid` of
      :func:`tf_dtd.visualize.heatmap_to_rgb`, one tile per sample, captioned with the explained
      class); only for image samples ``(n, H, W, C)``.
    - ``relevance/conservation_error``: mean over samples of ``|Σ R − logit| / |logit|``, the
      relative gap between a heatmap's sum and the explained logit.
    - ``relevance/negative_share``: ``Σ |R⁻| / Σ |R|``, the share of the relevance mass that is
      negative (0 for the Deep Taylor presets inside their box).
    - ``relevance/mass_in_mask`` (with ``masks``): mean over samples of ``Σ R⁺·mask / Σ R⁺``, the
      share of positive relevance inside the mask ("relevance mass accuracy", Arras et al. 2022).

    The latest results stay available as :attr:`heatmaps`, :attr:`logits` and :attr:`scalars`.

    Args:
        samples: NumPy batch ``(n, *input_shape)`` to explain, the same every epoch.
        rules: a preset name, a rule or a :class:`tf_dtd.Composite`.
        input_range: ``(low, high)`` of the inputs (presets with z^B need it).
        log_dir: TensorBoard log folder; event files go to ``log_dir/relevance``.
        every_n_epochs: log after epochs ``n - 1``, ``2n - 1``, ... (0-based).
        masks: optional ``(n, *input_shape)`` array (or without the channel axis) of 0/1 regions
            where the relevance should be, e.g. object masks.
        target: ``"max"`` (the top class of each sample) or an ``int`` class index.
        cmap: colour map of the heatmap grid (:data:`tf_dtd.visualize.COLORMAPS`).
        columns: tiles per row of the grid (default ``ceil(sqrt(n))``).
        scale: integer upscaling of each tile.

    Raises:
        InvalidArgumentError: bad ``samples``, ``masks``, ``every_n_epochs`` or ``cmap``; at the
            start of training, samples that do not fit the model.

    Example:
        >>> monitor = RelevanceMonitor(images[:8], input_range=(0.0, 1.0), log_dir="logs")
        >>> model.fit(x, y, epochs=3, callbacks=[monitor])
        >>> monitor.heatmaps.shape           # (8, 32, 32, 1), the last logged epoch
    """

    def __init__(self, samples, rules="deep_taylor_bounded", *, input_range=None, log_dir="logs",
                 every_n_epochs=1, masks=None, target="max", cmap="bwr", columns=None, scale=4):
        super().__init__()
        self.samples = np.asarray(samples)
        if self.samples.dtype.kind not in "fiu" or self.samples.ndim < 2 or not len(self.samples):
            raise InvalidArgumentError(
                "Expected samples as a non-empty numeric batch (n, *input_shape). Received: "
                f"shape {self.samples.shape}, dtype {self.samples.dtype}")
        self.samples = self.samples.astype("float32")
        if (not isinstance(every_n_epochs, (int, np.integer)) or isinstance(every_n_epochs, bool)
                or every_n_epochs < 1):
            raise InvalidArgumentError(
                f"Expected every_n_epochs to be an integer >= 1. Received: "
                f"every_n_epochs={every_n_epochs!r}")
        if cmap not in visualize.COLORMAPS:
            raise InvalidArgumentError(
                f"Expected cmap to be one of {visualize.COLORMAPS}. Received: cmap={cmap!r}")
        self.masks = None if masks is None else _check_masks(masks, self.samples.shape)
        self.rules = rules
        self.input_range = input_range
        self.target = target
        self.log_dir = os.fspath(log_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.cmap, self.columns, self.scale = cmap, columns, scale
        self.relevance_model = None
        self.explain_function = None
        self.heatmaps = self.logits = None
        self.scalars = {}
        self._source = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.relevance_model is not None and self._source is self.model:
            return  # a further fit() of the same model: keep the model and its trace
        checks.check_batch(self.samples, self.model)
        arguments = {"rules": self.rules, "input_range": self.input_range,
                     "target": self.target, "return_prediction": True}
        self.relevance_model = build_relevance_model(self.model, **arguments)
        self._source = self.model
        relevance_model = self.relevance_model

        @tf.function(input_signature=[tf.TensorSpec(self.samples.shape, "float32")])
        def explain(x):
            relevance, logits = relevance_model(x, training=False)
            return relevance, logits

        self.explain_function = explain

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        sync_weights(self.relevance_model, self.model)
        relevance, logits = self.explain_function(tf.constant(self.samples))
        self.heatmaps, self.logits = relevance.numpy(), logits.numpy()
        classes = (self.logits.argmax(axis=1) if self.target == "max"
                   else np.full(len(self.logits), int(self.target)))
        explained = self.logits[np.arange(len(classes)), classes]
        self.scalars = relevance_scalars(self.heatmaps, explained, self.masks)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "relevance"))
        with self._writer.as_default():
            for tag, value in self.scalars.items():
                write_scalar(tag, value, epoch)
            if self.heatmaps.ndim == 4:
                write_image(HEATMAPS, self.heatmap_grid(classes), epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def heatmap_grid(self, classes):
        """The logged image: uint8 ``(H, W, 3)`` grid of the current heatmaps."""
        rgb = visualize.heatmap_to_rgb(self.heatmaps, self.cmap)
        return visualize.grid(rgb, [f"class {c}" for c in classes], columns=self.columns,
                              scale=self.scale)


def write_scalar(tag, value, step):
    """``tf.summary.scalar`` without the TensorBoard package: the same float32 tensor and
    ``scalars`` plugin metadata (TensorFlow ≥ 2.20 no longer installs TensorBoard, whose package
    implements ``tf.summary.scalar`` and ``tf.summary.image``)."""
    return tf.summary.write(tag, tf.constant(value, tf.float32), step=step,
                            metadata=_plugin_metadata("scalars"))


def write_image(tag, rgb, step):
    """``tf.summary.image`` of one uint8 ``(H, W, 3)`` image without the TensorBoard package: the
    images plugin's string tensor ``[width, height, png]`` and its metadata."""
    height, width = rgb.shape[:2]
    png = tf.io.encode_png(np.ascontiguousarray(rgb, "uint8"))
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height)), png])
    return tf.summary.write(tag, tensor, step=step, metadata=_plugin_metadata("images"))


def _plugin_metadata(plugin_name):
    # The plugins' content protos (ScalarPluginData, ImagePluginData) at version 0 serialise
    # to empty bytes.
    return tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin_name))


def relevance_scalars(heatmaps, explained_logits, masks=None):
    """The scalars :class:`RelevanceMonitor` logs, from heatmaps and the explained logits.

    Example:
        >>> relevance_scalars(np.array([[1.0, -0.5]]), np.array([0.5]))
        {'relevance/conservation_error': 0.0, 'relevance/negative_share': 0.3333333333333333}
    """
    flat = np.asarray(heatmaps, "float64").reshape(len(heatmaps), -1)
    logits = np.asarray(explained_logits, "float64")
    gap = np.abs(flat.sum(axis=1) - logits) / np.maximum(np.abs(logits), 1e-12)
    magnitude = np.abs(flat).sum()
    scalars = {CONSERVATION_ERROR: float(gap.mean()),
               NEGATIVE_SHARE: float(np.maximum(-flat, 0).sum() / magnitude) if magnitude else 0.0}
    if masks is not None:
        positive = np.maximum(flat, 0)
        inside = (positive * np.asarray(masks, "float64").reshape(len(flat), -1)).sum(axis=1)
        total = positive.sum(axis=1)
        scalars[MASS_IN_MASK] = float(np.mean(np.where(total > 0, inside / np.where(
            total > 0, total, 1.0), 0.0)))
    return scalars


def _check_masks(masks, shape):
    """Masks broadcast to the samples' shape; a missing trailing channel axis is added."""
    masks = given = np.asarray(masks)
    if masks.ndim == len(shape) - 1:
        masks = masks[..., None]
    if masks.ndim == len(shape) and masks.shape[:-1] == shape[:-1] and masks.shape[-1] in (
            1, shape[-1]):
        return np.broadcast_to(masks, shape).astype("float32")
    raise InvalidArgumentError(
        f"Expected masks of the samples' shape {shape} (or without its channel axis). "
        f"Received: masks of shape {given.shape}")
