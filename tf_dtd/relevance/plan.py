"""What the rewriter will do with each layer, found before any heavy work (``tf-dtd info``).

:func:`layer_plan` traces the model and asks the registry and the composite, but builds no
relevance layer and computes no modified weight, so it also lists what is unsupported instead of
stopping at the first such layer.
"""

from tf_dtd import composites
from tf_dtd.checks import check_input_range
from tf_dtd.errors import UnsupportedLayerError
from tf_dtd.model import analysis, canonize
from tf_dtd.model import graph as graph_lib
from tf_dtd.relevance import registry
from tf_dtd.relevance.rewriter import forward_facts

__all__ = ["layer_plan", "format_plan"]

# Built-in handler -> how relevance crosses the layer, in words.
_HANDLING = {
    "dense": "rule", "conv": "rule", "depthwise_conv": "rule", "conv_transpose": "rule",
    "pass_through": "passed through", "route": "routed exactly",
    "proportional": "proportional", "up_sampling": "routed / proportional",
    "layer_normalization": "proportional, σ held constant", "handler": "operation",
}


def layer_plan(model, rules="deep_taylor_bounded", *, input_range=None):
    """One record per layer call of ``model``, in graph order.

    Returns:
        A list of dicts with ``name``, ``type``, ``output_shape``, ``relevance`` (how relevance
        crosses it, in words), ``rule`` (the rule of a kernel layer, else ``None``), ``first``
        (it reads the pixels) and ``error`` (why it is unsupported, else ``None``).

    Example:
        >>> for record in tf_dtd.relevance.plan.layer_plan(model, "lrp_epsilon"):
        ...     print(record["name"], record["rule"])
    """
    input_range = check_input_range(input_range)
    composite = composites.resolve(rules, input_range)
    traced = graph_lib.trace(model)
    _, first = forward_facts(traced, input_range)
    kernel_layers = list(dict.fromkeys(
        id(n.layer) for n in traced.nodes if analysis.has_kernel(n.layer)))
    records = []
    for node in traced.nodes:
        layer, is_first = node.layer, id(node) in first
        record = dict(name=layer.name, type=type(layer).__name__, first=is_first,
                      output_shape=tuple(traced.tensors[node.outputs[0]].shape),
                      relevance=None, rule=None, error=None)
        try:
            record["relevance"] = _handling(layer, composite)
        except UnsupportedLayerError as error:
            record["relevance"], record["error"] = "unsupported", str(error)
        if analysis.has_kernel(layer) and record["error"] is None:
            position = (kernel_layers.index(id(layer)), len(kernel_layers))
            record["rule"] = composite.rule_for(layer, is_first=is_first, position=position)
        records.append(record)
    return records


def _handling(layer, composite):
    if canonize.is_split(layer):
        return "rule (split: depthwise + pointwise)"
    handler = registry.find_handler(layer)
    name = getattr(handler, "__name__", type(handler).__name__)
    if name == "max_pooling":
        return composite.max_pooling.replace("_", "-")
    if name == "multiply":
        return f"product ({composite.multiply})"
    if handler.__module__ != registry.__name__:
        return f"custom handler {name}"
    return _HANDLING.get(name, name)


def format_plan(records):
    """The plan as an aligned text table, with a last line counting unsupported layers."""
    rows = [("layer", "type", "output shape", "relevance", "rule")]
    for record in records:
        rule = "" if record["rule"] is None else repr(record["rule"])
        if record["first"] and record["rule"] is not None:
            rule += "  [first]"
        rows.append((record["name"], record["type"], str(record["output_shape"]),
                     record["relevance"], rule))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
             for row in rows]
    unsupported = [r for r in records if r["error"]]
    lines.append(f"{len(records)} layers, {len(unsupported)} unsupported")
    lines.extend(f"  {r['name']}: {r['error']}" for r in unsupported)
    return "\n".join(line.rstrip() for line in lines)
