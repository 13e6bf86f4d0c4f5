"""Where relevance is created, lost or spread flat: a per-layer conservation report.

Every layer of the relevance model receives relevance at its output and sends relevance to its
inputs; a conservative layer sends what it receives. :func:`conservation_report` measures both
sums per layer of the user's model on real inputs, says why they differ where it can be told, and
how much relevance the Deep Taylor rules spread flat because a unit had nothing to credit.
"""

import keras
import numpy as np

from tf_dtd import rules as rules_lib
from tf_dtd.relevance.build import build
from tf_dtd.relevance.engine import LinearRelevance
from tf_dtd.relevance.plan import decide

__all__ = ["conservation_report", "format_report"]

_TOLERANCE = 1e-5  # relative leaks below this are float32 rounding


def conservation_report(model, x, rules="deep_taylor_bounded", *, input_range=None,
                        target="max", batch_size=32):
    """Σ relevance arriving at and leaving every layer, averaged over the samples of ``x``.

    Args:
        model, rules, input_range: as for :func:`tf_dtd.relevance_model`.
        x: a batch of inputs (NumPy).
        target: ``"max"`` or an ``int`` class index.
        batch_size: samples per forward pass.

    Returns:
        A list of dicts in graph order (input side first), one per layer of ``model`` that
        carries relevance (a BatchNorm folded into the layer before it has no row of its own):
        ``layer`` (its name), ``type``, ``rule``, ``relevance_out`` (Σ R arriving at its output)
        and ``relevance_in`` (Σ R it sends to its inputs), ``leak`` (``out − in``),
        ``spread_flat`` (Σ R of units with nothing to credit, spread evenly over their receptive
        field — conserved, but not located by the rule), all means over the samples,
        ``relative_leak`` (mean leak / mean |out|), and ``reason``: why relevance leaks there,
        or ``None`` when it is conserved.

    Example:
        >>> report = tf_dtd.evaluate.conservation_report(model, images, "lrp_epsilon")
        >>> print(tf_dtd.evaluate.format_report(report))
    """
    plan = decide(model, rules, input_range=input_range, target=target)
    built = build(plan)
    indices = [i for i, step in enumerate(plan.steps)
               if step.origin.role == "layer" and step.user_layer is not None]
    sums = []
    for index in indices:
        label = plan.steps[index].node.layer.name
        sums.append(_SampleSums(name=built.namer(f"{label}_sum_out"))([built.at_output[index]]))
        sums.append(_SampleSums(name=built.namer(f"{label}_sum_in"))(list(built.sent[index])))
        sums.append(_spread(built, index, built.namer(f"{label}_spread_flat")))
    probe = keras.Model(built.inputs[0], sums)
    values = probe.predict(np.asarray(x), batch_size=batch_size, verbose=0)
    report = []
    for k, index in enumerate(indices):
        step = plan.steps[index]
        out, sent, spread = (values[3 * k + j][:len(x)] for j in range(3))
        scale = float(np.mean(np.abs(out)))
        leak = float(np.mean(out - sent))
        record = dict(
            layer=step.user_layer.name, type=type(step.user_layer).__name__, rule=step.rule,
            relevance_out=float(np.mean(out)), relevance_in=float(np.mean(sent)),
            leak=leak, relative_leak=leak / scale if scale > 0 else 0.0,
            spread_flat=float(np.mean(spread)),
        )
        record["reason"] = (_reason(step, leak) if abs(record["relative_leak"]) > _TOLERANCE
                            else None)
        report.append(record)
    return report


class _SpreadProbe(keras.layers.Layer):
    """Calls a relevance layer's :meth:`~LinearRelevance.spread_flat_share` (reports only)."""

    def __init__(self, reverse, **kwargs):
        super().__init__(**kwargs)
        self.reverse = reverse

    def call(self, inputs):
        return self.reverse.spread_flat_share(inputs)


class _SampleSums(keras.layers.Layer):
    """Σ over every non-batch axis of each tensor, added up: one number per sample (zeros with
    ``zero=True``). A named layer, not bare ops: those take names such as ``add`` that a user's
    layer may already have, and the probe model would refuse the duplicate."""

    def __init__(self, zero=False, **kwargs):
        super().__init__(**kwargs)
        self.zero = zero

    def call(self, tensors):
        total = None
        for tensor in tensors:
            axes = tuple(range(1, len(tensor.shape)))
            value = keras.ops.sum(tensor, axis=axes) if axes else tensor
            total = value if total is None else total + value
        return keras.ops.zeros_like(total) if self.zero else total


def _spread(built, index, name):
    """Per sample, what the step's relevance layer spread flat (zero for other layers)."""
    reverse = built.reverse.get(index)
    if not isinstance(reverse, LinearRelevance):
        return _SampleSums(zero=True, name=name)([built.at_output[index]])
    return _SpreadProbe(reverse, name=name)(built.calls[index])


def _reason(step, leak):
    """Why relevance leaks at ``step``, told from the layer type, its rule and the leak's sign."""
    rule = step.rule
    if step.layer_type.leak is not None:
        return step.layer_type.leak
    if rule is None and step.layer_type.rules == ():
        return "relevance created" if leak < 0 else "relevance routed to inputs it drops"
    if rule is None:
        return "zero denominators"
    if isinstance(rule, (rules_lib.ZPlus, rules_lib.ZBox, rules_lib.WSquare, rules_lib.Flat)):
        return "units whose receptive field holds no input (padding only)"
    reasons = []
    bias = getattr(step.layer, "bias", None)
    if bias is not None and np.any(keras.ops.convert_to_numpy(bias) != 0):
        reasons.append("bias")
    elif step.context.position is None:
        reasons.append("operands that (nearly) cancel")
    if isinstance(rule, rules_lib.Epsilon) and (rule.relative or rule.epsilon >= 1e-4):
        reasons.append("stabiliser ε")
    if isinstance(rule, rules_lib.AlphaBeta):
        reasons.append("α-β: b⁺ in the positive denominator, β part")
    return ", ".join(reasons) or "zero denominators"


def format_report(report):
    """The report as an aligned text table."""
    header = ("layer", "type", "rule", "relevance out", "relevance in", "leak", "relative",
              "spread flat", "reason")
    rows = [header] + [
        (r["layer"], r["type"], "" if r["rule"] is None else type(r["rule"]).__name__,
         f"{r['relevance_out']:.4g}", f"{r['relevance_in']:.4g}", f"{r['leak']:.3g}",
         f"{r['relative_leak']:.2%}", f"{r['spread_flat']:.3g}", r["reason"] or "")
        for r in report
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(8)]
    return "\n".join(
        ("  ".join(cell.ljust(w) for cell, w in zip(row[:8], widths)) + "  " + row[8]).rstrip()
        for row in rows)
