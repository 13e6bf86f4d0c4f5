"""Where :func:`tf_dtd.explain_dataset` reads its samples: tf.data, arrays, image files, TFRecords.

Every source yields :class:`Batch` records — inputs, ids, and the class ids or labels that came
with them — from any start position, so that a resumed run skips what is done, and holds only one
batch at a time.

=====================  ================================================  =====================
``data``               elements                                          ``id``
=====================  ================================================  =====================
``tf.data.Dataset``    ``x``, ``(x,)``, ``(x, y)``, ``((x, class_id),)``  the ``"id"`` entry,
                       or a dict with ``"x"`` and optionally ``"id"``,   else the running
                       ``"class_id"``, ``"label"``; batched or not       index 0, 1, 2, ...
NumPy array            ``x`` or a pair of arrays ``(x, y)``               running index
                       (a ``np.load(..., mmap_mode="r")`` array streams)
folder, glob, file(s)  PNG / JPEG / BMP images, sorted; read like         the file's path
                       ``tf-dtd explain`` (resized, ``preprocessing``)
``*.tfrecord`` files   ``tf.train.Example`` records (schema below)        ``"id"``, else
                                                                         ``<file>:<index>``
=====================  ================================================  =====================

``y``, the second element of a pair, is the class to explain when the relevance model was built
with ``target="input"``, and is otherwise kept as ``label`` in the results.

TFRecord schema (one ``tf.train.Example`` per sample): ``"image"`` — bytes of an encoded PNG /
JPEG / BMP, decoded like an image file — or ``"x"`` — float list, the flattened model input (used
as it is); optional ``"id"`` (bytes), ``"class_id"`` and ``"label"`` (int64).
"""

import dataclasses
import glob
import hashlib
import os
import tempfile

import numpy as np
import tensorflow as tf

from tf_dtd.app import inputs
from tf_dtd.errors import InvalidArgumentError

__all__ = ["Batch", "TFRECORD_SUFFIXES", "decode_images", "open_source", "parse_example"]

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
_HEAD = 8  # samples hashed to recognise a source again on resume


@dataclasses.dataclass(frozen=True)
class Batch:
    """Consecutive samples: ``x``, their ``ids`` and, when given, ``class_ids`` or ``labels``."""

    x: np.ndarray
    ids: np.ndarray
    class_ids: np.ndarray = None
    labels: np.ndarray = None


def open_source(data, *, sample_shape, needs_class_ids, preprocessing="unit"):
    """The source behind ``data`` (see the module doc) for a model with ``sample_shape``.

    Raises:
        InvalidArgumentError: unknown kind of ``data``, a bad element structure, missing class
            ids for a ``target="input"`` model, or no files found.
        FileNotFoundError: a named file or folder does not exist.
    """
    if isinstance(data, tf.data.Dataset):
        return _DatasetSource(data, len(sample_shape), needs_class_ids)
    if isinstance(data, np.ndarray) or (isinstance(data, tuple) and len(data) == 2 and all(
            isinstance(a, np.ndarray) for a in data)):
        return _ArraySource(data, needs_class_ids)
    paths = [data] if isinstance(data, (str, os.PathLike)) else data
    if not isinstance(paths, (list, tuple)) or not paths or not all(
            isinstance(p, (str, os.PathLike)) for p in paths):
        raise InvalidArgumentError(
            "data must be a tf.data.Dataset, a NumPy array (or a pair of arrays), or image / "
            f"TFRecord paths (files, folders, globs). Received: data of type {type(data).__name__}")
    files = _expand([os.fspath(p) for p in paths])
    if len(files) == 1 and files[0].lower().endswith(".npy"):
        return _ArraySource(np.load(files[0], mmap_mode="r", allow_pickle=False),
                            needs_class_ids)
    tfrecords = [f.lower().endswith(TFRECORD_SUFFIXES) for f in files]
    if all(tfrecords):
        return _TFRecordSource(files, sample_shape, needs_class_ids, preprocessing)
    if any(tfrecords) or not all(f.lower().endswith(inputs.IMAGE_SUFFIXES) for f in files):
        odd = [f for f in files if not f.lower().endswith(inputs.IMAGE_SUFFIXES)][:3]
        raise InvalidArgumentError(
            f"data files must be all images ({', '.join(inputs.IMAGE_SUFFIXES)}) or all TFRecords "
            f"({', '.join(TFRECORD_SUFFIXES)}), or one .npy array. Received: {odd}")
    if needs_class_ids:
        raise InvalidArgumentError(
            "Image files carry no class ids, but the relevance model was built with "
            "target='input'. Build it with target='max' or an int, or pass a tf.data dataset "
            "yielding (x, class_id).")
    return _ImageFiles(files, sample_shape, preprocessing)


def decode_images(blobs, sample_shape, preprocessing="unit"):
    """Encoded images (PNG / JPEG / BMP bytes) as one float32 batch, read like image files.

    Each image goes through :func:`tf_dtd.app.inputs.load_inputs` (channels, resizing,
    ``preprocessing``), so bytes and files give the same model input.

    Raises:
        InvalidArgumentError: bytes that are not an image.
    """
    with tempfile.TemporaryDirectory(prefix="tf-dtd-decode-") as folder:
        paths = []
        for index, blob in enumerate(blobs):
            path = os.path.join(folder, f"{index}.image")
            with open(path, "wb") as handle:
                handle.write(blob)
            paths.append(path)
        if not paths:
            return np.zeros((0, *sample_shape), "float32")
        try:
            return inputs.load_inputs(paths, tuple(sample_shape), preprocessing)[0]
        except InvalidArgumentError as error:
            message = str(error)
            for index, path in enumerate(paths):
                message = message.replace(path, f"<encoded image {index}>")
            raise InvalidArgumentError(message) from None


def parse_example(record, sample_shape, preprocessing="unit"):
    """One serialised ``tf.train.Example`` (the schema in the module doc) as a dict.

    Returns:
        ``{"x": float32 sample, "id": str or None, "class_id": int or None, "label": ...}``.

    Raises:
        InvalidArgumentError: not an Example, neither ``"image"`` nor ``"x"``, or an ``"x"``
            whose size does not match ``sample_shape``.
    """
    try:
        features = tf.train.Example.FromString(record).features.feature
    except Exception as error:  # protobuf's DecodeError is not exported
        raise InvalidArgumentError(f"A record is not a tf.train.Example: {error}") from None
    sample_id = features["id"].bytes_list.value[0].decode() if "id" in features else None
    where = f" (id {sample_id!r})" if sample_id else ""
    if "image" in features:
        x = decode_images(features["image"].bytes_list.value[:1], sample_shape, preprocessing)[0]
    elif "x" in features:
        x = np.asarray(features["x"].float_list.value, "float32")
        if x.size != int(np.prod(sample_shape)):
            raise InvalidArgumentError(
                f"TFRecord feature 'x'{where} must hold {int(np.prod(sample_shape))} floats, a "
                f"sample of shape {tuple(sample_shape)}. Received: {x.size} floats")
        x = x.reshape(sample_shape)
    else:
        raise InvalidArgumentError(
            f"A TFRecord example{where} needs a feature 'image' (encoded bytes) or 'x' (floats)."
            f" Received: features {sorted(features)}")

    def integer(name):
        return int(features[name].int64_list.value[0]) if name in features else None

    return {"x": x, "id": sample_id, "class_id": integer("class_id"), "label": integer("label")}


def _expand(paths):
    """Folders → their images (sorted), globs → their matches (sorted), files → themselves.

    Paths with a scheme (``gs://``, ``s3://``, ...) go through ``tf.io.gfile``: TensorFlow reads
    TFRecords there; images are read with Pillow, from local files only.
    """
    files = []
    for path in paths:
        if "://" in path:
            files += _expand_remote(path)
        elif os.path.isdir(path):
            files += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(inputs.IMAGE_SUFFIXES + TFRECORD_SUFFIXES))
        elif glob.has_magic(path):
            files += sorted(f for f in glob.glob(path) if os.path.isfile(f))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"Input {path!r} does not exist.")
    if not files:
        raise InvalidArgumentError(f"No images or TFRecords found in {list(paths)}.")
    return files


def _expand_remote(path):
    if tf.io.gfile.isdir(path):
        matches = [tf.io.gfile.join(path, name) for name in tf.io.gfile.listdir(path)]
    else:
        matches = tf.io.gfile.glob(path)
    if not matches:
        raise FileNotFoundError(f"Input {path!r} does not exist.")
    images = [m for m in matches if m.lower().endswith(inputs.IMAGE_SUFFIXES)]
    if images:
        raise InvalidArgumentError(
            "Images are read from local files; for images on remote storage use TFRecords, a "
            f"tf.data dataset, or tf_dtd.beam. Received: {images[:3]}")
    return sorted(matches)


def _hash(*arrays):
    digest = hashlib.sha256()
    for array in arrays:
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _head(source):
    """A hash of the first samples: a resumed run must see the same data in the same order."""
    batch = next(source.batches(0, _HEAD), None)
    return None if batch is None else _hash(batch.x, batch.ids, batch.class_ids, batch.labels)


def _split_pair(y, needs_class_ids):
    return (y, None) if needs_class_ids else (None, y)


class _ArraySource:
    kind = "array"

    def __init__(self, data, needs_class_ids):
        self.x, y = (data, None) if isinstance(data, np.ndarray) else data
        if y is not None and len(y) != len(self.x):
            raise InvalidArgumentError(
                f"x and y must have one entry per sample. Received: {len(self.x)} samples and "
                f"{len(y)} entries of y")
        if needs_class_ids and y is None:
            raise InvalidArgumentError(
                "The relevance model was built with target='input': pass data=(x, class_ids). "
                "Received: an array without class ids")
        self.class_ids, self.labels = _split_pair(y, needs_class_ids)
        self.count = len(self.x)

    def fingerprint(self):
        return {"kind": self.kind, "shape": list(self.x.shape), "dtype": self.x.dtype.str,
                "head": _head(self)}

    def batches(self, start, batch_size):
        for begin in range(start, self.count, batch_size):
            part = slice(begin, begin + batch_size)
            yield Batch(np.asarray(self.x[part]), np.arange(begin, min(begin + batch_size,
                                                                        self.count)),
                        None if self.class_ids is None else np.asarray(self.class_ids[part]),
                        None if self.labels is None else np.asarray(self.labels[part]))


class _ImageFiles:
    kind = "images"

    def __init__(self, files, sample_shape, preprocessing):
        self.files, self.sample_shape, self.preprocessing = files, sample_shape, preprocessing
        self.count = len(files)

    def fingerprint(self):
        return {"kind": self.kind, "count": self.count,
                "paths": hashlib.sha256("\n".join(self.files).encode()).hexdigest()}

    def batches(self, start, batch_size):
        for begin in range(start, self.count, batch_size):
            files = self.files[begin:begin + batch_size]
            x = inputs.load_inputs(files, tuple(self.sample_shape), self.preprocessing)[0]
            yield Batch(x, np.array(files))


class _TFRecordSource:
    kind = "tfrecord"

    def __init__(self, files, sample_shape, needs_class_ids, preprocessing):
        self.files, self.sample_shape = files, sample_shape
        self.needs_class_ids, self.preprocessing = needs_class_ids, preprocessing
        self.count = None

    def fingerprint(self):
        return {"kind": self.kind, "files": hashlib.sha256("\n".join(self.files).encode())
                .hexdigest(), "head": _head(self)}

    def batches(self, start, batch_size):
        def numbered(path):  # (record, file, index in the file)
            return tf.data.Dataset.zip((tf.data.TFRecordDataset(path),
                                        tf.data.Dataset.from_tensors(path).repeat(),
                                        tf.data.Dataset.range(tf.int64.max)))

        records = tf.data.Dataset.from_tensor_slices(self.files).interleave(
            numbered, cycle_length=1)  # file after file, in order
        for serialised, files, indices in records.skip(start).batch(
                batch_size).prefetch(2).as_numpy_iterator():
            parsed = [parse_example(r, self.sample_shape, self.preprocessing) for r in serialised]
            ids = [p["id"] or f"{f.decode()}:{i}" for p, f, i in zip(parsed, files, indices)]
            yield Batch(np.stack([p["x"] for p in parsed]), np.array(ids),
                        *self._targets(parsed, ids))

    def _targets(self, parsed, ids):
        if self.needs_class_ids:
            missing = [i for p, i in zip(parsed, ids) if p["class_id"] is None]
            if missing:
                raise InvalidArgumentError(
                    "The relevance model was built with target='input': every TFRecord example "
                    f"needs an int64 feature 'class_id'. Received: none in {missing[:3]}")
            return np.array([p["class_id"] for p in parsed]), None
        labels = [p["label"] for p in parsed]
        if all(label is None for label in labels):
            return None, None
        return None, np.array([-1 if label is None else label for label in labels])


class _DatasetSource:
    kind = "tf.data"

    def __init__(self, dataset, sample_rank, needs_class_ids):
        self.keys, self.batched = _structure(dataset.element_spec, sample_rank, needs_class_ids)
        self.dataset, self.needs_class_ids = dataset, needs_class_ids
        cardinality = int(dataset.cardinality())
        self.count = cardinality if cardinality >= 0 and not self.batched else None

    def fingerprint(self):
        return {"kind": self.kind, "element_spec": repr(self.dataset.element_spec),
                "head": _head(self)}

    def batches(self, start, batch_size):
        keys = self.keys
        samples = self.dataset.map(lambda *e: _as_dict(e[0] if len(e) == 1 else e, keys))
        if self.batched:
            samples = samples.unbatch()
        if "id" not in keys.values():
            samples = samples.enumerate().map(lambda i, e: {**e, "id": i})
        for element in samples.skip(start).batch(batch_size).prefetch(2).as_numpy_iterator():
            ids = element["id"]
            if ids.dtype.kind in "OS":
                ids = np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids])
            yield Batch(element["x"], ids, element.get("class_id"), element.get("label"))


def _structure(spec, sample_rank, needs_class_ids):
    """Map an element structure to names: ``({path: name}, batched)``.

    A path is a tuple of keys / indices into the element; names are x, id, class_id, label.
    """
    y_name = "class_id" if needs_class_ids else "label"
    if isinstance(spec, dict):
        unknown = set(spec) - {"x", "id", "class_id", "label"}
        if "x" not in spec or unknown:
            raise InvalidArgumentError(
                "A dataset of dicts needs the key 'x' and may have 'id', 'class_id', 'label'. "
                f"Received: keys {sorted(spec)}")
        if "class_id" in spec and not needs_class_ids:
            raise InvalidArgumentError(
                "The dataset yields 'class_id', but the relevance model does not take class ids "
                "(build it with target='input'), or name the entry 'label'. Received: keys "
                f"{sorted(spec)}")
        keys = {(name,): name for name in spec}
    elif isinstance(spec, tf.TensorSpec):
        keys = {(): "x"}
    elif isinstance(spec, tuple) and len(spec) == 1:  # (x,) and ((x, class_id),)
        return _structure(spec[0], sample_rank, needs_class_ids)
    elif isinstance(spec, tuple) and len(spec) == 2:
        keys = {(0,): "x", (1,): y_name}
    else:
        raise InvalidArgumentError(
            "A dataset must yield x, (x,), (x, y), ((x, class_id),) or a dict with 'x'. "
            f"Received: element_spec {spec}")
    if needs_class_ids and "class_id" not in keys.values():
        raise InvalidArgumentError(
            "The relevance model was built with target='input': the dataset must yield "
            f"(x, class_id) or a dict with 'class_id'. Received: element_spec {spec}")
    x_spec = spec
    for key in next(path for path, name in keys.items() if name == "x"):
        x_spec = x_spec[key]
    rank = x_spec.shape.rank
    if rank not in (sample_rank, sample_rank + 1):
        raise InvalidArgumentError(
            f"The dataset's x must be samples of rank {sample_rank} or batches of rank "
            f"{sample_rank + 1}. Received: x of shape {x_spec.shape}")
    return keys, rank == sample_rank + 1


def _as_dict(element, keys):
    result = {}
    for path, name in keys.items():
        value = element
        for key in path:
            value = value[key]
        result[name] = value
    return result
