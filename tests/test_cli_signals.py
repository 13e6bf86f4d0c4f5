"""Ctrl-C (SIGINT) and SIGTERM during ``tf-dtd explain`` / ``export``.

Expected: one line on stderr, exit status 130 / 143, and nothing left behind — no output folder,
no staging folder next to it, no temporary file — and an earlier run replaced with
``--overwrite`` stays as it was. The subprocess tests slow the writing of the output down (a
sleep after each file) so that the signal lands while the files are being written, then list the
folder; the in-process tests send the signal from inside the command at a chosen moment.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_support import ENV, leftovers, main
from PIL import Image

from tf_dtd.app import digits, output

# The command with its output slowed down: a pause after each file (explain), or after the
# SavedModel is complete in the staging folder (export).
SLOW_COMMAND = """
import sys, time
from tf_dtd.app import output
from tf_dtd.app.cli import main

write, fill = output.OutputFolder.write, output.OutputFolder.fill
output.OutputFolder.write = lambda self, name, save: (write(self, name, save), time.sleep(0.05))
output.OutputFolder.fill = lambda self, save: (fill(self, save), time.sleep(120))
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of 300 small grayscale PNGs."""
    folder = tmp_path_factory.mktemp("many") / "images"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (300, 32, 32), dtype="uint8")
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"image_{i:03d}.png")
    return folder


@pytest.mark.parametrize("command, signum", [("explain", signal.SIGINT),
                                             ("export", signal.SIGTERM)])
def test_signal_while_writing_leaves_nothing(command, signum, tmp_path, images):
    temp = tmp_path / "temp"  # the process's temporary folder: must stay empty too
    temp.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    args = {"explain": ["explain", digits.MODEL_PATH, images, "--out", "out"],
            "export": ["export", digits.MODEL_PATH, "out"]}[command]
    process = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND, *map(str, args)], cwd=work,
                               env={**ENV, "TMPDIR": str(temp)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        staging = _wait_for_files(work, process, at_least=3 if command == "explain" else 2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert staging, "the output was never being written"

    assert process.returncode == 128 + signum, stderr
    assert stderr.splitlines() == [f"tf-dtd: interrupted by {signal.Signals(signum).name}"]
    assert os.listdir(work) == []
    assert os.listdir(temp) == []


def _wait_for_files(folder, process, at_least, timeout=240):
    """Wait until a staging folder in ``folder`` holds ``at_least`` entries; its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for name in os.listdir(folder):
            if ".tf-dtd-" in name and len(os.listdir(folder / name)) >= at_least:
                return name
        time.sleep(0.01)
    return None


def _signal_on_call(monkeypatch, method, signum, call):
    """Make ``OutputFolder.<method>`` send ``signum`` to this process on its ``call``-th call."""
    original = getattr(output.OutputFolder, method)
    calls = []

    def signalling(self, *args):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return original(self, *args)

    monkeypatch.setattr(output.OutputFolder, method, signalling)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_overwrite_keeps_the_earlier_run(signum, tmp_path, images, capsys,
                                                    monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"an earlier run")
    _signal_on_call(monkeypatch, "write", signum, call=5)
    # Python's default, or SIG_IGN where the test run itself was started in the background.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    status, err = main(capsys, "explain", digits.MODEL_PATH, images, "--out", out,
                       "--overwrite")

    assert status == 128 + signum
    assert err.splitlines() == [f"tf-dtd: interrupted by {signal.Signals(signum).name}"]
    assert os.listdir(out) == ["earlier.png"]
    assert os.listdir(tmp_path) == ["out"] and not leftovers(tmp_path)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers restored


def test_interrupted_export_leaves_nothing(tmp_path, capsys, monkeypatch):
    _signal_on_call(monkeypatch, "fill", signal.SIGINT, call=1)

    status, err = main(capsys, "export", digits.MODEL_PATH, tmp_path / "a" / "b" / "exported")

    assert status == 130 and err == "tf-dtd: interrupted by SIGINT\n"
    assert os.listdir(tmp_path) == []  # the parent folders it created are gone too


def test_signal_during_the_swap_waits_for_it(tmp_path, images, capsys, monkeypatch):
    """A signal while the new files replace the old ones is held until the swap is done."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"an earlier run")
    _signal_on_call(monkeypatch, "_commit", signal.SIGTERM, call=1)

    status, err = main(capsys, "explain", digits.MODEL_PATH, images / "image_000.png",
                       images / "image_001.png", "--out", out, "--overwrite")

    assert status == 143 and err == "tf-dtd: interrupted by SIGTERM\n"
    assert sorted(os.listdir(out)) == ["image_000.png", "image_001.png", "relevance.npz",
                                       "summary.csv"]  # all of the new run, none of the old
    assert os.listdir(tmp_path) == ["out"]


def test_signal_inside_a_finalizer_still_interrupts():
    """A signal that lands while a ``__del__`` runs (TensorFlow's functions have one, and the
    garbage collector runs them at any moment) must not be lost: an exception raised there is
    printed as "Exception ignored" and dropped, and the command ran on (an export sent SIGTERM
    once did not exit for 120 s)."""
    from tf_dtd.app.process import Interrupted, SignalsToExceptions

    class SignalsWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs here, inside __del__

    with pytest.raises(Interrupted) as raised:
        with SignalsToExceptions():
            SignalsWhenCollected()  # collected at once
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    assert raised.value.exit_status == 143
