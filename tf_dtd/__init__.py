"""tf_dtd: Deep Taylor Decomposition and Layer-wise Relevance Propagation for Keras 3.

Example:
    >>> import keras, tf_dtd
    >>> relevance = tf_dtd.relevance_model(model, "deep_taylor_bounded", input_range=(0.0, 1.0))
    >>> heatmaps = relevance.predict(images)
"""

from tf_dtd import evaluate, rules
from tf_dtd.app import digits
from tf_dtd.boxes import input_box
from tf_dtd.composites import PRESETS, Composite
from tf_dtd.errors import (
    InputRangeWarning,
    InvalidArgumentError,
    TfDtdError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from tf_dtd.evaluate.quantus import quantus_explain_func
from tf_dtd.relevance import layers
from tf_dtd.relevance.registry import HandlerContext, register_layer_rule
from tf_dtd.relevance.rewriter import explain, relevance_model
from tf_dtd.report.diagnosis import diagnose
from tf_dtd.scale import explain_dataset, load_results

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
]
