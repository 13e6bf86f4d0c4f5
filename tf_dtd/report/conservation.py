"""Where relevance is created or lost: a per-layer conservation report.

Every layer of the relevance model receives relevance at its output and sends relevance to its
inputs; a conservative layer sends what it receives. :func:`conservation_report` measures both
sums per layer on real inputs and says, where it can be told, why they differ.
"""

import keras
import numpy as np

from tf_dtd import rules as rules_lib
from tf_dtd.model import analysis
from tf_dtd.relevance.rewriter import build_walk

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
        A list of dicts in graph order (input side first), one per layer call: ``layer`` (the
        name in the canonical copy), ``type``, ``rule`` (kernel layers), ``relevance_out`` (Σ R
        arriving at its output) and ``relevance_in`` (Σ R it sends to its inputs), ``leak``
        (``out − in``), all means over the samples, ``relative_leak`` (mean leak / mean |out|),
        and
        ``reason``: why relevance leaks there, or ``None`` when it is conserved.

    Example:
        >>> report = tf_dtd.report.conservation_report(model, images, "lrp_epsilon")
        >>> print(tf_dtd.evaluate.format_report(report))
    """
    walk, inputs, _, _ = build_walk(model, rules, input_range, target)
    nodes = [node for node in walk.graph.nodes if id(node) in walk.at_output]
    sums = []
    for node in nodes:
        sums.append(_sample_sums([walk.at_output[id(node)]]))
        sums.append(_sample_sums(walk.sent[id(node)]))
    probe = keras.Model(inputs[0], sums)
    values = probe.predict(np.asarray(x), batch_size=batch_size, verbose=0)
    report = []
    for index, node in enumerate(nodes):
        out, sent = values[2 * index], values[2 * index + 1]
        scale = float(np.mean(np.abs(out)))
        relative = float(np.mean(out - sent)) / scale if scale > 0 else 0.0
        record = dict(
            layer=node.layer.name, type=type(node.layer).__name__,
            rule=walk.rules.get(id(node)) if analysis.has_kernel(node.layer) else None,
            relevance_out=float(np.mean(out)), relevance_in=float(np.mean(sent)),
            leak=float(np.mean(out - sent)), relative_leak=relative,
        )
        record["reason"] = (_reason(node.layer, record["rule"], record["leak"])
                            if abs(record["relative_leak"]) > _TOLERANCE else None)
        report.append(record)
    return report


def _sample_sums(tensors):
    """Σ over every non-batch axis of each tensor, added up: one number per sample."""
    total = None
    for tensor in tensors:
        axes = tuple(range(1, len(tensor.shape)))
        value = keras.ops.sum(tensor, axis=axes) if axes else tensor
        total = value if total is None else total + value
    return total


def _reason(layer, rule, leak):
    """Why relevance leaks at ``layer``, told from the layer and its rule."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return "shift of an unfolded BatchNorm (affine ε-rule)"
    if rule is None:
        if isinstance(layer, (keras.layers.Add, keras.layers.Subtract)):
            return "stabiliser: operands that (nearly) cancel"
        return "stabiliser or zero denominators" if leak > 0 else "relevance created"
    has_bias = getattr(layer, "bias", None) is not None and np.any(
        keras.ops.convert_to_numpy(layer.bias) != 0)
    if isinstance(rule, (rules_lib.ZPlus, rules_lib.ZBox, rules_lib.WSquare, rules_lib.Flat)):
        return ("dead units: no positive contribution (z⁺ denominator 0); the bias is ignored"
                if isinstance(rule, rules_lib.ZPlus) else "units with a zero denominator")
    reasons = []
    if has_bias:
        reasons.append("bias")
    if isinstance(rule, rules_lib.Epsilon) and (rule.relative or rule.epsilon >= 1e-4):
        reasons.append("stabiliser ε")
    if isinstance(rule, rules_lib.AlphaBeta):
        reasons.append("α-β on units with an empty positive or negative part")
    return ", ".join(reasons) or "dead units (zero denominators)"


def format_report(report):
    """The report as an aligned text table."""
    header = ("layer", "type", "rule", "relevance out", "relevance in", "leak", "relative",
              "reason")
    rows = [header] + [
        (r["layer"], r["type"], "" if r["rule"] is None else type(r["rule"]).__name__,
         f"{r['relevance_out']:.4g}", f"{r['relevance_in']:.4g}", f"{r['leak']:.3g}",
         f"{r['relative_leak']:.2%}", r["reason"] or "")
        for r in report
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(7)]
    return "\n".join(
        ("  ".join(cell.ljust(w) for cell, w in zip(row[:7], widths)) + "  " + row[7]).rstrip()
        for row in rows)
