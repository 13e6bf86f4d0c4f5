"""Input boxes for z^B: derive them from the preprocessing, check that they fit the input."""

import numpy as np

from tf_dtd.errors import InvalidArgumentError

__all__ = ["input_box", "check_broadcastable"]


def input_box(mean=0.0, std=1.0, *, pixel_range=(0.0, 255.0)):
    """The z^B box ``(low, high)`` of inputs normalised as ``(pixel - mean) / std``.

    For models fed preprocessed images: ``low = (pixel_min − mean) / std`` and
    ``high = (pixel_max − mean) / std`` per channel, in the channel order the model sees.

    Args:
        mean: per-channel means subtracted from the pixels (scalar or shape ``(C,)``).
        std: per-channel divisors (> 0).
        pixel_range: ``(min, max)`` of the raw pixels before normalisation.

    Returns:
        ``(low, high)`` as float NumPy arrays, ready for ``input_range=``.

    Example:
        >>> # keras.applications.vgg16.preprocess_input: caffe style, BGR, mean subtraction
        >>> tf_dtd.input_box(mean=[103.939, 116.779, 123.68])
        >>> # torch style (DenseNet): pixels / 255, then ImageNet mean and std (RGB)
        >>> tf_dtd.input_box([0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
        ...                  pixel_range=(0.0, 1.0))
    """
    mean = np.asarray(mean, dtype="float64")
    std = np.asarray(std, dtype="float64")
    pixel_min, pixel_max = (float(v) for v in pixel_range)
    if not np.all(std > 0) or not pixel_min < pixel_max:
        raise InvalidArgumentError(
            "input_box needs std > 0 and pixel_range min < max. "
            f"Received: std={std.tolist()}, pixel_range={pixel_range}"
        )
    return (pixel_min - mean) / std, (pixel_max - mean) / std


def check_broadcastable(value_shape, sample_shape, what):
    """Raise unless an array of ``value_shape`` broadcasts to one sample of ``sample_shape``.

    Unknown sizes (``None``) only accept a value of size 1 along that axis.
    """
    known = tuple(1 if d is None else d for d in sample_shape)
    try:
        shape = np.broadcast_shapes(tuple(value_shape), known)
    except ValueError:
        shape = None
    if shape != known:
        raise InvalidArgumentError(
            f"{what} of shape {tuple(value_shape)} does not broadcast to one input sample of "
            f"shape {tuple(sample_shape)}."
        )
