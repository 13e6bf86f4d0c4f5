"""The output folders of ``tf-dtd``: never a mix of two runs, permissions like any file write.

In-process ``cli.main`` calls (see tests/cli_support.py).
"""

import os
import stat

import numpy as np
import pytest
from cli_support import leftovers, main
from PIL import Image

from tf_dtd.app import digits
from tf_dtd.app.output import OutputError, OutputFolder


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    images, _ = digits.load_samples()
    for i in range(3):
        Image.fromarray(np.round(images[i, ..., 0] * 255).astype("uint8")).save(
            folder / f"digit_{i}.png")
    return folder


def test_overwrite_replaces_the_whole_output_set(tmp_path, pngs, capsys):
    out = tmp_path / "out"
    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_0.png",
                       pngs / "digit_1.png", "--out", out)
    assert status == 0, err
    (out / "my_notes.txt").write_text("added by the user")

    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_2.png", "--out", out)
    assert status == 1 and "already holds files" in err
    assert "digit_0.png" in os.listdir(out)  # refused: the earlier run is untouched

    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_2.png", "--out", out,
                       "--overwrite")

    assert status == 0, err
    assert sorted(os.listdir(out)) == ["digit_2.png", "relevance.npz", "summary.csv"]
    with np.load(out / "relevance.npz") as saved:
        assert list(saved["names"]) == ["digit_2"]
    assert os.listdir(tmp_path) == ["out"] and not leftovers(tmp_path)


def test_overwrite_never_deletes_what_the_command_reads(tmp_path, pngs, capsys, monkeypatch):
    (tmp_path / "mine.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path)
    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_0.png", "--out", ".",
                       "--overwrite")
    assert status == 1
    assert err == ("tf-dtd: error: --out '.' holds the current folder; --overwrite would delete "
                   "it. Choose another folder.\n")

    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_0.png", "--out", pngs,
                       "--overwrite")
    assert status == 1
    assert err == (f"tf-dtd: error: --out '{pngs}' holds '{pngs / 'digit_0.png'}', which this "
                   "command reads; --overwrite would delete it. Choose another folder.\n")
    assert sorted(os.listdir(pngs)) == ["digit_0.png", "digit_1.png", "digit_2.png"]
    assert os.listdir(tmp_path) == ["mine.txt"]


def test_an_empty_output_folder_is_used(tmp_path, pngs, capsys):
    out = tmp_path / "out"
    out.mkdir()
    status, err = main(capsys, "explain", digits.MODEL_PATH, pngs / "digit_0.png", "--out", out)
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["digit_0.png", "relevance.npz", "summary.csv"]


def test_files_follow_the_umask(tmp_path, pngs, capsys):
    umask = 0o027  # not the usual 022: a private 0600 / 0700 must show
    previous = os.umask(umask)
    try:
        status, err = main(capsys, "explain", digits.MODEL_PATH, pngs, "--out",
                           tmp_path / "new" / "heatmaps")
        assert status == 0, err
        status, err = main(capsys, "export", digits.MODEL_PATH, tmp_path / "exported",
                           "--rules", "lrp_epsilon")
        assert status == 0, err
    finally:
        os.umask(previous)

    modes = {}
    for root, folders, files in os.walk(tmp_path):
        for name in folders + files:
            path = os.path.join(root, name)
            modes[os.path.relpath(path, tmp_path)] = stat.S_IMODE(os.stat(path).st_mode)
    assert {"new", "new/heatmaps", "new/heatmaps/relevance.npz", "new/heatmaps/summary.csv",
            "new/heatmaps/digit_0.png", "exported", "exported/saved_model.pb"} <= set(modes)
    for path, mode in modes.items():
        is_folder = os.path.isdir(tmp_path / path)
        assert mode == (0o777 if is_folder else 0o666) & ~umask, (path, oct(mode))


def test_failure_removes_the_parent_folders_it_created(tmp_path):
    folder = OutputFolder(str(tmp_path / "a" / "b" / "out"))
    with pytest.raises(RuntimeError, match="^failed while writing$"):
        with folder:
            folder.write("x.txt", lambda path: open(path, "w").close())
            raise RuntimeError("failed while writing")
    assert os.listdir(tmp_path) == []


def test_write_error_names_the_users_folder(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))

    def fail(path):
        raise OSError(28, "No space left on device", path)

    with pytest.raises(OutputError, match=r"^--out '.*/out': cannot write x\.png in the folder: "
                                          r"No space left on device\.$"):
        with folder:
            folder.write("x.png", fail)
    assert os.listdir(tmp_path) == []
