"""The ``tf-dtd`` command, run as a user runs it: subprocesses in temporary folders.

Main paths (demo, explain, export, info) and the failure contract — exit status 1, one line on
stderr naming what is wrong, no traceback, no half-written output — run in subprocesses, with
the environment a user has (no ``TF_CPP_MIN_LOG_LEVEL``): a successful run prints nothing on
stderr. The remaining failure paths call ``tf_dtd.app.cli.main`` in-process (the same code,
without another TensorFlow start-up). More in tests/test_cli_*.py.
"""

import csv
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
from cli_support import ENV, main, run, save, write
from PIL import Image

import tf_dtd
from tf_dtd.app import cli, digits


def assert_clean_failure(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tf-dtd: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A PNG and a JPEG of other sizes and colour modes than the model's, and a .npy batch."""
    folder = tmp_path_factory.mktemp("inputs")
    images, _ = digits.load_samples()
    big = np.kron(images[4, ..., 0], np.ones((2, 2)))  # 64×64
    rgb = np.stack([big, big * 0.5, big], axis=-1)[:50, :40]  # 50×40 RGB
    Image.fromarray(np.round(rgb * 255).astype("uint8")).save(folder / "two.png")
    Image.fromarray(np.round(images[6, ..., 0] * 255).astype("uint8")).resize((20, 20)).save(
        folder / "three.jpg", quality=95)
    np.save(folder / "pair.npy", images[:2, 4:28, 4:28])  # 24×24, already model inputs
    return folder


def test_demo_writes_heatmaps_and_prints_predictions(tmp_path):
    result = run("demo", "--out", "demo", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no TensorFlow start-up lines
    files = sorted(os.listdir(tmp_path / "demo"))
    assert "overview.png" in files and len(files) == 21
    with Image.open(tmp_path / "demo" / "digit_00_label_0.png") as image:
        assert image.mode == "P" and image.size == (28, 28)
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("digit_")]
    assert len(rows) == 20
    for _, label, predicted, logit, total in rows:
        assert label == predicted
        assert float(total) == pytest.approx(float(logit), rel=1e-4)


def test_explain_images_and_arrays_of_other_sizes(tmp_path, inputs):
    result = run("explain", digits.MODEL_PATH, inputs / "two.png", inputs / "three.jpg",
                 inputs / "pair.npy", "--out", "out", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [  # said once, as one line
        "tf-dtd: warning: 1 of 2 images have another aspect ratio than the model input (28x28) "
        "and were stretched to it: two.png"]
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["pair_0.png", "pair_1.png", "relevance.npz",
                                      "summary.csv", "three.png", "two.png"]
    with np.load(out / "relevance.npz") as saved:
        relevance, logits = saved["relevance"], saved["logits"]
        assert list(saved["names"]) == ["two", "three", "pair_0", "pair_1"]
    assert relevance.shape == (4, 28, 28, 1) and np.all(np.isfinite(relevance))
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == ["two", "three", "pair_0", "pair_1"]
    for row, heatmap, logit in zip(rows, relevance, logits):
        assert int(row["explained_class"]) == int(row["predicted_class"]) == logit.argmax()
        assert float(row["relevance_sum"]) == pytest.approx(heatmap.sum(), rel=1e-5)
        assert float(row["logit"]) == pytest.approx(logit.max(), rel=1e-5)
        assert heatmap.sum() == pytest.approx(logit.max(), rel=1e-4)  # deep_taylor_bounded
    # The .npy samples are model inputs as they are, only resized: same as tf_dtd.explain.
    expected = tf_dtd.explain(digits.load_model(), _resized(np.load(inputs / "pair.npy")),
                              input_range=(0.0, 1.0))
    np.testing.assert_allclose(relevance[2:], expected, rtol=1e-4, atol=1e-6)


def _resized(batch):
    return np.stack([np.asarray(Image.fromarray(s[..., 0]).resize((28, 28), Image.BILINEAR))
                     for s in batch])[..., None]


def test_explain_overlay_target_and_cmap(tmp_path, inputs):
    result = run("explain", digits.MODEL_PATH, inputs, "--overlay", "--target", "3",
                 "--cmap", "seismic", "--rules", "lrp_epsilon", "--out", "o", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "o" / "two.png") as image:
        assert image.mode == "RGB" and image.size == (28, 28)
    with open(tmp_path / "o" / "summary.csv") as handle:
        assert {row["explained_class"] for row in csv.DictReader(handle)} == {"3"}


def test_export_then_serve_without_tf_dtd(tmp_path, inputs):
    # No --input-range: the box comes from --preprocess (default unit: [0, 1]), as in explain.
    result = run("export", digits.MODEL_PATH, "exported", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "[None, 28, 28, 1]" in result.stdout
    images, _ = digits.load_samples()
    np.save(tmp_path / "x.npy", images[:3])
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load("exported")
        served = loaded.serve(np.load("x.npy")).numpy()
        assert "tf_dtd" not in sys.modules
        np.save("served.npy", served)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, check=True,
                   capture_output=True)
    expected = tf_dtd.explain(digits.load_model(), images[:3], input_range=(0.0, 1.0))
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=1e-5,
                               atol=1e-7)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tf-dtd-export")]


def test_info_lists_layers_and_rules(tmp_path):
    result = run("info", digits.MODEL_PATH, "--rules", "lrp_epsilon_gamma_box", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    stem = next(line for line in lines if line.startswith("stem_conv"))
    assert "ZBox" in stem and "[first]" in stem
    assert "Gamma" in next(line for line in lines if line.startswith("block1_1_conv"))
    layers = len(keras.models.load_model(digits.MODEL_PATH).layers) - 1  # less the InputLayer
    assert f"{layers} layers, 0 unsupported" in lines
    table = lines[2:2 + layers]  # after the title and the header
    assert [line.split()[0] for line in table] == [
        layer.name for layer in keras.models.load_model(digits.MODEL_PATH).layers[1:]]
    assert "[positive_bias]" in lines[-1]  # the diagnosis follows the table


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory):
    inputs = keras.Input((32, 32, 1))
    h = keras.layers.UnitNormalization(name="unit_norm")(keras.layers.Conv2D(2, 3)(inputs))
    path = tmp_path_factory.mktemp("models") / "unsupported.keras"
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h))).save(path)
    return path


def test_failures_are_one_line_without_traceback_and_leave_nothing(tmp_path, inputs,
                                                                  unsupported_model, capsys):
    """In a subprocess as a user sees it; the same code's other exits in-process (a corrupt
    model file is among FAILURES below)."""
    result = run("explain", unsupported_model, inputs / "two.png", "--out", "o", cwd=tmp_path)
    assert_clean_failure(result, "unit_norm", "UnitNormalization")
    assert not (tmp_path / "o").exists()

    status = cli.main(["info", str(unsupported_model)])
    captured = capsys.readouterr()
    assert status == 1 and "unsupported" in captured.out
    assert_clean_failure(subprocess.CompletedProcess([], status, captured.out, captured.err),
                         "unit_norm")


# Each user mistake, the message it must give (a regular expression on the one stderr line,
# after "tf-dtd: error: "), and whether an existing output folder must be left alone.
FAILURES = {
    "missing_model": r"Model file '.*nope\.keras' does not exist\.$",
    "text_file_named_keras": r"'.*notes\.keras' is not a Keras model file: a \.keras model is a "
                             r"zip archive",
    "corrupt_zip_model": r"Cannot read model '.*broken\.keras': ",
    "model_without_suffix": r"Model '.*model\.txt' must be a \.keras or \.h5 file\.$",
    "missing_input": r"Input '.*nope\.png' does not exist\.$",
    "corrupt_image": r"Cannot read image '.*bad\.png': cannot identify image file",
    "bad_array": r"Array '.*bad\.npy' must be \(H, W\), \(H, W, C\), \(N, H, W\) or "
                 r"\(N, H, W, C\) with C 1 or 3\. Received: shape \(2, 3, 4, 5\)$",
    "flat_array": r"Array '.*flat\.npy' cannot be images for the model's 28x28 input: read as "
                  r"samples of 4x1024, .* Received: shape \(4, 1024\)$",
    "not_an_image": r"Input '.*notes\.txt' is not an image \(\.png, \.jpg, \.jpeg, \.bmp\) "
                    r"or a \.npy array\.$",
    "export_folder_taken": r"OUTDIR '.*out' already holds files \(an earlier run\?\)\. Pass "
                           r"--overwrite",
    "explain_folder_taken": r"--out '.*out' already holds files \(an earlier run\?\)\. Pass "
                            r"--overwrite",
    "out_is_a_file": r"--out '.*out' is a file, not a folder\.$",
    "export_under_a_file": r"OUTDIR '.*file\.txt/exported': cannot create the folder: Not a "
                           r"directory\.$",
    "caffe_box_for_gray_model": r"Preprocessing 'caffe' is for RGB models\. Received: a model "
                                r"with 1 channel\(s\)",
    "bad_input_range": r"input_range needs low < high everywhere\. Received: "
                       r"input_range=\(1\.0, 0\.0\)$",
    "target_out_of_range": r"target must be a class index in \[0, 10\)\. Received: target=12$",
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_paths(case, tmp_path, inputs, capsys):
    out = tmp_path / "out"
    model = digits.MODEL_PATH
    args = {  # built lazily: each case writes only its own files
        "missing_model": lambda: ("explain", tmp_path / "nope.keras", inputs / "two.png"),
        "text_file_named_keras": lambda: ("explain", write(tmp_path / "notes.keras", b"hi"),
                                          inputs / "two.png"),
        "corrupt_zip_model": lambda: ("info", _zip(tmp_path / "broken.keras")),
        "model_without_suffix": lambda: ("export", write(tmp_path / "model.txt", b"x"), out),
        "missing_input": lambda: ("explain", model, tmp_path / "nope.png"),
        "corrupt_image": lambda: ("explain", model,
                                  write(tmp_path / "bad.png", b"\x89PNG broken")),
        "bad_array": lambda: ("explain", model,
                              save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5)))),
        "flat_array": lambda: ("explain", model,
                               save(tmp_path / "flat.npy", np.zeros((4, 1024)))),
        "not_an_image": lambda: ("explain", model, write(tmp_path / "notes.txt", b"hello")),
        "export_folder_taken": lambda: ("export", model,
                                        write(out / "keep.txt", b"mine").parent,
                                        "--input-range", "0", "1"),
        "explain_folder_taken": lambda: ("explain", model, inputs / "two.png", "--out",
                                         write(out / "keep.txt", b"mine").parent),
        "out_is_a_file": lambda: ("explain", model, inputs / "two.png", "--out",
                                  write(out, b"a file")),
        "export_under_a_file": lambda: ("export", model,
                                        write(tmp_path / "file.txt", b"x") / "exported",
                                        "--rules", "lrp_z"),
        "caffe_box_for_gray_model": lambda: ("export", model, out, "--preprocess", "caffe"),
        "bad_input_range": lambda: ("explain", model, inputs / "two.png",
                                    "--input-range", "1", "0"),
        "target_out_of_range": lambda: ("export", model, out, "--target", "12"),
    }[case]()
    if args[0] == "explain" and "--out" not in args:
        args = (*args, "--out", out)
    before = sorted(os.listdir(out)) if out.is_dir() else out.exists()

    status, err = main(capsys, *args)

    assert status == 1, err
    lines = [line for line in err.splitlines() if not line.startswith("tf-dtd: warning:")]
    assert len(lines) == 1 and lines[0].startswith("tf-dtd: error: "), err
    assert re.search(FAILURES[case], lines[0][len("tf-dtd: error: "):]), lines[0]
    assert (sorted(os.listdir(out)) if out.is_dir() else out.exists()) == before
    assert not [name for name in os.listdir(tmp_path) if ".tf-dtd-" in name]


def test_read_only_export_folder(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, err = main(capsys, "export", digits.MODEL_PATH, locked / "exported",
                            "--rules", "lrp_epsilon")
    finally:
        locked.chmod(0o700)
    assert status == 1
    assert re.fullmatch(r"tf-dtd: error: OUTDIR '.*locked/exported': cannot create the folder: "
                        r"Permission denied\.\n", err), err  # the user's folder, not a staging one
    assert os.listdir(locked) == []


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(tf_dtd.TfDtdError, match=r"Model file '.*nope\.keras' does not exist"):
        cli.main(["info", str(tmp_path / "nope.keras"), "--debug"])


def _zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{not json")
    return path
