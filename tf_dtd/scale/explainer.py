"""One relevance model, seen from outside: its outputs as a dict, its target, its fingerprint.

:class:`Explainer` wraps a relevance model made by :func:`tf_dtd.relevance_model` (built in this
process or loaded from ``.keras``) so that streaming code (:func:`tf_dtd.explain_dataset`, the
Beam handler) gets the same record for every batch: ``relevance``, ``logits``, the explained and
predicted class, the relevance sum, and ``layers/<name>`` when the model was built with
``layers=[...]``. A relevance model built without ``return_prediction`` still yields its logits:
they are read at the input of its :class:`tf_dtd.layers.TargetRelevance` layer, where relevance
starts.
"""

import hashlib
import json
import weakref

import keras
import numpy as np
import tensorflow as tf

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.relevance.layers import TargetRelevance

__all__ = ["Explainer", "is_relevance_model", "model_fingerprint", "pad", "split",
           "step_signature"]


_EXPLAINERS = weakref.WeakKeyDictionary()  # relevance model -> its Explainer


class Explainer:
    """The per-batch record of a relevance model.

    Args:
        relevance_model: a model made by ``tf_dtd.relevance_model`` (any ``target``,
            ``return_prediction`` and ``layers``), possibly built under a
            ``tf.distribute`` strategy scope: ``explain`` then runs on all its replicas.

    Example:
        >>> explainer = Explainer(tf_dtd.relevance_model(model, input_range=(0.0, 1.0)))
        >>> record = explainer.explain(images)          # dict of NumPy arrays
        >>> record["relevance"].shape == images.shape
        True
    """

    def __init__(self, relevance_model):
        if not isinstance(relevance_model, keras.Model):
            raise InvalidArgumentError(
                "Expected a relevance model made by tf_dtd.relevance_model (a keras.Model). "
                f"Received: relevance_model of type {type(relevance_model).__name__}")
        starts = [layer for layer in relevance_model.layers
                  if isinstance(layer, TargetRelevance)]
        if len(starts) != 1:
            raise InvalidArgumentError(
                "Expected a relevance model made by tf_dtd.relevance_model, with one "
                f"TargetRelevance layer where relevance starts. Received: model "
                f"{relevance_model.name!r} with {len(starts)} such layers")
        start = starts[0]
        self._relevance_model = weakref.ref(relevance_model)  # a cached Explainer must not
        # keep its relevance model alive (see `of`)
        self.target = start.target
        self.needs_class_ids = self.target == "input"
        self.sample_shape = tuple(relevance_model.inputs[0].shape[1:])
        logits = start.input[0] if self.needs_class_ids else start.input
        self.num_classes = int(logits.shape[-1])
        outputs = {"relevance": _relevance_output(relevance_model.output), "logits": logits}
        if isinstance(relevance_model.output, dict):
            for name, tensor in relevance_model.output.get("layers", {}).items():
                outputs[f"layers/{name}"] = tensor
        self.input_dtype = relevance_model.inputs[0].dtype
        self.outputs = outputs  # name -> symbolic tensor
        self.model = keras.Model(relevance_model.inputs, outputs,
                                 name=f"{relevance_model.name}_record")
        self._steps = {}  # jit_compile -> the compiled step

    @classmethod
    def of(cls, relevance_model):
        """The Explainer of ``relevance_model``, made once per model: later calls reuse its
        compiled step instead of tracing the model again."""
        try:
            return _EXPLAINERS[relevance_model]
        except (KeyError, TypeError):
            explainer = cls(relevance_model)
            _EXPLAINERS[relevance_model] = explainer
            return explainer

    @property
    def relevance_model(self):
        model = self._relevance_model()
        if model is None:
            raise ReferenceError("The relevance model of this Explainer no longer exists.")
        return model

    def inputs(self, x, class_ids=None):
        """The model's inputs for the batch ``x``: ``x`` or ``[x, class_ids]`` (checked)."""
        if x.shape[1:] != self.sample_shape and None not in self.sample_shape:
            raise InvalidArgumentError(
                f"Expected samples of shape {self.sample_shape}. Received: a batch of shape "
                f"{x.shape}")
        if self.needs_class_ids:
            if class_ids is None:
                raise InvalidArgumentError(
                    "The relevance model was built with target='input': every sample needs the "
                    "class id to explain. Received: no class ids")
            return [x, np.asarray(class_ids).astype("int32").reshape(-1)]
        if class_ids is not None:
            raise InvalidArgumentError(
                f"The relevance model explains target={self.target!r}; class ids are only "
                "taken by a relevance model built with target='input'. Received: class ids")
        return x

    def run(self, dataset):
        """Run the model on every batch of ``dataset`` (model inputs), over all replicas.

        A relevance model built under a ``tf.distribute`` strategy scope runs under that
        strategy: each batch is split over the replicas and the results gathered in order.

        Yields:
            One dict of NumPy arrays (``relevance``, ``logits``, ``layers/<name>``) per batch.
        """
        strategy, step = self._step()
        for inputs in strategy.experimental_distribute_dataset(dataset):
            yield {name: value.numpy() for name, value in step(inputs).items()}

    def run_batch(self, inputs):
        """:meth:`run` on one batch of model inputs (NumPy), without a tf.data pipeline where
        there is one replica."""
        strategy, step = self._step()
        if strategy.num_replicas_in_sync > 1:
            return next(self.run(_steps_dataset([inputs])))
        tensors = tuple(inputs) if isinstance(inputs, list) else inputs
        return {name: value.numpy() for name, value in step(tensors).items()}

    def _step(self):
        """``(strategy, step)``: the compiled step, made once per XLA setting."""
        strategy = self.relevance_model.distribute_strategy
        jit_compile = bool(self.relevance_model.jit_compile)
        if jit_compile not in self._steps:
            replica_step = tf.function(lambda inputs: self.model(inputs, training=False),
                                       jit_compile=jit_compile)

            @tf.function(reduce_retracing=True)
            def step(inputs):
                outputs = strategy.run(replica_step, args=(inputs,))
                return {name: strategy.gather(value, axis=0) for name, value in outputs.items()}

            self._steps[jit_compile] = step
        return strategy, self._steps[jit_compile]

    def explain(self, x, class_ids=None, *, batch_size=32):
        """Relevance and predictions of the batch ``x`` as a dict of NumPy arrays.

        Args:
            x: a NumPy batch of the model's sample shape.
            class_ids: int class ids, one per sample; required (only) when the relevance
                model was built with ``target="input"``.
            batch_size: samples per step (the global batch size under a strategy).

        Returns:
            The record of :meth:`complete`.
        """
        x = np.asarray(x, dtype=self.input_dtype)
        inputs = self.inputs(x, class_ids)
        records = []
        for part in split(inputs, batch_size):
            padded, count = pad(part, batch_size)
            output = self.run_batch(padded)
            records.append({name: value[:count] for name, value in output.items()})
        if not records:
            record = {name: np.zeros((0, *tuple(t.shape[1:])), t.dtype)
                      for name, t in self.outputs.items()}
        else:
            record = {name: np.concatenate([r[name] for r in records]) for name in records[0]}
        return self.complete(record, class_ids if self.needs_class_ids else None)

    def complete(self, record, class_ids=None):
        """Add ``predicted_class`` (argmax of the logits), ``explained_class`` and
        ``relevance_sum`` (float64) to a record of :meth:`run`."""
        logits = record["logits"]
        count = len(logits)
        record["predicted_class"] = np.argmax(logits, axis=1).astype("int32")
        if self.target == "max":
            record["explained_class"] = record["predicted_class"].copy()
        elif self.target == "input":
            record["explained_class"] = np.asarray(class_ids).astype("int32").reshape(-1)
        else:
            record["explained_class"] = np.full(count, self.target, "int32")
        relevance = record["relevance"]
        flat = relevance.reshape(count, int(np.prod(relevance.shape[1:])))
        record["relevance_sum"] = flat.sum(axis=1, dtype="float64")
        return record

    def fingerprint(self):
        """A SHA-256 of the relevance model's weights and layer configurations."""
        return model_fingerprint(self.relevance_model)


def is_relevance_model(model):
    """Whether ``model`` is a relevance model of tf_dtd (it has a TargetRelevance layer)."""
    return isinstance(model, keras.Model) and any(
        isinstance(layer, TargetRelevance) for layer in model.layers)


def model_fingerprint(model):
    """SHA-256 (hex) of ``model``'s layer classes, configurations and weights.

    Layer names are left out (Keras numbers them per process), so the same relevance model built
    again — in this process or another — has the same fingerprint; other rules, another target or
    other weights give another one.
    """
    digest = hashlib.sha256()
    for layer in model.layers:
        config = _without_names(layer.get_config())
        digest.update(type(layer).__name__.encode())
        digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _without_names(config):
    if isinstance(config, dict):
        return {key: _without_names(value) for key, value in config.items() if key != "name"}
    if isinstance(config, (list, tuple)):
        return [_without_names(value) for value in config]
    return config


def _relevance_output(output):
    if isinstance(output, dict):
        return output["relevance"]
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def split(inputs, size):
    """``inputs`` (an array or a list of arrays of one length) in consecutive parts of ``size``."""
    count = len(inputs[0]) if isinstance(inputs, list) else len(inputs)
    for begin in range(0, count, size):
        part = slice(begin, begin + size)
        yield [a[part] for a in inputs] if isinstance(inputs, list) else inputs[part]


def pad(inputs, size):
    """``(padded, count)``: ``inputs`` filled up with zeros to ``size`` samples.

    Every step then has one static shape (one trace; what TPUs need); the results of the padded
    rows are dropped.
    """
    arrays = inputs if isinstance(inputs, list) else [inputs]
    count = len(arrays[0])
    padded = [np.concatenate([a, np.zeros((size - count, *a.shape[1:]), a.dtype)])
              if count < size else a for a in arrays]
    return (padded if isinstance(inputs, list) else padded[0]), count


def _steps_dataset(steps):
    """A dataset of the given (already batched) steps."""
    if not steps:
        return tf.data.Dataset.range(0)
    return tf.data.Dataset.from_generator(
        lambda: (tuple(s) if isinstance(s, list) else s for s in steps),
        output_signature=step_signature(steps[0]))


def step_signature(inputs):
    """The ``tf.TensorSpec`` (tuple of specs for ``[x, class_ids]``) of one step of inputs."""
    def spec(array):
        return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))
    return tuple(spec(a) for a in inputs) if isinstance(inputs, list) else spec(inputs)
