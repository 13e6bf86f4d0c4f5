"""tf_dtd.scale.explain_files: tf-dtd explain's outputs for many images, streamed."""

import csv

import numpy as np
import pytest
from PIL import Image

import tf_dtd
from tf_dtd import visualize
from tf_dtd.app import digits, inputs
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.scale import explain_files


def test_heatmaps_and_summary_of_many_files(relevance_model, tmp_path):
    images, _ = digits.load_samples()
    files = []
    for folder in ("a", "b"):  # the same stems in two folders: a, a~1
        (tmp_path / folder).mkdir()
        for i in range(3):
            path = tmp_path / folder / f"digit{i}.png"
            index = i if folder == "a" else i + 3
            Image.fromarray(np.round(images[index, ..., 0] * 255).astype("uint8")).save(path)
            files.append(str(path))
    x = inputs.load_inputs(files, (28, 28, 1))[0]
    expected, logits = tf_dtd.relevance_model(
        digits.load_model(), input_range=(0.0, 1.0), return_prediction=True).predict(x, verbose=0)

    count = explain_files(relevance_model, files, tmp_path / "out", shard_size=4, verbose=0)

    assert count == 6
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "predicted_class", "explained_class", "logit", "relevance_sum"]
    names = ["digit0", "digit1", "digit2", "digit0~1", "digit1~1", "digit2~1"]
    assert [row[0] for row in rows[1:]] == names
    predicted = logits.argmax(axis=1)
    assert [int(row[1]) for row in rows[1:]] == list(predicted)
    np.testing.assert_allclose([float(row[3]) for row in rows[1:]],
                               logits[np.arange(6), predicted], rtol=1e-5)
    np.testing.assert_allclose([float(row[4]) for row in rows[1:]],
                               expected.reshape(6, -1).sum(axis=1), rtol=1e-4)
    for name, heatmap in zip(names, expected):
        reference = tmp_path / "reference.png"
        visualize.save_png(reference, heatmap)
        written = np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).astype(int)
        assert np.abs(written - np.asarray(Image.open(reference)).astype(int)).max() <= 1
    assert len(list(tf_dtd.load_results(tmp_path / "out" / "results"))) == 2

    explain_files(relevance_model, files[:2], tmp_path / "overlay", overlay=True, verbose=0)
    assert np.asarray(Image.open(tmp_path / "overlay" / "digit0.png")).shape == (28, 28, 3)


def test_only_image_files(relevance_model, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"streams image files.*Received: \['x.npy'\]"):
        explain_files(relevance_model, ["x.npy"], tmp_path / "out")
