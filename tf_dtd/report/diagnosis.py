"""Which Deep Taylor assumptions a model violates, before you trust its heatmaps.

Deep Taylor Decomposition derives its rules for ReLU networks whose units are driven by their
inputs, not by their biases, with pixels in a known box. :func:`diagnose` lists where a model
departs from that — one short explanation each — without building the relevance model.
"""

import dataclasses

import keras
import numpy as np

from tf_dtd import checks
from tf_dtd import rules as rules_lib
from tf_dtd.model import analysis, canonize
from tf_dtd.relevance.plan import decide
from tf_dtd.report.info import layer_rows

__all__ = ["Finding", "diagnose", "format_findings"]

_DEEP_TAYLOR_RULES = (rules_lib.ZPlus, rules_lib.ZBox, rules_lib.WSquare)
_RELU_LIKE = (None, "linear", "relu")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One departure from the Deep Taylor assumptions.

    Attributes:
        kind: ``"unsupported_layer"``, ``"non_relu_activation"``, ``"positive_bias"``,
            ``"unfoldable_batch_norm"``, ``"non_linear_interaction"`` or
            ``"input_outside_box"``.
        layers: names of the layers concerned (empty for input findings).
        message: one short explanation.
    """

    kind: str
    layers: tuple
    message: str


def diagnose(model, rules="deep_taylor_bounded", *, input_range=None, x=None):
    """List the Deep Taylor assumptions ``model`` violates under ``rules``.

    Args:
        model, rules, input_range: as for :func:`tf_dtd.relevance_model`.
        x: optional input batch (NumPy): then inputs outside the z^B box are reported too.

    Returns:
        A list of :class:`Finding`; empty when nothing departs from the assumptions.

    Example:
        >>> for finding in tf_dtd.diagnose(model, "deep_taylor_bounded", input_range=(0, 1)):
        ...     print(finding.message)
    """
    plan = decide(model, rules, input_range=checks.check_input_range(input_range))
    records = layer_rows(plan)
    findings = [Finding("unsupported_layer", (r["name"],), r["error"])
                for r in records if r["error"]]
    deep_taylor = any(isinstance(r["rule"], _DEEP_TAYLOR_RULES) for r in records)
    findings += _activations(plan.traced, deep_taylor)
    findings += _interactions(plan.traced)
    if not plan.errors:
        findings += _canonical_findings(plan)
    if x is not None:
        findings += _inputs_outside(np.asarray(x), plan.composite.first)
    return findings


def format_findings(findings):
    """The findings as text, one paragraph each."""
    if not findings:
        return "No departures from the Deep Taylor assumptions found."
    return "\n".join(f"- [{f.kind}] {f.message}" for f in findings)


def _activations(traced, deep_taylor):
    """Non-ReLU activations, grouped by kind (z⁺ passes relevance through them as ReLUs)."""
    if not deep_taylor:
        return []
    output_layer = traced.producers()[traced.output_id].layer
    kinds = {}
    for node in traced.nodes:
        name = _activation_kind(node.layer)
        if name in _RELU_LIKE or (node.layer is output_layer and name in canonize.OUTPUT_SQUASHERS):
            continue
        kinds.setdefault(name, []).append(node.layer.name)
    return [Finding("non_relu_activation", tuple(layers),
                    f"{len(layers)} layer(s) apply {name} ({_some(layers)}): Deep Taylor's z⁺ "
                    f"rule is derived for ReLUs; relevance passes through {name} as if it were "
                    "one, so the heatmap there is a heuristic, not a Taylor expansion.")
            for name, layers in kinds.items()]


def _activation_kind(layer):
    if isinstance(layer, keras.layers.ReLU):
        plain = layer.max_value is None and layer.negative_slope == 0 and layer.threshold == 0
        return "relu" if plain else "a capped or leaky ReLU"
    if isinstance(layer, (keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)):
        return type(layer).__name__
    return analysis.activation_name(layer)


def _interactions(traced):
    """Products and LayerNorm: relevance rules there are modelling choices, not derivations."""
    layers = [n.layer.name for n in traced.nodes
              if isinstance(n.layer, (keras.layers.Multiply, keras.layers.LayerNormalization))
              or (type(n.layer).__name__ == "Multiply" and len(n.inputs) > 1)]
    if not layers:
        return []
    return [Finding("non_linear_interaction", tuple(layers),
                    f"{len(layers)} product or LayerNormalization layer(s) ({_some(layers)}): "
                    "no Taylor rule exists for them; tf_dtd gives a gate's signal all the "
                    "relevance and holds LayerNorm's σ constant (see docs/layers.md).")]


def _canonical_findings(plan):
    """Positive biases (after BatchNorm folding) and BatchNorms that could not be folded."""
    unfolded, unfolded_rules, biased, described = [], set(), [], []
    for step in plan.steps:
        if step.origin.role != "layer" or step.user_layer is None:
            continue
        origin = step.user_layer.name
        if isinstance(step.user_layer, keras.layers.BatchNormalization):
            unfolded.append(origin)
            unfolded_rules.add(type(step.rule).__name__)
        elif step.context.position is not None and getattr(step.layer, "bias", None) is not None:
            values = keras.ops.convert_to_numpy(step.layer.bias)
            if np.any(values > 0):
                biased.append(origin)
                described.append(f"{origin!r} ({int(np.sum(values > 0))}/{values.size}, "
                                 f"max {float(values.max()):.3g})")
    findings = []
    if unfolded:
        findings.append(Finding(
            "unfoldable_batch_norm", tuple(unfolded),
            f"{len(unfolded)} BatchNormalization layer(s) ({_some(unfolded)}) do not directly "
            "follow a Dense or convolution, so they cannot be folded: they are affine layers of "
            f"their own and take the composite's rule ({', '.join(sorted(unfolded_rules))}). "
            "Under LRP-0/ε the shift absorbs relevance and nearly cancelling terms amplify it; "
            "z⁺ (the Deep Taylor presets) passes relevance through them unchanged."))
    if biased:
        findings.append(Finding(
            "positive_bias", tuple(biased),
            f"{len(biased)} kernel layer(s) have positive biases after BatchNorm folding "
            f"({_some(described, quote=False)}): a unit driven by its bias holds relevance no "
            "input explains; z⁺ spreads such a unit's relevance flat over its receptive field, "
            "LRP-0/ε let the bias absorb it (conservation_report shows how much)."))
    return findings


def _inputs_outside(x, first_rule):
    samples = checks.samples_outside_box(x, first_rule)
    if not samples:
        return []
    return [Finding("input_outside_box", (),
                    f"{samples} of {len(x)} samples have inputs outside the z^B box "
                    f"{first_rule!r}: z^B relevance is only non-negative inside the box; pass "
                    "the range the inputs really take.")]


def _some(names, count=3, quote=True):
    shown = ", ".join(repr(n) if quote else n for n in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")
