"""The plan as a table of the user's layers: what ``tf-dtd info`` prints.

Each row is one layer of the user's model: how relevance crosses it and the rule it gets, read
from the :class:`~tf_dtd.relevance.plan.Plan`, with unsupported layers listed instead of stopping
at the first one.
"""

__all__ = ["layer_rows", "format_plan"]


def layer_rows(plan):
    """One record per layer call of the user's model, in graph order.

    Returns:
        A list of dicts with ``name``, ``type``, ``output_shape``, ``relevance`` (how relevance
        crosses it, in words), ``rule`` (its rule, else ``None``), ``first`` (it reads the
        pixels) and ``error`` (why it is unsupported, else ``None``).
    """
    steps = {}
    for step in plan.steps:
        if step.origin.role == "layer" and step.user_layer is not None:
            steps.setdefault(id(step.user_layer), step)
    folded = dict(plan.canonical.folded) if plan.canonical else {}
    removed = plan.canonical.removed if plan.canonical else None
    rows = []
    for node in plan.traced.nodes:
        layer = node.layer
        record = dict(name=layer.name, type=type(layer).__name__, first=False, rule=None,
                      error=None, relevance=None,
                      output_shape=tuple(plan.traced.tensors[node.outputs[0]].shape))
        step = steps.get(id(layer))
        if step is not None:
            record.update(relevance=step.description, rule=step.rule, error=step.error,
                          first=step.context.is_first)
        elif layer.name in folded:
            what = "padding" if "Padding" in type(layer).__name__ else "scale and shift"
            record["relevance"] = f"fused into '{folded[layer.name]}' ({what})"
        elif removed == layer.name:
            record["relevance"] = "removed: relevance starts at the logits"
        rows.append(record)
    return rows


def format_plan(plan):
    """The plan as an aligned text table, with a last line counting unsupported layers."""
    records = layer_rows(plan)
    rows = [("layer", "type", "output shape", "relevance", "rule")]
    for record in records:
        rule = "" if record["rule"] is None else repr(record["rule"])
        if record["first"] and record["rule"] is not None:
            rule += "  [first]"
        rows.append((record["name"], record["type"], str(record["output_shape"]),
                     record["relevance"] or "", rule))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
             for row in rows]
    unsupported = [r for r in records if r["error"]]
    lines.append(f"{len(records)} layers, {len(unsupported)} unsupported")
    lines.extend(f"  {r['name']}: {r['error']}" for r in unsupported)
    removed = plan.canonical.removed if plan.canonical else None
    if removed and removed not in {r["name"] for r in records}:
        lines.append(f"Removed {removed}: relevance starts at the logits.")
    return "\n".join(line.rstrip() for line in lines)
