"""LRP and Deep Taylor rules: frozen hyper-parameters plus the maths of each rule.

Linear rules (:mod:`tf_dtd.rules.linear`) apply to every linear or affine layer — Dense and
convolutions, and the layers without a kernel of their own (``Add``, average pooling, an unfolded
BatchNorm). Structural rules (:mod:`tf_dtd.rules.structural`) govern pass-through, max-pooling
and products. The engine that runs them is :mod:`tf_dtd.relevance.layers`.

Example:
    >>> composite = tf_dtd.Composite(default=tf_dtd.rules.ZPlus(),
    ...                              first=tf_dtd.rules.ZBox(0.0, 1.0))
"""

from tf_dtd.rules.base import FLAT_TERMS, Part, Rule, Term, deserialize, serialize, stabilize
from tf_dtd.rules.linear import AlphaBeta, Epsilon, Flat, Gamma, WSquare, Z, ZBox, ZPlus
from tf_dtd.rules.structural import EqualShares, Pass, SignalTakesAll, WinnerTakeAll

__all__ = [
    "Rule", "Part", "Term", "Z", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "WSquare",
    "Flat", "Pass", "WinnerTakeAll", "SignalTakesAll", "EqualShares", "stabilize",
    "serialize", "deserialize", "FLAT_TERMS",
]
