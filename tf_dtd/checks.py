"""Checks of user arguments: the input box, targets and class ids, and batches given to explain.

Each raises :class:`tf_dtd.InvalidArgumentError` naming the argument and what was received, so
that a mistake never turns into a silent all-zero or wrong heatmap. NumPy only (no TensorFlow),
so that light modules (``tf_dtd.visualize``, the command line) can use it.
"""

import warnings

import numpy as np

from tf_dtd.errors import InputRangeWarning, InvalidArgumentError

__all__ = ["check_input_range", "check_class_ids", "check_choice", "positive_int",
           "check_target", "check_batch", "float_batch",
           "samples_outside_box", "warn_outside_box"]


def check_input_range(input_range):
    """``input_range`` as a pair of float64 arrays with ``low < high`` (``None`` stays None)."""
    if input_range is None:
        return None
    try:
        low, high = input_range
        low, high = np.asarray(low, dtype="float64"), np.asarray(high, dtype="float64")
        low_b, high_b = np.broadcast_arrays(low, high)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            "input_range must be a pair (low, high) of numbers or broadcastable arrays. "
            f"Received: input_range={input_range!r}"
        ) from None
    if np.any(low_b >= high_b):
        raise InvalidArgumentError(
            f"input_range needs low < high everywhere. Received: input_range={input_range!r}"
        )
    return low, high


def check_class_ids(class_ids, num_samples, num_classes, *, name="target"):
    """``class_ids`` as an int32 array of ``num_samples`` class ids in ``[0, num_classes)``."""
    array = np.asarray(class_ids)
    if array.ndim != 1 or array.dtype.kind not in "iu" or len(array) != num_samples:
        raise InvalidArgumentError(
            f"Expected {name} to be 'max', an int, or a 1-D integer array of {num_samples} class "
            f"ids (one class id per sample). Received: {name} of dtype {array.dtype} and shape "
            f"{array.shape}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise InvalidArgumentError(
            f"Expected class ids in [0, {num_classes}). Received: min {array.min()}, max "
            f"{array.max()} ({name} from {array.min()} to {array.max()})")
    return array.astype("int32")


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``, else an :class:`InvalidArgumentError`."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(
            f"Expected {name} to be one of {tuple(choices)}. Received: {name}={value!r}")
    return value


def positive_int(name, value):
    """``value`` as an int ≥ 1, else an :class:`InvalidArgumentError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"Expected {name} to be an int >= 1. Received: {name}={value!r}")
    return int(value)


def check_target(target, num_classes):
    if target == "max":
        return
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidArgumentError(
            f"target must be 'max', 'input' or an int class index. Received: target={target!r}"
        )
    if not 0 <= target < num_classes:
        raise InvalidArgumentError(
            f"target must be a class index in [0, {num_classes}). Received: target={target}"
        )


def check_batch(x, model):
    """``x`` as a NumPy batch of the model's sample shape (numeric; rank and sizes checked)."""
    array = np.asarray(x)
    if array.dtype.kind not in "fiub":
        raise InvalidArgumentError(
            f"x must hold numbers. Received: an array of dtype {array.dtype}")
    expected = tuple(model.input_shape[1:])
    sample = array.shape[1:]
    if array.ndim != len(expected) + 1 or any(
            e is not None and e != s for e, s in zip(expected, sample)):
        raise InvalidArgumentError(
            f"x must be a batch of samples of shape {expected}, i.e. an array of shape "
            f"(batch, {', '.join(str(e) for e in expected)}). Received: shape {array.shape}"
        )
    return array


def float_batch(x, model):
    """:func:`check_batch`, then as float32 (float64 stays float64)."""
    x = check_batch(x, model)
    return x.astype("float64" if x.dtype == np.float64 else "float32", copy=False)


def samples_outside_box(x, first_rule):
    """How many samples of ``x`` leave the box of ``first_rule`` (0 for a rule without one):
    the ``low`` and ``high`` of its input constants (z^B's)."""
    constants = {} if first_rule is None else first_rule.input_constants()
    if not {"low", "high"} <= set(constants) or len(x) == 0:
        return 0
    low, high = np.asarray(constants["low"]), np.asarray(constants["high"])
    values = np.asarray(x, dtype="float64")
    slack = 1e-6 * float(np.max(high - low))
    with np.errstate(invalid="ignore"):
        outside = (values < low - slack) | (values > high + slack)
    return int(np.sum(np.any(outside.reshape(len(values), -1), axis=1)))


def warn_outside_box(x, first_rule):
    """Warn when samples leave the z^B box of the first-layer rule (z^B can turn negative)."""
    samples = samples_outside_box(x, first_rule)
    if samples:
        warnings.warn(
            f"{samples} of {len(x)} samples have inputs outside the z^B box "
            f"[{first_rule!r}] given by input_range; z^B relevance is not guaranteed to be "
            "non-negative there. Pass the range your inputs really take.",
            InputRangeWarning, stacklevel=3)
