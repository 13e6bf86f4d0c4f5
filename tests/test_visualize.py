"""tf_dtd.visualize, checked pixel by pixel: colour maps, normalisation, PNGs, overlays, grids."""

import ast
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tf_dtd import visualize
from tf_dtd.errors import InvalidArgumentError

WHITE, BLACK, RED, BLUE = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)


def signed_map():
    """A symmetric 2×3 heatmap: min −2, max 2, one exact zero."""
    return np.array([[-2.0, -1.0, 0.0], [0.5, 1.0, 2.0]])


def test_module_imports_only_numpy_and_pillow():
    tree = ast.parse(open(visualize.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"os", "secrets", "numpy", "PIL", "tf_dtd.errors", "tf_dtd.checks",
                        "tf_dtd.files"}, (
        imported)
    # ... and nothing it imports starts TensorFlow or Keras
    script = ("import sys, tf_dtd.visualize; "
              "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_colormap_tables():
    for name in visualize.COLORMAPS:
        table = visualize.colormap(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
    bwr = visualize.colormap("bwr")
    assert bwr[[0, 128, 255]].tolist() == [list(BLUE), list(WHITE), list(RED)]
    assert visualize.colormap("seismic")[[0, 128, 255]].tolist() == [[0, 0, 77], list(WHITE),
                                                                     [128, 0, 0]]
    coldnhot = visualize.colormap("coldnhot")
    assert coldnhot[[0, 128, 255]].tolist() == [[0, 255, 255], list(BLACK), list(WHITE)]
    np.testing.assert_array_equal(visualize.colormap("gray"), np.repeat(np.arange(256), 3)
                                  .reshape(256, 3))
    hot = visualize.colormap("hot")
    assert hot[0].tolist() == list(BLACK) and hot[255].tolist() == list(WHITE)
    assert np.all(np.diff(hot.astype(int).sum(-1)) >= 0)  # brighter all the way
    with pytest.raises(InvalidArgumentError, match=r"Expected cmap to be one of \('bwr'.*'hot'\)"
                                                   r"\. Received: cmap='jet'"):
        visualize.colormap("jet")


def test_bwr_zero_is_white_and_signs_are_red_and_blue():
    rgb = visualize.heatmap_to_rgb(signed_map(), reduce=None).astype(int)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.int64
    assert tuple(rgb[0, 2]) == WHITE
    assert tuple(rgb[1, 2]) == RED and tuple(rgb[0, 0]) == BLUE
    for pixel in rgb[1, :2]:  # positive: red-dominant, G = B < 255
        assert pixel[0] == 255 and pixel[1] == pixel[2] < 255
    for pixel in rgb[0, :2]:  # negative: blue-dominant, R = G < 255
        assert pixel[2] == 255 and pixel[0] == pixel[1] < 255
    assert tuple(rgb[0, 1]) == (128, 128, 255) and tuple(rgb[1, 1]) == (255, 126, 126)
    # Exact zero stays white whatever the scale, also in a channels-last batch.
    batch = np.stack([signed_map(), 100 * signed_map()])[..., None]
    rgb = visualize.heatmap_to_rgb(batch)
    assert rgb.shape == (2, 2, 3, 3) and np.all(rgb[:, 0, 2] == 255)
    np.testing.assert_array_equal(rgb[0], rgb[1])  # normalised per sample


def test_seismic_keeps_signs():
    rgb = visualize.heatmap_to_rgb(signed_map(), "seismic", reduce=None).astype(int)
    assert tuple(rgb[0, 2]) == WHITE
    assert tuple(rgb[1, 2]) == (128, 0, 0) and tuple(rgb[0, 0]) == (0, 0, 77)
    assert np.all(rgb[1, :, 0] > rgb[1, :, 2]) and np.all(rgb[0, :2, 2] > rgb[0, :2, 0])


def test_gray_and_hot_use_minmax():
    heatmap = np.array([[3.0, 5.0], [7.0, 11.0]])
    gray = visualize.heatmap_to_rgb(heatmap, "gray", reduce=None)
    assert tuple(gray[0, 0]) == BLACK and tuple(gray[1, 1]) == WHITE
    assert gray[0, 1].tolist() == [64] * 3  # (5 - 3) / 8 · 255 = 63.75
    hot = visualize.heatmap_to_rgb(heatmap, "hot", reduce=None)
    assert tuple(hot[0, 0]) == BLACK and tuple(hot[1, 1]) == WHITE
    # symmetric mode on gray: 0 is mid-gray.
    centre = visualize.heatmap_to_rgb(signed_map(), "gray", reduce=None, mode="symmetric")
    assert tuple(centre[0, 2]) == (128,) * 3 and tuple(centre[0, 0]) == BLACK


def test_indices():
    indices = visualize.heatmap_to_indices(np.array([[-1.0, -0.5, 0.0, 0.5, 1.0]]), reduce=None)
    assert indices.dtype == np.uint8 and indices.tolist() == [[0, 64, 128, 192, 255]]
    minmax = visualize.heatmap_to_indices(np.array([[0.0, 0.5, 1.0]]), "gray", reduce=None)
    assert minmax.tolist() == [[0, 128, 255]]


def test_reduce_channels():
    heatmap = np.array([[[1.0, -3.0, 2.0], [0.5, 0.25, -0.25]],
                        [[-1.0, 1.0, 0.0], [4.0, -4.0, 1.0]]])  # (H=2, W=2, C=3)
    np.testing.assert_array_equal(visualize.reduce_channels(heatmap, "sum"),
                                  [[0.0, 0.5], [0.0, 1.0]])
    np.testing.assert_array_equal(visualize.reduce_channels(heatmap, "max_abs"),
                                  [[-3.0, 0.5], [-1.0, 4.0]])  # signed, first channel wins ties
    batch = np.stack([heatmap, -heatmap])
    np.testing.assert_array_equal(visualize.reduce_channels(batch, "max_abs")[1],
                                  [[3.0, -0.5], [1.0, -4.0]])
    flat = np.ones((4, 5))
    assert visualize.reduce_channels(flat) is flat
    with pytest.raises(InvalidArgumentError, match="Received: method='mean'"):
        visualize.reduce_channels(heatmap, "mean")


def test_normalize_symmetric_and_percentile():
    np.testing.assert_allclose(visualize.normalize(signed_map()),
                               [[-1.0, -0.5, 0.0], [0.25, 0.5, 1.0]])
    h = np.arange(1.0, 101.0).reshape(10, 10)
    h[0, 0] = -1000.0  # an outlier
    out = visualize.normalize(h, percentile=50)
    scale = np.percentile(np.abs(h), 50)
    assert out[0, 0] == -1.0 and np.all(out[h >= scale] == 1.0)
    inside = np.abs(h) < scale
    np.testing.assert_allclose(out[inside], h[inside] / scale)
    # A sparse map whose percentile of |h| is 0 saturates to the signs.
    sparse = np.zeros((10, 10))
    sparse[0, 0], sparse[1, 1] = 3.0, -0.1
    np.testing.assert_array_equal(visualize.normalize(sparse, percentile=90), np.sign(sparse))


def test_normalize_minmax_per_sample():
    batch = np.stack([np.arange(4.0).reshape(2, 2), 10 + 2 * np.arange(4.0).reshape(2, 2)])
    out = visualize.normalize(batch, "minmax")
    np.testing.assert_allclose(out[0], [[0, 1 / 3], [2 / 3, 1]])
    np.testing.assert_allclose(out[1], out[0])
    h = np.arange(101.0).reshape(1, 101)
    out = visualize.normalize(h, "minmax", percentile=90)
    assert out[0, 5] == 0.0 and out[0, 95] == 1.0
    np.testing.assert_allclose(out[0, 50], 0.5)


def test_constant_heatmaps_give_zeros_without_warnings():
    with np.errstate(all="raise"):
        for mode in ("symmetric", "minmax"):
            for percentile in (None, 99.5):
                out = visualize.normalize(np.zeros((2, 4, 4)), mode, percentile)
                assert out.shape == (2, 4, 4) and not np.any(out)
        assert not np.any(visualize.normalize(np.full((3, 3), 7.0), "minmax"))
        rgb = visualize.heatmap_to_rgb(np.zeros((4, 4, 1)))
        assert np.all(rgb == 255)


def test_normalize_errors():
    with pytest.raises(InvalidArgumentError, match="Received: mode='abs'"):
        visualize.normalize(signed_map(), "abs")
    for mode, percentile in (("symmetric", 0), ("symmetric", 101), ("minmax", 40)):
        with pytest.raises(InvalidArgumentError, match=f"Received: percentile={percentile}"):
            visualize.normalize(signed_map(), mode, percentile)
    with pytest.raises(InvalidArgumentError, match=r"channels.*Received: shape \(1, 2, 3, 4\)"):
        visualize.normalize(np.zeros((1, 2, 3, 4)))
    with pytest.raises(InvalidArgumentError, match="finite"):
        visualize.normalize(np.array([[0.0, np.nan]]))
    with pytest.raises(InvalidArgumentError, match="Received: cmap='viridis'"):
        visualize.heatmap_to_rgb(signed_map(), "viridis")


def test_palette_png_round_trip_and_recolor(tmp_path):
    heatmap = np.random.default_rng(0).normal(size=(6, 7, 3))
    path = tmp_path / "heatmap.png"
    assert visualize.save_png(path, heatmap, percentile=95) == os.fspath(path)
    indices = visualize.heatmap_to_indices(heatmap, percentile=95)
    rgb = visualize.heatmap_to_rgb(heatmap, percentile=95)
    with Image.open(path) as image:
        assert image.mode == "P" and image.size == (7, 6)
        np.testing.assert_array_equal(np.asarray(image), indices)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), rgb)

    gray_path = visualize.recolor_png(path, "gray", tmp_path / "gray.png")
    with Image.open(gray_path) as image:
        np.testing.assert_array_equal(np.asarray(image), indices)
        recoloured = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(recoloured, np.repeat(indices[..., None], 3, axis=-1))
    assert not np.array_equal(recoloured, rgb)

    visualize.recolor_png(path, "hot")  # in place
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), indices)
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")),
                                      visualize.colormap("hot")[indices])


def test_rgb_pngs(tmp_path):
    heatmap = signed_map()
    path = visualize.save_png(tmp_path / "rgb.png", heatmap, "seismic", reduce=None,
                              palette=False)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        np.testing.assert_array_equal(
            np.asarray(image), visualize.heatmap_to_rgb(heatmap, "seismic", reduce=None))
    with pytest.raises(InvalidArgumentError, match="Expected a palette PNG.*mode 'RGB'"):
        visualize.recolor_png(path, "gray")
    gray = np.array([[0.0, 0.5], [1.0, 0.2]])
    visualize.save_rgb_png(tmp_path / "gray.png", gray)
    with Image.open(tmp_path / "gray.png") as image:
        assert image.mode == "RGB"
        assert np.asarray(image)[:, :, 1].tolist() == [[0, 128], [255, 51]]
    with pytest.raises(InvalidArgumentError, match=r"Received: shape \(2, 2, 3, 4\)"):
        visualize.save_png(tmp_path / "batch.png", np.zeros((2, 2, 3, 4)))


def test_writes_are_atomic(tmp_path, monkeypatch):
    heatmap = signed_map()
    for i in range(3):
        visualize.save_png(tmp_path / f"h{i}.png", heatmap, reduce=None)
    visualize.recolor_png(tmp_path / "h0.png", "gray")
    visualize.save_rgb_png(tmp_path / "rgb.png", np.zeros((2, 2, 3), "uint8"))
    assert sorted(os.listdir(tmp_path)) == ["h0.png", "h1.png", "h2.png", "rgb.png"]
    before = (tmp_path / "h1.png").read_bytes()

    def broken_save(self, stream, format=None):  # dies half-way through writing
        stream.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        visualize.save_png(tmp_path / "h1.png", 2 * heatmap, reduce=None)
    assert sorted(os.listdir(tmp_path)) == ["h0.png", "h1.png", "h2.png", "rgb.png"]
    assert (tmp_path / "h1.png").read_bytes() == before


def test_overlay():
    image = np.array([[[10, 20, 30], [200, 100, 0]]], "uint8")
    heat = np.array([[[255, 0, 0], [0, 0, 255]]], "uint8")
    np.testing.assert_array_equal(visualize.overlay(image, heat, 0.0), image)
    np.testing.assert_array_equal(visualize.overlay(image, heat, 1.0), heat)
    half = visualize.overlay(image, heat, 0.5)
    assert half.dtype == np.uint8
    assert half.tolist() == [[[133, 10, 15], [100, 50, 128]]]  # (10+255)/2 = 132.5 → 133
    np.testing.assert_array_equal(visualize.overlay(image / 255.0, heat, 0.5), half)
    gray = np.array([[0.0, 1.0]])  # (H, W) float: repeated over R, G, B
    np.testing.assert_array_equal(visualize.overlay(gray, heat, 0.25),
                                  [[[64, 0, 0], [191, 191, 255]]])
    np.testing.assert_array_equal(visualize.overlay(gray[..., None], heat, 0.25),
                                  visualize.overlay(gray, heat, 0.25))


def test_overlay_errors():
    heat = np.zeros((2, 2, 3), "uint8")
    for alpha in (-0.1, 1.5):
        with pytest.raises(InvalidArgumentError, match=f"Received: alpha={alpha}"):
            visualize.overlay(heat, heat, alpha)
    with pytest.raises(InvalidArgumentError, match=r"image \(3, 2\), heatmap_rgb \(2, 2\)"):
        visualize.overlay(np.zeros((3, 2), "uint8"), heat)
    with pytest.raises(InvalidArgumentError, match=r"values in \[0, 1.0\]"):
        visualize.overlay(np.full((2, 2), 2.0), heat)
    with pytest.raises(InvalidArgumentError, match=r"Received: shape \(2, 2, 2\)"):
        visualize.overlay(np.zeros((2, 2, 2)), heat)


def tiles(count, size=(3, 4)):
    """``count`` uint8 RGB tiles, tile ``i`` filled with colour ``(i, 10 + i, 20 + i)``."""
    return [np.broadcast_to(np.array([i, 10 + i, 20 + i], "uint8"), (*size, 3)) for i in
            range(count)]


def test_grid_layout():
    sheet = visualize.grid(tiles(5), columns=3, padding=2, scale=2, background=255)
    tile_h, tile_w = 3 * 2, 4 * 2
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * tile_h + 3 * 2, 3 * tile_w + 4 * 2, 3)
    for i in range(5):
        row, column = divmod(i, 3)
        top, left = 2 + row * (tile_h + 2), 2 + column * (tile_w + 2)
        block = sheet[top:top + tile_h, left:left + tile_w]
        assert np.all(block == [i, 10 + i, 20 + i]), i
        assert np.all(sheet[top - 1, left:left + tile_w] == 255)  # padding above each tile
    assert np.all(sheet[-2 - tile_h:-2, -2 - tile_w:-2] == 255)  # the empty sixth cell
    default = visualize.grid(tiles(5), padding=0)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert default.shape == (6, 12, 3)
    gray = visualize.grid(np.zeros((2, 3, 4)), columns=2, padding=1, background=(0, 128, 0))
    assert gray.shape == (5, 11, 3) and tuple(gray[0, 0]) == (0, 128, 0)


def test_grid_captions():
    plain = visualize.grid(tiles(4), columns=2, scale=8)
    captioned = visualize.grid(tiles(4), captions=["0", "1", "two", "a very long caption"],
                               columns=2, scale=8)
    assert captioned.shape[1] == plain.shape[1] and captioned.shape[0] > plain.shape[0]
    caption_h = (captioned.shape[0] - plain.shape[0]) // 2
    strip = captioned[2 + 24:2 + 24 + caption_h, 2:2 + 32]  # under the first tile
    assert np.any(strip < 128)  # some dark text on the white background
    top_second_row = 2 + 24 + caption_h + 2
    assert np.all(captioned[top_second_row:top_second_row + 24, 2:2 + 32] == [2, 12, 22])
    with pytest.raises(InvalidArgumentError, match="Received: 3 captions for 4 images"):
        visualize.grid(tiles(4), captions=["a", "b", "c"])


def test_grid_errors():
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        visualize.grid([])
    with pytest.raises(InvalidArgumentError, match="one shape"):
        visualize.grid([np.zeros((2, 2)), np.zeros((3, 2))])
    with pytest.raises(InvalidArgumentError, match="Received: scale=0"):
        visualize.grid(tiles(2), scale=0)
    with pytest.raises(InvalidArgumentError, match="Received: columns=1.5"):
        visualize.grid(tiles(2), columns=1.5)
    with pytest.raises(InvalidArgumentError, match="Received: background=300"):
        visualize.grid(tiles(2), background=300)
