"""Exceptions and warnings raised by tf_dtd. All errors derive from `TfDtdError`."""


class TfDtdError(Exception):
    """Base class of every error tf_dtd raises on purpose."""


class UnsupportedLayerError(TfDtdError, TypeError):
    """A layer has no relevance handler: register one with `tf_dtd.register_layer_rule`."""


class UnsupportedModelError(TfDtdError, TypeError):
    """The model cannot be rewritten (subclassed, several inputs or outputs, unbuilt, ...)."""


class InvalidArgumentError(TfDtdError, ValueError):
    """An argument of a tf_dtd function or rule is out of its domain."""


class InputRangeWarning(UserWarning):
    """Inputs lie outside the box given by ``input_range`` (z^B relevance may turn negative)."""


def describe(layer):
    """`'name' (ClassName)`: how every error message names a layer."""
    return f"'{getattr(layer, 'name', '?')}' ({type(layer).__name__})"


class MissingDependencyError(TfDtdError, ImportError):
    """An optional dependency of a tf_dtd module is not installed (the message says what to
    install)."""
