"""The conservation report and the relevance at intermediate layers, on a net computed by hand.

x = [1, 2];  dense1: W1 = [[1, -1], [2, 1]], b1 = [0.5, -1], ReLU  →  z1 = [5.5, 0], a1 = [5.5, 0]
dense2: W2 = [[1, -2], [1, 1]], b2 = [0.25, 0]  →  logits = [5.75, -11]; the top class is 0.

LRP-0: dense2 receives 5.75 and sends a1_0·1 / 5.75 · 5.75 = 5.5 (the bias keeps 0.25); dense1
receives [5.5, 0] and sends x_i W1[i, 0] / 5.5 · 5.5 = [1, 4] (the bias keeps 0.5).
z⁺ ignores biases: dense2 sends all 5.75 to a1_0, dense1 splits it 1 : 4 → [1.15, 4.6].
"""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.report.conservation import conservation_report, format_report


@pytest.fixture(scope="module")
def model():
    inputs = keras.Input((2,))
    h = keras.layers.Dense(2, activation="relu", name="dense1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense2")(h))
    model.get_layer("dense1").set_weights([np.array([[1.0, -1.0], [2.0, 1.0]]),
                                           np.array([0.5, -1.0])])
    model.get_layer("dense2").set_weights([np.array([[1.0, -2.0], [1.0, 1.0]]),
                                           np.array([0.25, 0.0])])
    return model


X = np.array([[1.0, 2.0]], "float32")


def _rows(report):
    return {row["layer"]: row for row in report}


def test_report_of_lrp_zero_matches_the_hand_computation(model):
    rows = _rows(conservation_report(model, X, "lrp_z"))

    assert list(rows) == ["dense1", "dense2"]
    assert rows["dense2"]["relevance_out"] == pytest.approx(5.75)
    assert rows["dense2"]["relevance_in"] == pytest.approx(5.5)
    assert rows["dense2"]["leak"] == pytest.approx(0.25)
    assert rows["dense2"]["relative_leak"] == pytest.approx(0.25 / 5.75)
    assert rows["dense1"]["relevance_out"] == pytest.approx(5.5)
    assert rows["dense1"]["relevance_in"] == pytest.approx(5.0)
    assert rows["dense1"]["leak"] == pytest.approx(0.5)
    assert rows["dense1"]["reason"] == rows["dense2"]["reason"] == "bias"
    assert rows["dense1"]["rule"] == tf_dtd.rules.Z()


def test_report_of_z_plus_is_conservative(model):
    rows = _rows(conservation_report(model, X, "deep_taylor"))

    for name in ("dense1", "dense2"):
        assert rows[name]["relevance_out"] == pytest.approx(5.75)
        assert rows[name]["relevance_in"] == pytest.approx(5.75)
        assert rows[name]["leak"] == pytest.approx(0.0, abs=1e-6)
        assert rows[name]["reason"] is None
    table = format_report(list(rows.values()))
    assert table.splitlines()[0].split()[:3] == ["layer", "type", "rule"]
    assert "ZPlus" in table


def test_relevance_at_named_layers(model):
    relevance_model = tf_dtd.relevance_model(model, "lrp_z", layers=["dense1", "dense2"],
                                             return_prediction=True)
    out = relevance_model.predict(X, verbose=0)

    np.testing.assert_allclose(out["layers"]["dense2"], [[5.75, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(out["layers"]["dense1"], [[5.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(out["relevance"], [[1.0, 4.0]], rtol=1e-6)
    np.testing.assert_allclose(out["logits"], [[5.75, -11.0]], rtol=1e-6)


def test_unknown_or_folded_layer_names_are_errors():
    inputs = keras.Input((4,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="d")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    with pytest.raises(tf_dtd.InvalidArgumentError, match=r"\['bn'\]"):
        tf_dtd.relevance_model(model, "lrp_z", layers=["bn"])
    with pytest.raises(tf_dtd.InvalidArgumentError, match="list of layer names"):
        tf_dtd.relevance_model(model, "lrp_z", layers="d")


def test_layers_named_like_the_reports_operations():
    """A model loaded in a fresh process often has layers called ``add`` or ``sum`` — the
    names Keras gives the first such operations of a session. The report's own sums must not
    take them (the probe model refused the duplicate name)."""
    keras.backend.clear_session()  # the next operations are named add, sum, ... again
    keras.utils.set_random_seed(2)
    inputs = keras.Input((3,))
    left = keras.layers.Dense(4, name="left")(inputs)
    right = keras.layers.Dense(4, name="right")(inputs)
    h = keras.layers.ReLU(name="relu")(keras.layers.Add(name="add")([left, right]))
    named = keras.Model(inputs, keras.layers.Dense(2, name="sum")(h))
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    report = conservation_report(named, x, "lrp_z")
    rows = _rows(report)
    assert sorted(rows) == ["add", "left", "relu", "right", "sum"]
    assert rows["add"]["leak"] == pytest.approx(0.0, abs=1e-5)  # no bias: the Add conserves
    relevance, logits = tf_dtd.explain(named, x, "lrp_z", return_prediction=True)
    gap = np.mean(logits.max(axis=1) - relevance.sum(axis=1))
    assert sum(row["leak"] for row in report) == pytest.approx(gap, rel=1e-4, abs=1e-5)
