"""``tf-dtd explain --html`` and the streamed path for many images (in-process ``cli.main``)."""

import csv
import os
import re

import numpy as np
import pytest
from cli_support import leftovers, main
from PIL import Image

import tf_dtd
from tf_dtd.app import cli, digits


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Seven held-out digits as PNGs, two of them with the same stem in another folder."""
    folder = tmp_path_factory.mktemp("pngs")
    images, labels = digits.load_samples()
    (folder / "more").mkdir()
    for i in range(7):
        where = folder / "more" if i >= 5 else folder
        Image.fromarray(np.round(images[i, ..., 0] * 255).astype("uint8")).save(
            where / f"digit_{i % 5}.png")
    return folder


def _files(folder):
    return [*sorted(folder.glob("*.png")), *sorted((folder / "more").glob("*.png"))]


def test_html_report_of_the_explained_inputs(tmp_path, pngs, capsys):
    status, err = main(capsys, "explain", digits.MODEL_PATH, *_files(pngs)[:5], "--html",
                       "--rules", "lrp_epsilon", "--out", tmp_path / "out")

    assert status == 0, err
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == sorted(
        [f"digit_{i}.png" for i in range(5)] + ["relevance.npz", "summary.csv", "report.html"])
    page = (out / "report.html").read_text(encoding="utf-8")
    with np.load(out / "relevance.npz") as saved:
        names, logits, relevance = list(saved["names"]), saved["logits"], saved["relevance"]
    # Input, heatmap and overlay inlined per row, nothing fetched from elsewhere.
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3 * 5
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)
    for name, logit, heatmap in zip(names, logits, relevance):
        assert name in page
        assert f"{heatmap.sum():.3f}" in page or f"{heatmap.sum():.4g}" in page
        assert f"{logit.max():.3f}" in page or f"{logit.max():.4g}" in page
    assert "lrp_epsilon" in page


def test_many_images_are_streamed_into_shards(tmp_path, pngs, capsys, monkeypatch):
    """Above cli.STREAM_ABOVE images, explain goes through tf_dtd.scale.explain_files: shards in
    results/ instead of relevance.npz, the same heatmaps, PNGs and summary as in memory."""
    monkeypatch.setattr(cli, "STREAM_ABOVE", 4)
    monkeypatch.setattr(cli, "SHARD_SIZE", 3)
    files = _files(pngs)
    status, err = main(capsys, "explain", digits.MODEL_PATH, *files, "--batch-size", "2",
                       "--out", tmp_path / "streamed")
    assert status == 0, err
    monkeypatch.setattr(cli, "STREAM_ABOVE", 1024)
    status, err = main(capsys, "explain", digits.MODEL_PATH, *files, "--out",
                       tmp_path / "direct", "--batch-size", "2")  # in memory
    assert status == 0, err

    streamed = tmp_path / "streamed"
    expected = [f"digit_{i}.png" for i in range(5)] + ["digit_0~1.png", "digit_1~1.png"]
    assert sorted(os.listdir(streamed)) == sorted(expected + ["results", "summary.csv"])
    assert leftovers(streamed) == []
    shards = list(tf_dtd.load_results(streamed / "results"))
    assert [len(shard["id"]) for shard in shards] == [3, 3, 1]
    assert [str(i) for shard in shards for i in shard["id"]] == [str(f) for f in files]
    relevance = np.concatenate([shard["relevance"] for shard in shards])
    x = np.stack([np.asarray(Image.open(f), "float32")[..., None] / 255 for f in files])
    np.testing.assert_allclose(relevance, tf_dtd.explain(digits.load_model(), x,
                                                          input_range=(0.0, 1.0)),
                               rtol=1e-4, atol=1e-6)
    with open(streamed / "summary.csv") as a, open(tmp_path / "direct" / "summary.csv") as b:
        rows, direct = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [row["file"] for row in rows] == [row["file"] for row in direct] == [
        os.path.splitext(name)[0] for name in expected]
    for row, other in zip(rows, direct):
        assert row.keys() == other.keys()
        assert row["explained_class"] == other["explained_class"]
        assert float(row["relevance_sum"]) == pytest.approx(float(other["relevance_sum"]),
                                                            rel=1e-4)
    for name in expected:  # the same palette PNGs
        with Image.open(streamed / name) as a, Image.open(tmp_path / "direct" / name) as b:
            assert a.mode == b.mode == "P"
            assert np.abs(np.asarray(a, "int16") - np.asarray(b, "int16")).max() <= 1


def test_html_is_refused_for_streamed_runs(tmp_path, pngs, capsys, monkeypatch):
    monkeypatch.setattr(cli, "STREAM_ABOVE", 4)
    status, err = main(capsys, "explain", digits.MODEL_PATH, *_files(pngs), "--html",
                       "--out", tmp_path / "out")
    assert status == 1
    assert "--html makes one page for at most 4 inputs; received 7 images" in err
    assert not (tmp_path / "out").exists()
