"""Rules for the layers that are not linear maps: pass-through, max-pooling and products.

They sit in a :class:`tf_dtd.Composite` like any other rule (``by_type={MaxPooling2D:
WinnerTakeAll()}``); each preset picks defaults that conserve relevance.

References:
    Arras et al. (2017), "Explaining recurrent neural network predictions in sentiment
    analysis", WASSA, arXiv:1706.07206 (signal-take-all for gates). Arras et al. (2019),
    "Evaluating recurrent neural network explanations", BlackboxNLP, arXiv:1904.11829 (the
    "half" rule: equal shares).
"""

import dataclasses

from tf_dtd.rules.base import Rule

__all__ = ["Pass", "WinnerTakeAll", "SignalTakesAll", "EqualShares"]


@dataclasses.dataclass(frozen=True)
class Pass(Rule):
    """Pass: relevance goes through the layer unchanged (only for layers that keep the shape)."""

    applies_to = "pass"


@dataclasses.dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """Max-pooling, ``Maximum``, ``Minimum``: a window's relevance goes to the input that won it.

    The seed's choice for max-pooling (Montavon et al., 2017). In a tie one input wins, so nothing
    is duplicated. Any linear rule given to a max-pooling layer instead treats it as average
    pooling over the same windows (``Z()``: shares ``a_i / Σ a`` of the window).
    """

    applies_to = "maximum"


@dataclasses.dataclass(frozen=True)
class SignalTakesAll(Rule):
    """A product with a gate (a factor known to lie in [0, 1], e.g. a sigmoid): the gated signal
    takes all the relevance, the gate none (Arras et al., 2017). Conserves."""

    applies_to = "product"


@dataclasses.dataclass(frozen=True)
class EqualShares(Rule):
    """A product of n factors: each factor gets ``1/n`` of the relevance (Arras et al., 2019),
    so relevance also flows into a gate's branch. Conserves."""

    applies_to = "product"
