"""``tf-dtd`` tells a bug in tf_dtd from a user's mistake, and says what it sees.

A bug (an unexpected exception: here a deliberate AttributeError injected into the code a
command runs) exits with status 70, says it is a bug and where the traceback went; a user's
mistake exits with 1 and its own message (tests/test_cli.py::test_failure_paths). Warnings are
one line each; the demo says how much of the logit its rules absorbed. In-process ``cli.main``.
"""

import os
import re
import subprocess
import tempfile

import numpy as np
import pytest
from cli_support import ENV, command, main

import tf_dtd
from tf_dtd.app import cli, digits, inputs
from tf_dtd.relevance import plan


def _bug(*args, **kwargs):
    raise AttributeError("'NoneType' object has no attribute 'shape'")


# command line -> (object, attribute) that the command calls: replaced by _bug
BUGS = {
    "explain": (inputs, "load_inputs"),
    "export": (tf_dtd, "relevance_model"),
    "info": (plan, "decide"),
    "demo": (tf_dtd, "explain"),
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_a_bug_says_so_and_keeps_the_traceback(name, tmp_path, capsys, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(*BUGS[name], _bug)
    args = {"explain": ["explain", digits.MODEL_PATH, tmp_path, "--out", tmp_path / "out"],
            "export": ["export", digits.MODEL_PATH, tmp_path / "out"],
            "info": ["info", digits.MODEL_PATH],
            "demo": ["demo", "--out", tmp_path / "out"]}[name]
    if name == "explain":
        np.save(tmp_path / "x.npy", digits.load_samples()[0][:2])

    status, err = main(capsys, *args)

    assert status == 70
    found = re.fullmatch(
        r"tf-dtd: internal error: AttributeError: 'NoneType' object has no attribute 'shape'\. "
        r"This is a bug in tf_dtd; the traceback is in (\S+) \(please attach it to a bug "
        r"report\)\.\n", err)
    assert found, err
    path = found.group(1)
    assert os.path.dirname(path) == str(temp)
    with open(path) as handle:
        report = handle.read()
    assert f"command: tf-dtd {' '.join(map(str, args))}" in report
    assert "Traceback (most recent call last)" in report and "in _bug" in report
    assert "AttributeError: 'NoneType' object has no attribute 'shape'" in report
    assert not (tmp_path / "out").exists()


def test_debug_raises_the_bug(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "load_inputs", _bug)
    np.save(tmp_path / "x.npy", digits.load_samples()[0][:1])
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'shape'"):
        cli.main(["explain", digits.MODEL_PATH, str(tmp_path / "x.npy"), "--debug",
                  "--out", str(tmp_path / "out")])


def test_out_of_memory_is_not_a_bug(tmp_path, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(tf_dtd, "explain", exhausted)
    status, err = main(capsys, "demo", "--out", tmp_path / "out")
    assert status == 1
    assert err == "tf-dtd: error: out of memory; try a smaller --batch-size\n"


def test_inputs_outside_the_box_warn_in_one_line(tmp_path, capsys):
    images, _ = digits.load_samples()
    np.save(tmp_path / "bright.npy", images[:3] * np.array([1.0, 3.0, 1.0])[:, None, None, None])

    status, err = main(capsys, "explain", digits.MODEL_PATH, tmp_path / "bright.npy",
                       "--out", tmp_path / "out")

    assert status == 0, err
    assert err.splitlines() == [
        "tf-dtd: warning: 1 of 3 samples have inputs outside the z^B box [ZBox(low=0.0, "
        "high=1.0)] given by input_range; z^B relevance is not guaranteed to be non-negative "
        "there. Pass the range your inputs really take."]


def test_explain_and_export_share_the_relevance_options():
    def options(name):
        text = subprocess.run([*command(), name, "--help"], env=ENV, capture_output=True,
                              text=True, timeout=60).stdout
        return text[text.index("relevance options:"):].split("\n\n")[0]

    explain, export = options("explain"), options("export")
    assert explain == export
    for option in ("--rules PRESET", "--input-range LOW HIGH", "--preprocess", "--target"):
        assert option in explain


def test_demo_reports_what_the_rules_absorbed(tmp_path, capsys):
    # ε·RMS on the middle layers of lrp_epsilon_gamma_box absorbs about half of the logit on the
    # shipped (bias-free) model; plain lrp_epsilon absorbs almost nothing there.
    status = cli.main(["demo", "--rules", "lrp_epsilon_gamma_box", "--out",
                       str(tmp_path / "demo")])
    stdout = capsys.readouterr().out

    assert status == 0
    rows = [line.split() for line in stdout.splitlines() if line.startswith("digit_")]
    kept = np.array([float(total) / float(logit) for *_, logit, total in rows])
    summary = stdout.splitlines()[-2]
    found = re.fullmatch(r"100% correct\. Rules lrp_epsilon_gamma_box: ε and biases absorbed "
                         r"(\d+)% of the "
                         r"logit on average \(the heatmap sums range from (-?\d+)% to (-?\d+)% of "
                         r"the logit\)\.", summary)
    assert found, summary
    assert int(found.group(1)) == pytest.approx(100 * (1 - kept.mean()), abs=1)
    assert int(found.group(1)) > 20
    assert int(found.group(2)) == pytest.approx(100 * kept.min(), abs=1)
    assert int(found.group(3)) == pytest.approx(100 * kept.max(), abs=1)


@pytest.mark.parametrize("sums, logits, rules, expected", [
    ([2.0, 3.0], [2.0, 3.0], "deep_taylor",
     "each heatmap sums to its logit (within 0e+00 relative)."),
    ([7.5, 8.0], [10.0, 10.0], "lrp_epsilon",
     "ε and biases absorbed 22% of the logit on average (the heatmap sums range from 75% to 80% "
     "of the logit)."),
    ([5.0], [10.0], "lrp_z",
     "biases absorbed 50% of the logit on average (the heatmap sums range from 50% to 50% of "
     "the logit)."),
    ([12.0, 13.0], [10.0, 10.0], "lrp_alpha_2_beta_1",
     "the rules created 25% more relevance than the logit on average (the heatmap sums range "
     "from 120% to 130% of the logit)."),
])
def test_conservation_summary(sums, logits, rules, expected):
    assert cli.conservation_summary(sums, logits, rules) == expected
