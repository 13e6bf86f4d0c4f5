"""tf_dtd: Deep Taylor Decomposition and Layer-wise Relevance Propagation for Keras 3.

Example:
    >>> import keras, tf_dtd
    >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded", input_range=(0.0, 1.0))
    >>> heatmaps = relevance.predict(images)

``import tf_dtd`` does not start TensorFlow by itself (so that ``tf-dtd --help`` answers at
once): the names that need it are imported on first use (PEP 562). tf_dtd's Keras layers must
be registered before ``keras.models.load_model`` reads a saved relevance model, so they are
imported as soon as Keras is: at once when Keras or TensorFlow is imported already, otherwise
right after the program imports it.
"""

import importlib
import importlib.abc
import pkgutil
import sys
import warnings

from tf_dtd.boxes import input_box
from tf_dtd.errors import (
    InputRangeWarning,
    InvalidArgumentError,
    TfDtdError,
    UnsupportedLayerError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

__all__ = [
    "Composite",
    "HandlerContext",
    "InputRangeWarning",
    "InvalidArgumentError",
    "PRESETS",
    "TfDtdError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "callbacks",
    "diagnose",
    "digits",
    "evaluate",
    "explain",
    "explain_dataset",
    "input_box",
    "layers",
    "load_results",
    "quantus_explain_func",
    "register_layer_rule",
    "relevance_model",
    "rules",
    "sync_weights",
]

# Public name -> the module that defines it (a module name alone: the name is that module).
_LAZY = {
    "Composite": "tf_dtd.composites",
    "callbacks": "tf_dtd.callbacks",
    "HandlerContext": "tf_dtd.registry",
    "PRESETS": "tf_dtd.composites",
    "diagnose": "tf_dtd.report.diagnosis",
    "digits": "tf_dtd.app.digits",
    "evaluate": "tf_dtd.evaluate",
    "explain": "tf_dtd.relevance.api",
    "explain_dataset": "tf_dtd.scale",
    "layers": "tf_dtd.relevance.layers",
    "load_results": "tf_dtd.scale",
    "quantus_explain_func": "tf_dtd.evaluate.quantus",
    "register_layer_rule": "tf_dtd.registry",
    "relevance_model": "tf_dtd.relevance.api",
    "rules": "tf_dtd.rules",
    "sync_weights": "tf_dtd.relevance.api",
}
_MODULE_NAMES = {"callbacks", "digits", "evaluate", "layers", "rules"}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if name in _MODULE_NAMES else getattr(module, name)
    elif name in _submodules():  # tf_dtd.visualize, tf_dtd.composites, ...
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | _submodules())


def _submodules():
    return {info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}


def _load_all():
    """Import every public name (and with them tf_dtd's Keras layers, registered for loading)."""
    for name in _LAZY:
        __getattr__(name)


def _ready_to_load(finished):
    """Keras is imported, and no import of Keras, TensorFlow or tf_dtd but ``finished`` runs."""
    if "keras" not in sys.modules:
        return False
    return not any(getattr(getattr(module, "__spec__", None), "_initializing", False)
                   for name, module in list(sys.modules.items())
                   if _watched(name) and name != finished)


def _watched(name):
    return name in ("keras", "tensorflow") or name.startswith(__name__ + ".")


class _LoadAfterKeras(importlib.abc.MetaPathFinder):
    """Import finder that runs :func:`_load_all` as soon as Keras is imported.

    It wraps the loaders of ``keras``, ``tensorflow`` and tf_dtd's own modules (found by the
    other finders), and loads tf_dtd when the outermost of these imports completes — never
    while one of them is half-imported. Then it removes itself.
    """

    def find_spec(self, name, path=None, target=None):
        if not _watched(name):
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader.exec_module = self._then_load(spec.loader.exec_module)
        return spec

    def _then_load(self, exec_module):
        def exec_then_load(module):
            exec_module(module)
            if self in sys.meta_path and _ready_to_load(module.__name__):
                sys.meta_path.remove(self)
                try:
                    _load_all()
                except Exception as error:  # never break the program's `import keras`
                    warnings.warn(f"tf_dtd could not finish importing: {error!r}", stacklevel=2)

        return exec_then_load


if "keras" in sys.modules or "tensorflow" in sys.modules:
    _load_all()
else:
    sys.meta_path.insert(0, _LoadAfterKeras())
