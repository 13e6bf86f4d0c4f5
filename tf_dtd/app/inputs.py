"""Read images and arrays into a model's input: what ``tf-dtd explain`` feeds the model.

Image files (PNG, JPEG, BMP) are converted to the model's channel count (grayscale or RGB),
resized to its input size (bilinear; one warning lists the images that had another aspect ratio
and were stretched) and preprocessed by a named scheme; ``.npy`` arrays are taken as already
preprocessed model inputs and only resized — keeping their aspect ratio, anything else is an
error — and converted between 1 and 3 channels.

Preprocessing schemes, with the z^B box each implies (``input_range``):

========  =============================================  =========================
name      model input                                    box
========  =============================================  =========================
unit      pixels / 255                                   [0, 1]
raw       pixels as they are                             [0, 255]
tf        pixels / 127.5 − 1                             [−1, 1]
caffe     RGB → BGR, minus the ImageNet mean (BGR)       per channel, from the mean
torch     (pixels / 255 − ImageNet mean) / ImageNet std  per channel
========  =============================================  =========================
"""

import os
import warnings
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from tf_dtd.boxes import input_box
from tf_dtd.errors import InvalidArgumentError

__all__ = ["IMAGE_SUFFIXES", "PREPROCESSING", "UniqueNames", "collect", "load_inputs",
           "load_model_file",
           "preprocessing_box"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESSING = ("unit", "raw", "tf", "caffe", "torch")


def collect(paths):
    """Expand files and folders into the list of input files (a folder's images, sorted).

    Raises:
        FileNotFoundError: a path does not exist.
        InvalidArgumentError: a file is neither an image nor ``.npy``, or nothing was found.
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            try:
                names = os.listdir(path)
            except OSError as error:
                raise InvalidArgumentError(
                    f"Cannot read folder {path!r}: {error.strerror}.") from None
            found = sorted(os.path.join(path, name) for name in names
                           if name.lower().endswith(IMAGE_SUFFIXES + (".npy",)))
            files.extend(found)
        elif os.path.isfile(path):
            if not path.lower().endswith(IMAGE_SUFFIXES + (".npy",)):
                raise InvalidArgumentError(
                    f"Input {path!r} is not an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy "
                    "array."
                )
            files.append(path)
        else:
            raise FileNotFoundError(f"Input {path!r} does not exist.")
    if not files:
        raise InvalidArgumentError(f"No images or .npy arrays found in {list(paths)}.")
    return files


def load_inputs(files, input_shape, preprocessing="unit"):
    """Read ``files`` into one batch shaped for a model with ``input_shape`` ``(H, W, C)``.

    Returns:
        ``(x, names, pictures)``: the float32 batch, one name per sample (the file's stem, with
        ``_<i>`` for the samples of a multi-sample ``.npy``) and, per sample, the RGB uint8
        picture to overlay heatmaps on (``None`` for ``.npy`` samples).

    Raises:
        InvalidArgumentError: a file cannot be read, or an array cannot be an image for the
            model (see :func:`collect` for missing files).

    Warns:
        UserWarning: once, naming the images stretched to another aspect ratio.
    """
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3) or None in input_shape:
        raise InvalidArgumentError(
            "tf-dtd reads images for models whose input is (height, width, 1 or 3 channels). "
            f"Received: model input shape {tuple(input_shape)}"
        )
    if preprocessing not in PREPROCESSING:
        raise InvalidArgumentError(
            f"Unknown preprocessing. Expected one of {PREPROCESSING}. "
            f"Received: {preprocessing!r}"
        )
    samples, names, pictures, stretched = [], [], [], []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if path.lower().endswith(".npy"):
            arrays = _read_array(path, input_shape)
            for index, array in enumerate(arrays):
                samples.append(array)
                names.append(stem if len(arrays) == 1 else f"{stem}_{index}")
                pictures.append(None)
        else:
            picture, size = _read_image(path, input_shape)
            if not _same_aspect(size, input_shape[:2]):
                stretched.append(os.path.basename(path))
            samples.append(_preprocess(picture.astype("float32"), preprocessing))
            names.append(stem)
            pictures.append(np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1
                            else picture)
    if stretched:
        images = sum(not path.lower().endswith(".npy") for path in files)
        listed = ", ".join(stretched[:3]) + (", ..." if len(stretched) > 3 else "")
        warnings.warn(
            f"{len(stretched)} of {images} images have another aspect ratio than the model "
            f"input ({input_shape[0]}x{input_shape[1]}) and were stretched to it: {listed}",
            stacklevel=2)
    unique = UniqueNames()
    return np.stack(samples).astype("float32"), [unique.add(n) for n in names], pictures


def preprocessing_box(preprocessing, channels):
    """The ``input_range`` of images preprocessed by ``preprocessing`` (see the module doc)."""
    if preprocessing == "unit":
        return 0.0, 1.0
    if preprocessing == "raw":
        return 0.0, 255.0
    if preprocessing == "tf":
        return -1.0, 1.0
    mean, std, pixel_range = _normalisation(preprocessing, channels)
    return input_box(mean, std, pixel_range=pixel_range)


def _normalisation(preprocessing, channels):
    if channels != 3:
        raise InvalidArgumentError(
            f"Preprocessing {preprocessing!r} is for RGB models. Received: a model with "
            f"{channels} channel(s); use 'unit', 'raw' or 'tf'."
        )
    if preprocessing == "caffe":
        return np.array(_CAFFE_MEAN_BGR), 1.0, (0.0, 255.0)
    return np.array(_TORCH_MEAN), np.array(_TORCH_STD), (0.0, 1.0)


def _preprocess(pixels, preprocessing):
    if preprocessing == "unit":
        return pixels / 255.0
    if preprocessing == "raw":
        return pixels
    if preprocessing == "tf":
        return pixels / 127.5 - 1.0
    if preprocessing == "caffe":
        pixels = pixels[..., ::-1]
    else:
        pixels = pixels / 255.0
    mean, std, _ = _normalisation(preprocessing, pixels.shape[-1])
    return (pixels - mean) / std


def _same_aspect(size, model_size):
    """Whether ``(height, width)`` has the aspect ratio of ``model_size`` (to 1 %)."""
    (height, width), (model_height, model_width) = size, model_size
    return abs(width * model_height - height * model_width) <= 0.01 * height * model_width


def _read_image(path, input_shape):
    """The picture resized for the model (uint8, H×W×C) and the image's own ``(height, width)``."""
    height, width, channels = input_shape
    try:
        with Image.open(path) as image:
            size = image.height, image.width
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.BILINEAR)
            picture = np.asarray(image, dtype="uint8")
    except (UnidentifiedImageError, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise InvalidArgumentError(f"Cannot read image {path!r}: {reason}") from None
    return (picture[..., None] if picture.ndim == 2 else picture), size


def _read_array(path, input_shape):
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise InvalidArgumentError(f"Cannot read array {path!r}: {reason}") from None
    shape = array.shape
    if array.dtype.kind not in "fiub":
        raise InvalidArgumentError(
            f"Array {path!r} must hold numbers. Received: dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None, ..., None]
    elif array.ndim == 3:
        array = array[None] if array.shape[-1] in (1, 3) else array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or 0 in array.shape:
        raise InvalidArgumentError(
            f"Array {path!r} must be (H, W), (H, W, C), (N, H, W) or (N, H, W, C) with C 1 or "
            f"3. Received: shape {shape}"
        )
    if not _same_aspect(array.shape[1:3], input_shape[:2]):
        raise InvalidArgumentError(
            f"Array {path!r} cannot be images for the model's {input_shape[0]}x{input_shape[1]} "
            f"input: read as samples of {array.shape[1]}x{array.shape[2]}, they have another "
            "aspect ratio (arrays are model inputs: they are resized, never stretched). "
            f"Received: shape {shape}"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"Array {path!r} holds NaN or infinite values.")
    return [_fit(sample.astype("float32"), input_shape) for sample in array]


def _fit(sample, input_shape):
    """Resize one (H, W, C) float array bilinearly and convert between 1 and 3 channels."""
    height, width, channels = input_shape
    if sample.shape[:2] != (height, width):
        sample = np.stack([np.asarray(Image.fromarray(sample[..., c]).resize(
            (width, height), Image.BILINEAR)) for c in range(sample.shape[-1])], axis=-1)
    if sample.shape[-1] != channels:
        sample = (np.repeat(sample, 3, axis=-1) if channels == 3
                  else sample.mean(axis=-1, keepdims=True))
    return sample


class UniqueNames:
    """Sample names made unique as they come (two ``a.png`` in different folders): ``a``, ``a~1``.

    Example:
        >>> names = UniqueNames()
        >>> [names.add(n) for n in ["a", "b", "a"]]
        ['a', 'b', 'a~1']
    """

    def __init__(self):
        self.seen = {}

    def add(self, name):
        """Return ``name``, or ``name~k`` if it came ``k`` times before."""
        count = self.seen.get(name, 0)
        self.seen[name] = count + 1
        return name if count == 0 else f"{name}~{count}"


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def load_model_file(path):
    """Load the Keras model file ``path`` (``.keras`` or ``.h5``), or say what is wrong with it.

    Raises:
        InvalidArgumentError: the file is missing, has another suffix, is not what its suffix
            says (a text file named ``x.keras``) or Keras cannot read it.
    """
    import keras

    if not os.path.exists(path):
        raise InvalidArgumentError(f"Model file {path!r} does not exist.")
    if os.path.isdir(path) or not path.endswith((".keras", ".h5")):
        raise InvalidArgumentError(f"Model {path!r} must be a .keras or .h5 file.")
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_HDF5_SIGNATURE))
    except OSError as error:
        raise InvalidArgumentError(f"Cannot read model {path!r}: {error.strerror}.") from None
    kind = ("a zip archive" if path.endswith(".keras") else "an HDF5 file")
    if (not zipfile.is_zipfile(path) if path.endswith(".keras") else head != _HDF5_SIGNATURE):
        raise InvalidArgumentError(
            f"{path!r} is not a Keras model file: a {os.path.splitext(path)[1]} model is "
            f"{kind}, as model.save writes it.")
    try:
        return keras.models.load_model(path)
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise InvalidArgumentError(f"Cannot read model {path!r}: {type(error).__name__}: "
                                   f"{first_line}") from error
