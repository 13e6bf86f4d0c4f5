"""Heatmaps to images: colour maps, normalisation, overlays, grids and PNG files.

NumPy and Pillow only (no Keras): arrays in, uint8 arrays or PNG files out. Layouts are
channels-last: a heatmap is ``(H, W)``, ``(H, W, C)`` or a batch ``(N, H, W, C)``; images are
``(H, W)`` gray, ``(H, W, 1)`` or ``(H, W, 3)`` RGB, uint8 or float in ``[0, 1]``.

A colour map is a 256-entry table whose index 128 is the zero of a symmetric heatmap (white in
``bwr``); palette PNGs store these indices, so their colours can be swapped later.

Example:
    >>> from tf_dtd import visualize
    >>> rgb = visualize.heatmap_to_rgb(heatmaps)          # (n, 32, 32, 1) → uint8 (n, 32, 32, 3)
    >>> visualize.save_png("digit0.png", heatmaps[0])     # palette PNG, recolourable later
    >>> visualize.save_rgb_png("grid.png", visualize.grid(rgb, scale=4))
"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tf_dtd.checks import check_choice
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.files import atomic_write

__all__ = [
    "COLORMAPS", "colormap", "grid", "heatmap_to_indices", "heatmap_to_rgb", "normalize",
    "overlay", "recolor_png", "reduce_channels", "save_png", "save_rgb_png",
]

# (position in [0, 1], RGB) anchors, linearly interpolated. Position 1/2 is the zero of a
# symmetric heatmap. seismic is matplotlib's; coldnhot is Zennit's ('0ff,00f,80:000,f00,ff0,fff').
_ANCHORS = {
    "bwr": ((0.0, (0, 0, 255)), (0.5, (255, 255, 255)), (1.0, (255, 0, 0))),
    "seismic": ((0.0, (0, 0, 76.5)), (0.25, (0, 0, 255)), (0.5, (255, 255, 255)),
                (0.75, (255, 0, 0)), (1.0, (127.5, 0, 0))),
    "coldnhot": ((0.0, (0, 255, 255)), (0.25, (0, 0, 255)), (0.5, (0, 0, 0)),
                 (2 / 3, (255, 0, 0)), (5 / 6, (255, 255, 0)), (1.0, (255, 255, 255))),
    "gray": ((0.0, (0, 0, 0)), (1.0, (255, 255, 255))),
    "hot": ((0.0, (0, 0, 0)), (1 / 3, (255, 0, 0)), (2 / 3, (255, 255, 0)), (1.0, (255, 255, 255))),
}
COLORMAPS = ("bwr", "seismic", "coldnhot", "gray", "hot")
_SYMMETRIC_MAPS = ("bwr", "seismic", "coldnhot")
_MODES = ("symmetric", "minmax")
_REDUCTIONS = ("sum", "max_abs")


def _round(x):
    """Round half up (127.5 → 128), the usual convention for pixel values."""
    return np.floor(np.asarray(x, "float64") + 0.5)


def colormap(name):
    """The colour map ``name`` as a uint8 lookup table of shape ``(256, 3)`` (RGB rows).

    Entry 128 is the centre (a symmetric heatmap's 0): white in ``bwr`` and ``seismic``, black in
    ``coldnhot``, mid-gray (128) in ``gray``. A normalised value becomes a position ``p`` in
    ``[0, 1]`` (``p = (v + 1) / 2`` for symmetric ``v`` in ``[-1, 1]``, ``p = v`` for minmax),
    and ``p`` the index ``round(256 p)`` below 1/2, ``128 + round(254 (p - 1/2))`` from 1/2 on
    (half up): ``v = 0`` lands exactly on 128, ``v = ±1`` on 255 and 0. Each entry is the colour
    at its own position, so ``gray`` is the identity table.

    Example:
        >>> visualize.colormap("bwr")[[0, 128, 255]].tolist()
        [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    """
    check_choice("cmap", name, COLORMAPS)
    index = np.arange(256)
    position = np.where(index <= 128, index / 256, 0.5 + (index - 128) / 254)
    where, colours = zip(*_ANCHORS[name])
    colours = np.asarray(colours, "float64")
    table = [np.interp(position, where, colours[:, k]) for k in range(3)]
    return _round(np.stack(table, axis=-1)).astype("uint8")


def reduce_channels(heatmap, method="sum"):
    """Collapse the channel axis: ``(..., H, W, C)`` → ``(..., H, W)``; ``(H, W)`` stays as is.

    Args:
        heatmap: ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)`` array (a 3-D array is one sample).
        method: ``"sum"`` (total relevance per pixel) or ``"max_abs"`` (the signed value of
            largest magnitude per pixel; the first channel wins ties).

    Example:
        >>> visualize.reduce_channels(np.array([[[1.0, -3.0]]]), "max_abs")   # [[-3.]]
    """
    check_choice("method", method, _REDUCTIONS)
    heatmap = np.asarray(heatmap)
    if heatmap.ndim < 2:
        raise InvalidArgumentError(
            f"Expected a heatmap of shape (H, W), (H, W, C) or (N, H, W, C). "
            f"Received: shape {heatmap.shape}")
    if heatmap.ndim == 2:
        return heatmap
    if method == "sum":
        return heatmap.sum(axis=-1)
    largest = np.abs(heatmap).argmax(axis=-1)[..., None]
    return np.take_along_axis(heatmap, largest, axis=-1)[..., 0]


def normalize(heatmap, mode="symmetric", percentile=None):
    """Scale each heatmap to ``[-1, 1]`` (``"symmetric"``) or ``[0, 1]`` (``"minmax"``), in float64.

    A 2-D ``(H, W)`` input is one heatmap; a 3-D ``(N, H, W)`` input is normalised per sample.

    Args:
        heatmap: ``(H, W)`` or ``(N, H, W)`` finite array (reduce channels first).
        mode: ``"symmetric"`` divides by ``max |h|``: 0 stays 0 and signs are kept.
            ``"minmax"`` maps ``min`` to 0 and ``max`` to 1.
        percentile: clip outliers. Symmetric: divide by this percentile of ``|h|`` (in
            ``(0, 100]``, e.g. 99.5) and clip to ``[-1, 1]``; if that percentile is 0 in a
            non-zero map, every non-zero value saturates to ±1. Minmax (in ``[50, 100]``): use the
            ``100 - p`` and ``p`` percentiles of ``h`` as min and max and clip to ``[0, 1]``.

    A constant heatmap (all zeros included) gives zeros, without division warnings.

    Example:
        >>> visualize.normalize(np.array([[-2.0, 0.0, 4.0]]))          # [[-0.5, 0., 1.]]
        >>> visualize.normalize(np.array([[-2.0, 0.0, 4.0]]), "minmax")  # [[0., 0.333, 1.]]
    """
    check_choice("mode", mode, _MODES)
    if percentile is not None and not (
            (50.0 <= percentile <= 100.0) if mode == "minmax" else (0.0 < percentile <= 100.0)):
        bracket = "[50, 100]" if mode == "minmax" else "(0, 100]"
        raise InvalidArgumentError(
            f"Expected percentile in {bracket} for mode={mode!r}. "
            f"Received: percentile={percentile}")
    h = np.asarray(heatmap, "float64")
    if h.ndim not in (2, 3):
        raise InvalidArgumentError(
            "Expected a heatmap of shape (H, W) or (N, H, W); reduce the channels first with "
            f"reduce_channels. Received: shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise InvalidArgumentError(
            f"Expected a finite heatmap. Received: {np.sum(~np.isfinite(h))} NaN or inf values")
    axes = (-2, -1)
    if mode == "symmetric":
        magnitude = np.abs(h)
        if percentile is None:
            scale = magnitude.max(axis=axes, keepdims=True)
        else:
            scale = np.percentile(magnitude, percentile, axis=axes, keepdims=True)
        safe = np.where(scale > 0, scale, 1.0)
        return np.where(scale > 0, np.clip(h / safe, -1.0, 1.0), np.sign(h))
    if percentile is None:
        low, high = h.min(axis=axes, keepdims=True), h.max(axis=axes, keepdims=True)
    else:
        low = np.percentile(h, 100.0 - percentile, axis=axes, keepdims=True)
        high = np.percentile(h, percentile, axis=axes, keepdims=True)
    span = high - low
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, np.clip((h - low) / safe, 0.0, 1.0), (h > high).astype("float64"))


def heatmap_to_indices(heatmap, cmap="bwr", *, reduce="sum", mode=None, percentile=None):
    """Colour-map indices of heatmaps (see `colormap`): uint8 ``(H, W)`` or ``(N, H, W)``.

    Args:
        heatmap: ``(H, W, C)`` or ``(N, H, W, C)``; with ``reduce=None``, ``(H, W)`` or
            ``(N, H, W)`` (no channel axis). A 2-D input is always a single map.
        cmap: one of `COLORMAPS`; only decides the default ``mode``.
        reduce: `reduce_channels` method, or None.
        mode: `normalize` mode; None means ``"symmetric"`` for bwr, seismic and coldnhot and
            ``"minmax"`` for gray and hot.
        percentile: see `normalize`.

    Example:
        >>> visualize.heatmap_to_indices(np.array([[-1.0, 0.0, 1.0]]), reduce=None)
        array([[  0, 128, 255]], dtype=uint8)
    """
    check_choice("cmap", cmap, COLORMAPS)
    if mode is None:
        mode = "symmetric" if cmap in _SYMMETRIC_MAPS else "minmax"
    heatmap = np.asarray(heatmap)
    if reduce is not None:
        heatmap = reduce_channels(heatmap, reduce)
    values = normalize(heatmap, mode, percentile)
    position = (values + 1.0) / 2.0 if mode == "symmetric" else values
    index = np.where(position < 0.5, _round(256 * position), 128 + _round(254 * (position - 0.5)))
    return index.astype("uint8")


def heatmap_to_rgb(heatmap, cmap="bwr", *, reduce="sum", mode=None, percentile=None):
    """Colour heatmaps: uint8 ``(H, W, 3)`` or ``(N, H, W, 3)``; arguments as `heatmap_to_indices`.

    With the default ``bwr``: 0 is white, the largest ``|h|`` pure red (positive) or pure blue
    (negative).

    Example:
        >>> visualize.heatmap_to_rgb(heatmaps).shape   # (n, 32, 32, 1) → (n, 32, 32, 3)
    """
    indices = heatmap_to_indices(heatmap, cmap, reduce=reduce, mode=mode, percentile=percentile)
    return colormap(cmap)[indices]


def _as_rgb(image, name):
    """An image as float64 ``(H, W, 3)`` in ``[0, 255]``: uint8/int in 0..255 or float in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise InvalidArgumentError(
            f"Expected {name} of shape (H, W), (H, W, 1) or (H, W, 3). "
            f"Received: shape {image.shape}")
    if image.dtype.kind not in "uif":
        raise InvalidArgumentError(f"Expected a numeric {name}. Received: dtype {image.dtype}")
    high, factor = (255, 1.0) if image.dtype.kind in "ui" else (1.0, 255.0)
    if image.size and (image.min() < 0 or image.max() > high or not np.all(np.isfinite(image))):
        raise InvalidArgumentError(
            f"Expected {name} values in [0, {high}] for dtype {image.dtype}. "
            f"Received: range [{image.min()}, {image.max()}]")
    return np.broadcast_to(image.astype("float64") * factor, (*image.shape[:2], 3))


def overlay(image, heatmap_rgb, alpha=0.5):
    """Blend a heatmap over an image: uint8 ``(H, W, 3)`` = ``round((1 − α)·image + α·heatmap)``.

    Args:
        image: ``(H, W)``, ``(H, W, 1)`` (gray, repeated) or ``(H, W, 3)``; uint8 or float
            in [0, 1].
        heatmap_rgb: the same layouts and height/width, e.g. from `heatmap_to_rgb`.
        alpha: heatmap weight in ``[0, 1]``. Values are rounded half up.

    Example:
        >>> blended = visualize.overlay(images[0], visualize.heatmap_to_rgb(heatmaps[0]), 0.6)
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise InvalidArgumentError(f"Expected alpha in [0, 1]. Received: alpha={alpha}")
    image, heatmap_rgb = _as_rgb(image, "image"), _as_rgb(heatmap_rgb, "heatmap_rgb")
    if image.shape != heatmap_rgb.shape:
        raise InvalidArgumentError(
            f"Expected image and heatmap_rgb of the same height and width. Received: image "
            f"{image.shape[:2]}, heatmap_rgb {heatmap_rgb.shape[:2]}")
    return _round((1.0 - alpha) * image + alpha * heatmap_rgb).astype("uint8")


def _atomic_save(image, path):
    """Save a Pillow image as PNG at ``path``, atomically (:func:`tf_dtd.files.atomic_write`)."""
    return atomic_write(path, lambda stream: image.save(stream, format="PNG"))


def _palette_image(indices, cmap):
    height, width = indices.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(indices, "uint8").tobytes())
    image.putpalette(colormap(cmap).tobytes())
    return image


def save_png(path, heatmap, cmap="bwr", *, reduce="sum", mode=None, percentile=None, palette=True):
    """Write one heatmap ``(H, W)`` or ``(H, W, C)`` as a PNG (atomically) and return ``path``.

    With ``palette=True`` the PNG is a palette ("P") image: its pixels are the colour-map indices
    of `heatmap_to_indices` and its palette is `colormap` ``(cmap)``, so `recolor_png` can swap
    the colours later without the heatmap. ``palette=False`` writes the RGB of `heatmap_to_rgb`.
    Other arguments as in `heatmap_to_indices`.

    Example:
        >>> visualize.save_png("relevance.png", heatmaps[0], percentile=99.5)
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim not in (2, 3) or (reduce is None and heatmap.ndim != 2):
        raise InvalidArgumentError(
            "Expected one heatmap of shape (H, W) or (H, W, C) (only (H, W) with reduce=None); "
            f"save a batch one file per sample or as a grid. Received: shape {heatmap.shape}")
    indices = heatmap_to_indices(heatmap, cmap, reduce=reduce, mode=mode, percentile=percentile)
    if palette:
        return _atomic_save(_palette_image(indices, cmap), path)
    return _atomic_save(Image.fromarray(colormap(cmap)[indices]), path)


def recolor_png(path, cmap, out_path=None):
    """Replace the palette of a `save_png` palette PNG by `colormap` ``(cmap)``; indices are kept.

    Writes ``out_path`` (by default ``path`` itself, atomically) and returns it.

    Example:
        >>> visualize.recolor_png("relevance.png", "coldnhot", "relevance_coldnhot.png")
    """
    check_choice("cmap", cmap, COLORMAPS)
    with Image.open(path) as image:
        if image.mode != "P":
            raise InvalidArgumentError(
                "Expected a palette PNG written by save_png(..., palette=True). "
                f"Received: {os.fspath(path)} in mode {image.mode!r}")
        indices = np.asarray(image)
    return _atomic_save(_palette_image(indices, cmap), path if out_path is None else out_path)


def save_rgb_png(path, rgb):
    """Write ``rgb`` (``(H, W, 3)``, or gray ``(H, W)``, ``(H, W, 1)``; uint8 or float in [0, 1],
    e.g. an `overlay` or a `grid`) as an RGB PNG, atomically; return ``path``.

    Example:
        >>> visualize.save_rgb_png("overlay.png", visualize.overlay(image, rgb))
    """
    return _atomic_save(Image.fromarray(_round(_as_rgb(rgb, "rgb")).astype("uint8")), path)


def grid(images, captions=None, columns=None, padding=2, scale=1, background=255):
    """Tile equally sized images row-major into one uint8 RGB image, with optional captions.

    Size: ``columns·w + (columns + 1)·padding`` wide and ``rows·(h + caption) + (rows + 1)·padding``
    high, with ``w, h`` the tile size times ``scale``, ``rows = ceil(n / columns)`` and
    ``caption`` the caption line height (0 without captions). Tile ``(r, c)`` starts at
    ``x = padding + c·(w + padding)``, ``y = padding + r·(h + caption + padding)``.

    Args:
        images: sequence or array of ``n`` images, each ``(h, w)``, ``(h, w, 1)`` or ``(h, w, 3)``,
            uint8 or float in [0, 1] (an ``(n, h, w)`` array is ``n`` gray images).
        captions: ``n`` strings drawn under the tiles with Pillow's default font, in black (white
            on a dark background); text wider than a tile is cut to fit.
        columns: tiles per row; default ``ceil(sqrt(n))``.
        padding: pixels between tiles and around the border.
        scale: integer nearest-neighbour upscaling of each tile (e.g. 4 for 32×32 digits).
        background: gray level or RGB triple of the padding, 0..255.

    Example:
        >>> sheet = visualize.grid(visualize.heatmap_to_rgb(heatmaps), [str(y) for y in labels],
        ...                        columns=5, scale=4)
    """
    tiles = [_as_rgb(image, f"images[{i}]") for i, image in enumerate(images)]
    if not tiles or any(tile.shape != tiles[0].shape for tile in tiles):
        raise InvalidArgumentError(
            "Expected a non-empty sequence of images of one shape. Received: shapes "
            f"{sorted({tile.shape[:2] for tile in tiles})}")
    if captions is not None and len(captions) != len(tiles):
        raise InvalidArgumentError(
            f"Expected one caption per image. Received: {len(captions)} captions for "
            f"{len(tiles)} images")
    count = len(tiles)
    columns = int(np.ceil(np.sqrt(count))) if columns is None else columns
    limits = ("columns", columns, 1), ("padding", padding, 0), ("scale", scale, 1)
    for name, value, minimum in limits:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise InvalidArgumentError(
                f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}")
    fill = np.broadcast_to(np.asarray(background), (3,))
    if not np.all((fill >= 0) & (fill <= 255)):
        raise InvalidArgumentError(
            f"Expected background in 0..255 (gray or RGB). Received: background={background!r}")
    fill = tuple(int(v) for v in fill)
    rows = -(-count // columns)
    height, width = tiles[0].shape[0] * scale, tiles[0].shape[1] * scale
    font = ImageFont.load_default()
    captions = None if captions is None else [str(text) for text in captions]
    caption_height = 0
    if captions is not None:
        caption_height = 2 + max(font.getbbox(text or " ")[3] for text in captions + ["Ag"])
    step_x, step_y = width + padding, height + caption_height + padding
    sheet = np.empty((padding + rows * step_y, padding + columns * step_x, 3), "uint8")
    sheet[...] = fill
    for i, tile in enumerate(tiles):
        top, left = padding + (i // columns) * step_y, padding + (i % columns) * step_x
        big = np.repeat(np.repeat(_round(tile).astype("uint8"), scale, axis=0), scale, axis=1)
        sheet[top:top + height, left:left + width] = big
    if captions is None:
        return sheet
    picture = Image.fromarray(sheet)
    draw = ImageDraw.Draw(picture)
    ink = (0, 0, 0) if sum(fill) / 3 > 127 else (255, 255, 255)
    for i, text in enumerate(captions):
        while text and draw.textlength(text, font=font) > width:
            text = text[:-1]
        top, left = padding + (i // columns) * step_y, padding + (i % columns) * step_x
        x = left + (width - draw.textlength(text, font=font)) / 2
        draw.text((x, top + height + 1), text, fill=ink, font=font)
    return np.array(picture)
