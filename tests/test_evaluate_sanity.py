"""tf_dtd.evaluate.sanity: cascading randomisation, Spearman and SSIM in NumPy."""

import keras
import numpy as np
import pytest

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate import baselines
from tf_dtd.evaluate.sanity import (
    gaussian_reinitialization,
    randomization_check,
    spearman,
    ssim,
)


def trained_cnn():
    """A small CNN fitted for a few epochs to tell where a bright square sits (left / right)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96)
    x = rng.random((96, 8, 8, 1)).astype("float32") * 0.2
    for image, label in zip(x, labels):
        row, col = rng.integers(0, 6), rng.integers(0, 2) + 4 * label
        image[row:row + 3, col:col + 2] += 0.8
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
        keras.layers.Flatten(), keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dense(2, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, labels, epochs=8, batch_size=16, verbose=0)
    return model, x[:6]


@pytest.fixture(scope="module")
def fitted():
    return trained_cnn()


def test_unchanged_model_gives_perfect_similarity(fitted):
    model, x = fitted
    steps = randomization_check(model, x, baselines.gradient,
                                reinitialize=lambda weights, rng: weights)
    assert [s["layer"] for s in steps] == ["out", "hidden", "conv"]   # top layer first
    for step in steps:
        assert step["spearman"] == pytest.approx(1.0)
        assert step["spearman_abs"] == pytest.approx(1.0)
        assert step["ssim"] == pytest.approx(1.0)


def test_randomising_every_layer_decorrelates_the_gradient(fitted):
    model, x = fitted
    before = [w.copy() for w in model.get_weights()]
    prediction = model.predict(x, verbose=0)
    steps = randomization_check(model, x, baselines.gradient, seed=3)
    assert len(steps) == 3
    assert abs(steps[-1]["spearman"]) < 0.5
    assert steps[-1]["ssim"] < 0.5
    # The user's model is untouched.
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(model.predict(x, verbose=0), prediction)
    # Deterministic under the seed.
    assert randomization_check(model, x, baselines.gradient, seed=3) == steps


def test_lrp_explainer_runs_through_the_check(fitted):
    model, x = fitted
    steps = randomization_check(model, x[:2], baselines.lrp("lrp_epsilon"),
                                targets=np.array([0, 1]))
    assert [sorted(s) for s in steps] == [["layer", "spearman", "spearman_abs", "ssim"]] * 3
    assert all(-1 <= s["spearman"] <= 1 and s["ssim"] <= 1 for s in steps)


def test_gaussian_reinitialization_uses_the_kernel_scale():
    kernel = np.random.default_rng(0).normal(0, 2.0, (50, 40)).astype("float32")
    new = gaussian_reinitialization([kernel, np.zeros(40, "float32")],
                                    np.random.default_rng(1))
    assert [w.shape for w in new] == [(50, 40), (40,)]
    assert [w.dtype for w in new] == [np.float32, np.float32]
    assert np.std(new[0]) == pytest.approx(np.std(kernel), rel=0.05)
    assert np.std(new[1]) > 0.5


def test_spearman_by_hand_with_ties():
    # Ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: centred dot 4.5, norms² 4.5 and 5 → 3/√10.
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / np.sqrt(10))
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([3, 1, 2], [-30, -10, -20]) == pytest.approx(-1.0)
    assert spearman(np.eye(3), np.eye(3)) == pytest.approx(1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(InvalidArgumentError, match="Received: sizes 3 and 2"):
        spearman([1, 2, 3], [1, 2])


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    for _ in range(5):
        a = rng.integers(0, 5, 30).astype(float)   # many ties
        b = a + rng.integers(0, 3, 30)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def test_ssim():
    rng = np.random.default_rng(3)
    a = rng.random((10, 12))
    assert ssim(a, a) == 1.0
    assert ssim(np.zeros((8, 8)), np.zeros((8, 8))) == 1.0
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert 0 < ssim(a, b) < 0.9
    # Constant maps 0 and 1: only the luminance term, (0 + C1) / (0 + 1 + C1).
    c1 = 0.01 ** 2
    assert ssim(np.zeros((7, 7)), np.ones((7, 7))) == pytest.approx(c1 / (1 + c1))
    assert ssim(a[:, :4], a[:, :4]) == 1.0            # window shrinks to 3 for a 4-wide map
    assert ssim(a[0], b[0]) < 1.0                      # 1-D maps
    with pytest.raises(InvalidArgumentError, match="same shape"):
        ssim(a, a[:5])


def test_bad_arguments(fitted):
    model, x = fitted
    with pytest.raises(InvalidArgumentError, match="Received: seed=-2"):
        randomization_check(model, x, baselines.gradient, seed=-2)
    with pytest.raises(InvalidArgumentError, match=r"heatmaps of shape \(6, 8, 8, 1\).*"
                                                   r"Received: \(6, 8, 8\)"):
        randomization_check(model, x, lambda m, x, t: np.zeros(x.shape[:-1]))
