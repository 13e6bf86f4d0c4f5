"""Checks of user arguments: the input box, targets and class ids, and batches given to explain.

Each raises :class:`tf_dtd.InvalidArgumentError` naming the argument and what was received, so
that a mistake never turns into a silent all-zero or wrong heatmap.
"""

import warnings

import numpy as np

from tf_dtd import rules as rules_lib
from tf_dtd.errors import InputRangeWarning, InvalidArgumentError

__all__ = ["check_input_range", "check_class_ids", "check_target", "check_batch",
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


def check_class_ids(class_ids, num_samples, num_classes):
    class_ids = np.asarray(class_ids)
    if class_ids.ndim != 1 or not np.issubdtype(class_ids.dtype, np.integer):
        raise InvalidArgumentError(
            "target must be 'max', an int, or a 1-D integer array of class ids. "
            f"Received: target of dtype {class_ids.dtype} and shape {class_ids.shape}"
        )
    if len(class_ids) != num_samples:
        raise InvalidArgumentError(
            f"target needs one class id per sample ({num_samples}). "
            f"Received: {len(class_ids)} class ids"
        )
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise InvalidArgumentError(
            f"class ids must lie in [0, {num_classes}). Received: min {class_ids.min()}, "
            f"max {class_ids.max()}"
        )
    return class_ids.astype("int32")


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


def samples_outside_box(x, first_rule):
    """How many samples of ``x`` leave the z^B box of ``first_rule`` (0 unless it is a ZBox)."""
    if not isinstance(first_rule, rules_lib.ZBox) or len(x) == 0:
        return 0
    values = np.asarray(x, dtype="float64")
    slack = 1e-6 * float(np.max(first_rule.high - first_rule.low))
    with np.errstate(invalid="ignore"):
        outside = (values < first_rule.low - slack) | (values > first_rule.high + slack)
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
