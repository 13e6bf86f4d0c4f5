"""A Beam ``ModelHandler`` that explains images with a tf_dtd relevance model.

Beam's own ``TFModelHandlerNumpy`` cannot serve a relevance model (it loads with Keras'
``load_model``, which refuses SavedModels in Keras 3, and imports ``tensorflow_hub``); this
handler loads the user's model itself, once per worker process, and builds the relevance model
there.
"""

import os
import shutil
import tempfile

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tf_dtd.errors import InvalidArgumentError

__all__ = ["RelevanceModelHandler", "is_saved_model"]


class RelevanceModelHandler(ModelHandler):
    """Explain images in ``RunInference``: one ``PredictionResult`` per image.

    Args:
        model_uri: the classifier to explain — a ``.keras`` or ``.h5`` file, local or on any
            filesystem Beam reads (``gs://``, ``s3://``, ...) — or a relevance SavedModel
            directory written by ``relevance_model(..., return_prediction=True).export(dir)``,
            or a saved relevance model (``.keras``).
        rules: a preset name, a rule or a ``tf_dtd.Composite``, as in
            :func:`tf_dtd.relevance_model` (default ``"deep_taylor_bounded"``). Only for
            classifiers: an exported or saved relevance model has its rules already.
        input_range: the input box ``(low, high)`` for z^B, as in :func:`tf_dtd.relevance_model`.
        target: ``"max"`` (default), an ``int`` class, or ``"input"``: examples are then pairs
            ``(image, class_id)``.
        batch_size: images per step of the model (batches from Beam are split or padded to it,
            so that the model is traced once).
        **kwargs: Beam's ``ModelHandler`` arguments: ``min_batch_size``, ``max_batch_size``
            (default ``4 * batch_size``), ``max_batch_duration_secs``, ``large_model``,
            ``model_copies``, ``env_vars``.

    Examples are NumPy images of the model's sample shape (``(H, W, C)``). Each result's
    ``inference`` is a dict: ``relevance`` (shaped like the image), ``logits``,
    ``predicted_class``, ``relevance_sum`` and — unless the model is an exported SavedModel
    that explains the top class or a fixed class, which it does not record — ``explained_class``.
    Use ``KeyedModelHandler(RelevanceModelHandler(...))`` to carry ids through.

    Example:
        >>> handler = RelevanceModelHandler("classifier.keras", input_range=(0.0, 1.0))
        >>> results = images | RunInference(handler)          # PCollection of PredictionResult
    """

    def __init__(self, model_uri, rules=None, *, input_range=None, target=None, batch_size=32,
                 **kwargs):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(
                f"batch_size must be an int >= 1. Received: batch_size={batch_size!r}")
        kwargs.setdefault("max_batch_size", 4 * batch_size)
        super().__init__(**kwargs)
        self.model_uri = os.fspath(model_uri)
        self.rules, self.input_range, self.target = rules, input_range, target
        self.batch_size = batch_size

    def load_model(self):
        """Load the model and build its relevance model (Beam calls this once per worker)."""
        if is_saved_model(self.model_uri):
            given = {name: value for name, value in (
                ("rules", self.rules), ("input_range", self.input_range),
                ("target", self.target)) if value is not None}
            if given:
                raise InvalidArgumentError(
                    f"{self.model_uri!r} is an exported relevance SavedModel: its rules, input "
                    f"range and target were fixed at export. Received: {given}")
            return _SavedModelExplainer(self.model_uri, self.batch_size)
        return _KerasExplainer(self._relevance_model(), self.batch_size)

    def run_inference(self, batch, model, inference_args=None):
        """Explain a batch of examples; returns one ``PredictionResult`` per example."""
        self.validate_inference_args(inference_args)
        if model.needs_class_ids:
            if not all(isinstance(e, tuple) and len(e) == 2 for e in batch):
                raise InvalidArgumentError(
                    "The relevance model explains target='input': each example must be a pair "
                    "(image, class_id).")
            images, class_ids = [e[0] for e in batch], np.array([e[1] for e in batch])
        else:
            images, class_ids = list(batch), None
        x = _stack(images, model.sample_shape)
        record = model.explain(x, class_ids)
        return [PredictionResult(example, {name: value[i] for name, value in record.items()})
                for i, example in enumerate(batch)]

    def validate_inference_args(self, inference_args):
        if inference_args:
            raise InvalidArgumentError(
                "RelevanceModelHandler takes no inference_args (give rules, input_range and "
                f"target to the handler). Received: {sorted(inference_args)}")

    def get_metrics_namespace(self):
        return "tf_dtd_RunInference"

    def sample_shape(self):
        """The shape of one input of the model, ``(H, W, C)`` (loads the model here)."""
        if is_saved_model(self.model_uri):
            return _SavedModelExplainer(self.model_uri, self.batch_size).sample_shape
        with _local_copy(self.model_uri) as path:
            import keras

            import tf_dtd  # noqa: F401  (registers tf_dtd layers, for saved relevance models)

            return tuple(keras.models.load_model(path, compile=False).inputs[0].shape[1:])

    def needs_class_ids(self):
        """Whether examples are ``(image, class_id)`` pairs (``target="input"``)."""
        return self.target == "input"

    def _relevance_model(self):
        import keras

        import tf_dtd
        from tf_dtd.scale.explainer import is_relevance_model

        with _local_copy(self.model_uri) as path:
            model = keras.models.load_model(path, compile=False)
        if is_relevance_model(model):
            given = {name: value for name, value in (
                ("rules", self.rules), ("input_range", self.input_range),
                ("target", self.target)) if value is not None}
            if given:
                raise InvalidArgumentError(
                    f"{self.model_uri!r} is a saved relevance model: its rules, input range and "
                    f"target are fixed. Give the classifier instead. Received: {given}")
            return model
        return tf_dtd.relevance_model(
            model, self.rules or "deep_taylor_bounded", input_range=self.input_range,
            target="max" if self.target is None else self.target)


class _KerasExplainer:
    """A relevance model built in this worker."""

    def __init__(self, relevance_model, batch_size):
        from tf_dtd.scale.explainer import Explainer

        self.explainer = Explainer(relevance_model)
        self.relevance_model = relevance_model  # the Explainer holds it weakly
        self.batch_size = batch_size
        self.needs_class_ids = self.explainer.needs_class_ids
        self.sample_shape = self.explainer.sample_shape

    def explain(self, x, class_ids):
        return self.explainer.explain(x, class_ids, batch_size=self.batch_size)


class _SavedModelExplainer:
    """An exported relevance model, called through its ``serving_default`` signature."""

    def __init__(self, uri, batch_size):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(uri)  # held: its variables must outlive the signature
        self.serve = self.loaded.signatures["serving_default"]
        specs = self.serve.structured_input_signature[1]
        self.image_name = next(n for n, s in specs.items() if s.shape.rank != 1)
        ids = [n for n, s in specs.items() if s.shape.rank == 1]
        self.class_ids_name = ids[0] if ids else None
        self.needs_class_ids = bool(ids)
        self.sample_shape = tuple(specs[self.image_name].shape[1:])
        self.dtype = specs[self.image_name].dtype
        if "output_1" not in self.serve.structured_outputs:
            raise InvalidArgumentError(
                f"The SavedModel {uri!r} returns relevance only; RelevanceModelHandler also "
                "needs the logits. Export it with tf_dtd.relevance_model(..., "
                "return_prediction=True).export(dir), or give the classifier's .keras file.")
        self.batch_size = batch_size

    def explain(self, x, class_ids):
        import tensorflow as tf

        from tf_dtd.scale.explainer import pad, split

        inputs = [x, class_ids] if self.needs_class_ids else x
        parts = []
        for part in split(inputs, self.batch_size):
            (padded, count) = pad(part, self.batch_size)
            arguments = {self.image_name: tf.constant(
                padded[0] if self.needs_class_ids else padded, self.dtype)}
            if self.needs_class_ids:
                arguments[self.class_ids_name] = tf.constant(padded[1], tf.int32)
            outputs = self.serve(**arguments)
            parts.append({"relevance": outputs["output_0"].numpy()[:count],
                          "logits": outputs["output_1"].numpy()[:count]})
        record = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        record["predicted_class"] = record["logits"].argmax(axis=1).astype("int32")
        if self.needs_class_ids:
            record["explained_class"] = np.asarray(class_ids).astype("int32")
        record["relevance_sum"] = record["relevance"].reshape(len(x), -1).sum(
            axis=1, dtype="float64")
        return record


def _stack(images, sample_shape):
    shapes = {tuple(np.shape(image)) for image in images}
    if shapes != {tuple(sample_shape)}:
        raise InvalidArgumentError(
            f"Examples must be images of shape {tuple(sample_shape)}. Received: shapes "
            f"{sorted(shapes)}")
    return np.stack(images).astype("float32")


def is_saved_model(uri):
    """Whether ``uri`` is a SavedModel directory (on any filesystem Beam reads)."""
    return FileSystems.exists(FileSystems.join(uri, "saved_model.pb"))


class _local_copy:
    """A local path for ``uri``: the file itself, or a temporary copy of a remote one."""

    def __init__(self, uri):
        self.uri, self.folder = uri, None

    def __enter__(self):
        if os.path.exists(self.uri):
            return self.uri
        if not FileSystems.exists(self.uri):
            raise FileNotFoundError(f"Model {self.uri!r} does not exist.")
        self.folder = tempfile.mkdtemp(prefix="tf-dtd-model-")
        path = os.path.join(self.folder, os.path.basename(self.uri))
        with FileSystems.open(self.uri, compression_type=CompressionTypes.UNCOMPRESSED) as source, \
                open(path, "wb") as target:
            shutil.copyfileobj(source, target)
        return path

    def __exit__(self, *exc_info):
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
        return False
