"""One self-contained HTML page of heatmaps: inputs, heatmaps, overlays, classes, relevance sums.

Everything is inside the file: images as ``data:`` PNG URIs, the style and a small script that
sorts the rows. A Content-Security-Policy forbids every other source, so the page works offline
and never fetches anything. Sorting is driven by the URL fragment (``#sort=score``): the sort
links set it, so a sorted view can be bookmarked or opened directly.

Example:
    >>> relevance, logits = tf_dtd.relevance_model(
    ...     model, input_range=(0.0, 1.0), return_prediction=True).predict(images)
    >>> tf_dtd.report.html("report.html", images, relevance, logits)
"""

import base64
import io
import json
import os
from html import escape

import numpy as np
from PIL import Image

from tf_dtd import visualize
from tf_dtd.errors import InvalidArgumentError

__all__ = ["html", "SORT_KEYS"]

# Fragment key -> what the rows are ordered by (ties keep the input order).
SORT_KEYS = {
    "index": "input order",
    "class": "explained class, ascending",
    "score": "explained logit, descending",
    "sum": "relevance sum, descending",
    "name": "name, ascending",
}

_STYLE = """
body { font: 14px/1.4 sans-serif; margin: 16px; color: #222; }
nav a { margin-right: 12px; }
nav a.active { font-weight: bold; text-decoration: none; color: #222; }
table { border-collapse: collapse; margin-top: 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left;
         vertical-align: middle; }
img { image-rendering: pixelated; display: block; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
ol { margin: 0; padding-left: 20px; }
"""

_SCRIPT = """
(function () {
  var keys = %(keys)s;
  function compare(key) {
    return function (a, b) {
      var x = a.dataset, y = b.dataset, order = 0;
      if (key === "class") { order = Number(x.cls) - Number(y.cls); }
      else if (key === "score") { order = Number(y.score) - Number(x.score); }
      else if (key === "sum") { order = Number(y.sum) - Number(x.sum); }
      else if (key === "name") { order = x.name < y.name ? -1 : (x.name > y.name ? 1 : 0); }
      return order || Number(x.index) - Number(y.index);
    };
  }
  function sortRows() {
    var match = /^#sort=([a-z]+)$/.exec(window.location.hash);
    var key = match && keys.indexOf(match[1]) >= 0 ? match[1] : "index";
    var body = document.getElementById("rows");
    var rows = Array.prototype.slice.call(body.rows).sort(compare(key));
    rows.forEach(function (row) { body.appendChild(row); });
    document.querySelectorAll("nav a").forEach(function (link) {
      link.classList.toggle("active", link.getAttribute("href") === "#sort=" + key);
    });
    document.body.setAttribute("data-sorted-by", key);
  }
  window.addEventListener("hashchange", sortRows);
  sortRows();
})();
"""


def html(path, images, heatmaps, logits, *, targets=None, names=None, class_names=None,
         top_k=3, cmap="bwr", alpha=0.5, scale=None, title="tf_dtd heatmaps"):
    """Write one self-contained HTML report of ``n`` explained samples; return ``path``.

    Each row shows the input, its heatmap (:func:`tf_dtd.visualize.heatmap_to_rgb`, each
    normalised to its own largest ``|R|``), the heatmap over the input
    (:func:`tf_dtd.visualize.overlay`), the top classes with their logits and softmax
    probabilities, the explained class and logit, and the relevance sum (equal to the explained
    logit for a conservative rule set). Links sort the rows by class, score (explained logit),
    relevance sum, name or input order.

    Args:
        path: the ``.html`` file to write.
        images: the inputs as pictures: an array ``(n, H, W)``, ``(n, H, W, 1)`` or
            ``(n, H, W, 3)``, or a sequence of ``n`` images (gray and RGB may mix); uint8 or
            float in ``[0, 1]`` (scale other model inputs to that for display).
        heatmaps: relevance ``(n, H, W)`` or ``(n, H, W, C)``, e.g. a relevance model's output.
        logits: ``(n, classes)``, the model's pre-activation outputs (``return_prediction=True``).
        targets: the explained class of each sample, ``(n,)`` ints; default: the top logit.
        names: ``n`` sample names (e.g. file names); default ``sample 0``, ``sample 1``, ...
        class_names: a name per class; default the class index.
        top_k: how many top classes to list.
        cmap: colour map of the heatmaps (:data:`tf_dtd.visualize.COLORMAPS`).
        alpha: heatmap weight in the overlay.
        scale: on-screen pixels per image pixel (nearest neighbour); default about 128 px wide.
        title: the page title.

    Returns:
        ``path``.

    Raises:
        InvalidArgumentError: arrays of mismatched sizes or layouts, bad targets or names.

    Example:
        >>> tf_dtd.report.html("report.html", images, relevance, logits,
        ...                    names=[f"digit {y}" for y in labels])
    """
    heatmaps, logits = np.asarray(heatmaps), np.asarray(logits, "float64")
    count = len(heatmaps)
    if heatmaps.ndim not in (3, 4) or logits.shape[:1] != (count,) or logits.ndim != 2:
        raise InvalidArgumentError(
            "Expected heatmaps (n, H, W) or (n, H, W, C) and logits (n, classes) for the same n. "
            f"Received: heatmaps of shape {heatmaps.shape}, logits of shape {logits.shape}")
    if count == 0:
        raise InvalidArgumentError("Expected at least one sample. Received: n=0")
    pictures = _pictures(images, count, heatmaps.shape[1:3])
    targets = _targets(targets, logits)
    names = [f"sample {i}" for i in range(count)] if names is None else [str(n) for n in names]
    if len(names) != count:
        raise InvalidArgumentError(
            f"Expected one name per sample. Received: {len(names)} names for {count} samples")
    class_names = ([str(c) for c in range(logits.shape[1])] if class_names is None
                   else [str(c) for c in class_names])
    if len(class_names) != logits.shape[1]:
        raise InvalidArgumentError(
            f"Expected one class name per class. Received: {len(class_names)} class names for "
            f"{logits.shape[1]} classes")
    scale = max(1, 128 // pictures.shape[2]) if scale is None else int(scale)

    colours = visualize.heatmap_to_rgb(heatmaps if heatmaps.ndim == 4 else heatmaps[..., None],
                                       cmap)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    sums = heatmaps.reshape(count, -1).astype("float64").sum(axis=1)
    size = f'width="{pictures.shape[2] * scale}" height="{pictures.shape[1] * scale}"'
    rows = []
    for i in range(count):
        explained = logits[i, targets[i]]
        top = np.argsort(-logits[i], kind="stable")[:top_k]
        classes = "".join(
            f"<li>{escape(class_names[c])}: {logits[i, c]:.4g} ({probabilities[i, c]:.1%})</li>"
            for c in top)
        cells = [
            f'<td class="number">{i}</td>', f"<td>{escape(names[i])}</td>",
            *(f'<td><img alt="{kind} {i}" class="{kind}" {size} src="{_data_uri(rgb)}"></td>'
              for kind, rgb in (("input", pictures[i]), ("heatmap", colours[i]),
                                ("overlay", visualize.overlay(pictures[i], colours[i], alpha)))),
            f"<td><ol>{classes}</ol></td>",
            f"<td>{escape(class_names[targets[i]])}</td>",
            f'<td class="number">{explained:.6g}</td>', f'<td class="number">{sums[i]:.6g}</td>',
        ]
        data = (f'data-index="{i}" data-name="{escape(names[i])}" data-cls="{targets[i]}" '
                f'data-score="{float(explained)!r}" data-sum="{float(sums[i])!r}"')
        rows.append(f"<tr {data}>{''.join(cells)}</tr>")
    links = " ".join(f'<a href="#sort={key}" title="{escape(text)}">{key}</a>'
                     for key, text in SORT_KEYS.items())
    headers = "".join(f"<th>{h}</th>" for h in (
        "#", "name", "input", "heatmap", "overlay", f"top {top_k} classes (logit, softmax)",
        "explained class", "explained logit", "relevance sum"))
    policy = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              "script-src 'unsafe-inline'")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>{count} samples. Red is relevance for the explained class, blue against it; each heatmap is
scaled to its own largest |R|.</p>
<nav>Sort by: {links}</nav>
<table>
<thead><tr>{headers}</tr></thead>
<tbody id="rows">
{chr(10).join(rows)}
</tbody>
</table>
<script>{_SCRIPT % {"keys": json.dumps(list(SORT_KEYS))}}</script>
</body>
</html>
"""
    with open(os.fspath(path), "w", encoding="utf-8") as stream:
        stream.write(page)
    return path


def _pictures(images, count, size):
    """The images as uint8 RGB ``(n, H, W, 3)``, checked against the heatmaps' size."""
    images = list(images) if not isinstance(images, np.ndarray) else images
    shapes = sorted({np.shape(image) for image in images})
    if len(images) != count or any(len(s) not in (2, 3) or s[:2] != tuple(size) for s in shapes):
        raise InvalidArgumentError(
            f"Expected {count} images (H, W), (H, W, 1) or (H, W, 3) with the heatmaps' H, W="
            f"{tuple(size)}. Received: {len(images)} images of shapes {shapes}")
    # A one-column grid without padding stacks the tiles: it converts and checks every image.
    stacked = visualize.grid(list(images), columns=1, padding=0)
    return stacked.reshape(count, *size, 3)


def _targets(targets, logits):
    if targets is None:
        return logits.argmax(axis=1)
    targets = np.asarray(targets)
    if (targets.shape != logits.shape[:1] or targets.dtype.kind not in "iu"
            or np.any(targets < 0) or np.any(targets >= logits.shape[1])):
        raise InvalidArgumentError(
            f"Expected targets as {len(logits)} class ids in [0, {logits.shape[1]}). Received: "
            f"targets={targets!r}")
    return targets


def _data_uri(rgb):
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, "uint8")).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
