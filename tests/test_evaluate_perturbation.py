"""tf_dtd.evaluate.perturbation: region perturbation / AOPC on planted and hand-computed cases."""

import keras
import numpy as np
import pytest

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate.baselines import random_baseline
from tf_dtd.evaluate.perturbation import box_blur, region_labels, region_perturbation


def linear_model(weights, bias=None, classes=1, activation=None):
    """``f_0(x) = w·x (+ b)`` on inputs of ``weights.shape``; other classes have zero weights."""
    kernel = np.zeros((weights.size, classes), "float32")
    kernel[:, 0] = weights.ravel()
    use_bias = bias is not None
    model = keras.Sequential([
        keras.Input(weights.shape), keras.layers.Flatten(),
        keras.layers.Dense(classes, use_bias=use_bias, activation=activation)])
    params = [kernel] + ([np.full(classes, bias, "float32")] if use_bias else [])
    model.layers[-1].set_weights(params)
    return model


def small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])


def test_planted_linear_model_most_relevant_first_wins():
    rng = np.random.default_rng(0)
    w = rng.random((8, 8, 1)).astype("float32")
    x = rng.random((6, 8, 8, 1)).astype("float32")
    model = linear_model(w)
    exact = x * w
    for region_size, steps in ((2, 16), (3, 9)):   # 3 does not divide 8: narrower border cells
        run = dict(region_size=region_size, steps=steps, fill="constant", fill_value=0.0)
        best = region_perturbation(model, x, exact, **run)
        others = [region_perturbation(model, x, h, **run) for h in (
            np.broadcast_to(w, x.shape),              # gradient only
            -exact,                                   # reversed ranking
            *(random_baseline(seed)(model, x, np.zeros(6, int)) for seed in range(4)))]
        others.append(region_perturbation(model, x, exact, order="least_relevant_first", **run))
        for other in others:
            assert best.aopc >= other.aopc - 1e-6
            # Every prefix of the exact ranking removes the most evidence: the curve dominates.
            assert np.all(best.curve >= other.curve - 1e-5)
        assert best.aopc > others[-1].aopc + 0.5
        # Zero fill removes exactly the region contributions; the last step removes them all.
        removed = np.sort(np.bincount(region_labels((8, 8), region_size).ravel(),
                                      weights=exact[0, ..., 0].ravel()))[::-1]
        assert best.scores[0, 1] == pytest.approx(best.scores[0, 0] - removed[0], rel=1e-5)
        np.testing.assert_allclose(best.curve[-1], exact.sum(axis=(1, 2, 3)).mean(), rtol=1e-5)


def test_hand_computed_two_regions():
    # f_0 = w·x + 1 on a 2×4 image of ones, regions = left and right halves (sums 4 and 12),
    # behind a softmax that must be stripped (scores are logits).
    w = np.array([[1, 1, 3, 3], [1, 1, 3, 3]], "float32")[..., None]
    model = linear_model(w, bias=1.0, classes=2, activation="softmax")
    x = np.ones((1, 2, 4, 1), "float32")
    heat = x * w
    run = dict(region_size=2, steps=2, fill="constant", fill_value=0.0)
    morf = region_perturbation(model, x, heat, **run)
    np.testing.assert_allclose(morf.scores, [[17, 5, 1]])
    np.testing.assert_allclose(morf.curve, [0, 12, 16])
    assert morf.aopc == pytest.approx(28 / 3)
    assert (morf.order, morf.fill, morf.targets.tolist()) == ("most_relevant_first",
                                                              "constant", [0])
    lerf = region_perturbation(model, x, heat, order="least_relevant_first", **run)
    np.testing.assert_allclose(lerf.scores, [[17, 13, 1]])
    assert lerf.aopc == pytest.approx(20 / 3)
    np.testing.assert_allclose(lerf.aopc_per_sample, [20 / 3])
    # Explaining class 1 (zero weights): its logit is the bias and never moves.
    other = region_perturbation(model, x, heat, targets=np.array([1]), **run)
    np.testing.assert_allclose(other.scores, [[1, 1, 1]])


def test_region_labels_and_box_blur():
    np.testing.assert_array_equal(region_labels((3, 5), 2),
                                  [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]])
    np.testing.assert_array_equal(region_labels((5,), 4), [0, 0, 0, 0, 1])
    signal = np.array([[0, 0, 3, 3]], "float64")[..., None]
    np.testing.assert_allclose(box_blur(signal, 2)[0, :, 0], [0, 1.5, 3, 3])
    np.testing.assert_allclose(box_blur(signal, 3)[0, :, 0], [0, 1, 2, 3])


def test_blur_fill_leaves_a_constant_image_unchanged():
    model = small_cnn()
    x = np.full((2, 8, 8, 2), 0.7, "float32")
    np.testing.assert_allclose(box_blur(x, 4), x)
    heat = np.random.default_rng(1).normal(size=x.shape)
    result = region_perturbation(model, x, heat, region_size=4, steps=4, fill="blur")
    np.testing.assert_allclose(result.scores, result.scores[:, :1] * np.ones((1, 5)), atol=1e-6)
    np.testing.assert_allclose(result.curve, 0, atol=1e-6)


@pytest.mark.parametrize("fill", ["uniform", "constant", "blur"])
def test_batch_invariance(fill):
    model = small_cnn()
    rng = np.random.default_rng(2)
    x = rng.random((4, 8, 8, 2)).astype("float32")
    heat = rng.normal(size=x.shape)
    run = dict(region_size=3, steps=5, fill=fill, seed=5)
    together = region_perturbation(model, x, heat, **run)
    for i in range(len(x)):
        alone = region_perturbation(model, x[i:i + 1], heat[i:i + 1], **run)
        np.testing.assert_allclose(alone.scores[0], together.scores[i], rtol=1e-5, atol=1e-5)
        assert alone.targets[0] == together.targets[i]
    backwards = region_perturbation(model, x[::-1], heat[::-1], **run)
    np.testing.assert_allclose(backwards.scores[::-1], together.scores, rtol=1e-5, atol=1e-5)


def test_determinism_under_a_seed():
    model = small_cnn()
    rng = np.random.default_rng(3)
    x = rng.random((3, 8, 8, 2)).astype("float32")
    heat = rng.normal(size=x.shape)
    run = dict(region_size=2, steps=6, fill="uniform")
    first = region_perturbation(model, x, heat, seed=7, **run)
    again = region_perturbation(model, x, heat, seed=7, **run)
    np.testing.assert_array_equal(first.scores, again.scores)
    assert first.aopc == again.aopc
    other = region_perturbation(model, x, heat, seed=8, **run)
    assert np.abs(other.scores[:, 1:] - first.scores[:, 1:]).max() > 1e-4
    np.testing.assert_array_equal(other.scores[:, 0], first.scores[:, 0])


def test_vector_inputs_are_one_dimensional_signals():
    w = np.arange(1, 7, dtype="float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[-1].set_weights([w[:, None]])
    x = np.ones((1, 6), "float32")
    result = region_perturbation(model, x, x * w, region_size=4, steps=2, fill="constant")
    np.testing.assert_allclose(result.scores, [[21, 10, 0]])   # regions [1..4] = 10, [5, 6] = 11


def test_bad_arguments():
    model = small_cnn()
    x = np.zeros((2, 8, 8, 2), "float32")
    heat = np.zeros_like(x)
    with pytest.raises(InvalidArgumentError, match=r"Expected finite numeric heatmaps.*"
                                                   r"Received: heatmaps of shape \(2, 8, 8\)"):
        region_perturbation(model, x, heat[..., 0])
    with pytest.raises(InvalidArgumentError, match="Expected finite"):
        region_perturbation(model, x, np.full_like(x, np.nan))
    with pytest.raises(InvalidArgumentError, match=r"Expected steps <= 4.*Received: steps=5"):
        region_perturbation(model, x, heat, region_size=4, steps=5)
    with pytest.raises(InvalidArgumentError, match="Received: order='most'"):
        region_perturbation(model, x, heat, steps=2, order="most")
    with pytest.raises(InvalidArgumentError, match="Received: fill='noise'"):
        region_perturbation(model, x, heat, steps=2, fill="noise")
    with pytest.raises(InvalidArgumentError, match="Received: value_range=\\(1.0, 0.0\\)"):
        region_perturbation(model, x, heat, steps=2, value_range=(1.0, 0.0))
    with pytest.raises(InvalidArgumentError, match="Received: region_size=0"):
        region_perturbation(model, x, heat, region_size=0)
    with pytest.raises(InvalidArgumentError, match="Received: seed=-1"):
        region_perturbation(model, x, heat, steps=2, seed=-1)
    with pytest.raises(InvalidArgumentError, match=r"class ids in \[0, 3\)"):
        region_perturbation(model, x, heat, steps=2, targets=np.array([0, 3]))
    with pytest.raises(InvalidArgumentError, match="x must be a batch"):
        region_perturbation(model, x[:, :4], heat[:, :4])
