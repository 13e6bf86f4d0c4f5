"""Starting ``tf-dtd`` and ``import tf_dtd``: no TensorFlow until it is needed.

``tf-dtd --help`` and argument errors answer without importing TensorFlow; ``import tf_dtd`` is
light, its public names load on first use, and tf_dtd's Keras layers are registered as soon as
Keras is imported (a saved relevance model loads after ``import tf_dtd`` whatever the order).
"""

import subprocess
import sys
import textwrap

import keras
import pytest
from cli_support import ENV

import tf_dtd
from tf_dtd import composites, preset_names


def _python(code, cwd=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_help_and_argument_errors_do_not_import_tensorflow():
    result = _python("""
        import contextlib, io, sys
        from tf_dtd.app import cli

        for argv in (["--help"], ["explain", "--help"], ["export", "--rules", "nope", "m", "o"],
                     ["explain", "m.keras", "x.png", "--batch-size", "0"], []):
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    cli.main(argv)
                except SystemExit as exit:
                    code = exit.code
            print(code, *err.getvalue().strip().splitlines()[-1:], sep=" | ")
        print(sorted(name for name in ("tensorflow", "keras") if name in sys.modules))
    """)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["0", "0"]  # --help
    assert lines[2].startswith("2 | tf-dtd export: error: argument --rules: invalid choice: "
                               "'nope' (choose from 'deep_taylor', ")
    assert lines[3] == ("2 | tf-dtd explain: error: argument --batch-size: expected a whole "
                        "number >= 1, got '0'")
    assert lines[4] == "2 | tf-dtd: error: the following arguments are required: COMMAND"
    assert lines[5] == "[]"  # neither TensorFlow nor Keras was imported


def test_import_is_lazy_and_saved_relevance_models_load_after_it(tmp_path):
    model = tf_dtd.digits.load_model()
    tf_dtd.relevance_model(model, input_range=(0.0, 1.0)).save(tmp_path / "relevance.keras")
    result = _python("""
        import sys
        import tf_dtd
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
        import keras  # after tf_dtd: its layers must be registered all the same
        loaded = keras.models.load_model("relevance.keras")
        print(loaded.name)
    """, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "digits_resnet_relevance"


def test_public_names_are_as_before():
    assert sorted(tf_dtd.__all__) == sorted([
        "Composite", "HandlerContext", "InputRangeWarning", "InvalidArgumentError", "PRESETS",
        "TfDtdError", "UnsupportedLayerError", "UnsupportedModelError", "callbacks", "diagnose",
        "digits", "evaluate", "explain", "explain_dataset", "input_box", "layers",
        "load_results", "quantus_explain_func", "register_layer_rule", "relevance_model", "rules",
        "sync_weights"])
    namespace = {}
    exec("from tf_dtd import *", namespace)
    assert set(tf_dtd.__all__) <= set(namespace)
    assert set(tf_dtd.__all__) <= set(dir(tf_dtd))
    assert {"visualize", "composites", "app", "relevance"} <= set(dir(tf_dtd))
    assert tf_dtd.PRESETS is composites.PRESETS
    assert tf_dtd.digits.__name__ == "tf_dtd.app.digits"
    assert tf_dtd.rules.__name__ == "tf_dtd.rules"
    assert tf_dtd.layers.__name__ == "tf_dtd.relevance.layers"
    assert tf_dtd.visualize.__name__ == "tf_dtd.visualize"
    assert any(name.startswith("tf_dtd>") for name in keras.saving.get_custom_objects())
    with pytest.raises(AttributeError, match="module 'tf_dtd' has no attribute 'nope'"):
        tf_dtd.nope  # noqa: B018


def test_preset_names_match_the_presets():
    assert tuple(composites.PRESETS) == preset_names.PRESET_NAMES
    for name in preset_names.PRESET_NAMES:
        needs_box = name in preset_names.BOX_PRESETS
        first = composites.resolve(name, (0.0, 1.0)).first
        assert isinstance(first, tf_dtd.rules.ZBox) == needs_box
        if needs_box:
            with pytest.raises(tf_dtd.InvalidArgumentError,
                               match=f"Preset '{name}' applies the z\\^B rule to the first layer "
                                     "and needs the input box"):
                composites.resolve(name)
        else:
            composites.resolve(name)  # no box needed
