"""Every ```python block in README.md and docs/*.md runs.

The convention (also in docs/api.md, "Examples in these docs"):

- The blocks of one file run in order, in one namespace — like cells of a notebook — that starts
  from this preamble::

      import keras, numpy as np, tf_dtd
      model = tf_dtd.digits.load_model()                # the shipped digits model
      images, labels = tf_dtd.digits.load_samples()     # its 20 sample digits

- They run in an empty temporary folder that holds ``classifier.keras`` (the same model, as a
  file), so examples may load it, and write files.
- Signatures and other listings that are not Python are fenced ``text``, not ``python``.
- A block right after the line ``<!-- no-run -->`` is only compiled, not run. Use it sparingly,
  for what cannot run offline in a test; never to hide a broken example.

One model is loaded for all files (the blocks must not modify it).
"""

import pathlib
import re
import shutil

import pytest

import tf_dtd

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_RUN = "<!-- no-run -->"
PREAMBLE = "import keras, numpy as np, tf_dtd"


def python_blocks(path):
    """``(line number, code, runs)`` for each ```python block of the Markdown file ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, start, previous = [], None, ""
    for number, line in enumerate(lines, 1):
        if start is None:
            if re.fullmatch(r"```\s*python\s*", line):
                start, runs = number, previous.strip() != NO_RUN
            elif line.strip():
                previous = line
        elif line.strip() == "```":
            blocks.append((start, "\n".join(lines[start:number - 1]), runs))
            start, previous = None, ""
    assert start is None, f"{path.name}:{start}: a ```python block is not closed"
    return blocks


@pytest.fixture(scope="module")
def shipped():
    model = tf_dtd.digits.load_model()
    images, labels = tf_dtd.digits.load_samples()
    return model, images, labels


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path, shipped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tf_dtd.digits.MODEL_PATH, tmp_path / "classifier.keras")
    model, images, labels = shipped
    namespace = {"model": model, "images": images, "labels": labels}
    exec(PREAMBLE, namespace)
    for line, code, runs in python_blocks(path):
        compiled = compile(code, f"{path.name}:{line}", "exec")  # a SyntaxError names the block
        if runs:
            exec(compiled, namespace)


def test_blocks_are_found():
    """The parser sees the blocks (a test that runs nothing would pass for nothing)."""
    found = {path.name: len(python_blocks(path)) for path in DOCS}
    assert found["README.md"] >= 1 and found["api.md"] >= 2 and found["visualize.md"] >= 3
    assert not [(path.name, line) for path in DOCS for line, _, runs in python_blocks(path)
                if not runs]  # no block is exempted today
