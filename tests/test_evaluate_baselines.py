"""tf_dtd.evaluate.baselines: gradients, IG, occlusion and the logit model, against hand cases."""

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.evaluate import baselines


def relu_mlp(softmax=True):
    """Dense(2, relu) → Dense(2[, softmax]) with hand-picked weights on 3 inputs."""
    model = keras.Sequential([
        keras.Input((3,)), keras.layers.Dense(2, activation="relu"),
        keras.layers.Dense(2, activation="softmax" if softmax else None)])
    w1 = np.array([[1.0, -1.0], [2.0, 0.5], [-1.0, 1.0]], "float32")
    b1 = np.array([0.5, -0.25], "float32")
    w2 = np.array([[1.0, -2.0], [3.0, 1.0]], "float32")
    b2 = np.array([0.1, 0.2], "float32")
    model.layers[0].set_weights([w1, b1])
    model.layers[1].set_weights([w2, b2])
    return model, (w1, b1, w2, b2)


def relu_cnn(seed=0, bias=True):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, activation="relu", use_bias=bias),
        keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(6, activation="relu", use_bias=bias),
        keras.layers.Dense(3, activation="softmax", use_bias=bias)])


def test_gradient_and_gradient_times_input_by_hand():
    model, (w1, b1, w2, b2) = relu_mlp()
    x = np.array([[1.0, 0.5, 0.25], [-1.0, 0.2, 2.0]], "float32")
    targets = np.array([0, 1])
    hidden = x @ w1 + b1
    expected = np.stack([w1 @ ((hidden[n] > 0) * w2[:, t]) for n, t in enumerate(targets)])
    np.testing.assert_allclose(baselines.gradient(model, x, targets), expected, rtol=1e-6)
    np.testing.assert_allclose(baselines.gradient_times_input(model, x, targets), x * expected,
                               rtol=1e-6)
    logits = np.maximum(hidden, 0) @ w2 + b2
    np.testing.assert_allclose(baselines.predict_logits(model, x), logits, rtol=1e-6)


def test_gradient_times_input_is_lrp_0_on_a_bias_free_relu_net():
    model = relu_cnn(bias=False)
    x = np.random.default_rng(0).random((4, 6, 6, 2)).astype("float32")
    targets = np.array([0, 1, 2, 1])
    expected = tf_dtd.explain(model, x, "lrp_z", target=targets)
    np.testing.assert_allclose(baselines.gradient_times_input(model, x, targets), expected,
                               atol=1e-6)
    np.testing.assert_allclose(baselines.lrp("lrp_z")(model, x, targets), expected)


def test_integrated_gradients_completeness_on_a_relu_net():
    model = relu_cnn(seed=1)
    rng = np.random.default_rng(1)
    x = rng.random((3, 6, 6, 2)).astype("float32")
    targets = baselines.predict_logits(model, x).argmax(axis=1)
    rows = np.arange(len(x))
    for baseline in (0.0, np.full((1, 1, 2), 0.5, "float32")):
        ig = baselines.integrated_gradients(steps=64, baseline=baseline)(model, x, targets)
        start = baselines.predict_logits(model, np.broadcast_to(baseline, x.shape).copy())
        delta = baselines.predict_logits(model, x)[rows, targets] - start[rows, targets]
        np.testing.assert_allclose(ig.reshape(3, -1).sum(axis=1), delta, rtol=0.01)
        assert np.all(np.abs(delta) > 1e-3)


def test_integrated_gradients_is_gradient_times_input_on_a_linear_model():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    x = np.random.default_rng(2).normal(size=(5, 4, 4, 1)).astype("float32")
    targets = np.array([0, 1, 2, 0, 1])
    ig = baselines.integrated_gradients(steps=8, batch_size=16)(model, x, targets)  # 2 chunks
    np.testing.assert_allclose(ig, baselines.gradient_times_input(model, x, targets),
                               rtol=1e-6, atol=1e-7)


def test_occlusion_on_linear_models():
    w = np.arange(16, dtype="float32").reshape(4, 4, 1) / 10
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.layers[-1].set_weights([w.reshape(16, 1), np.array([0.3], "float32")])
    x = np.random.default_rng(3).random((2, 4, 4, 1)).astype("float32")
    heat = baselines.occlusion(patch=2)(model, x, np.zeros(2, int))
    contribution = x * w
    for n in range(2):   # each 2×2 patch: its drop Σ w·x spread evenly over its 4 pixels
        for i in (0, 2):
            for j in (0, 2):
                drop = contribution[n, i:i + 2, j:j + 2].sum()
                np.testing.assert_allclose(heat[n, i:i + 2, j:j + 2], drop / 4, rtol=1e-5)
    # Overlapping patches on a 1-D signal x = [1, 2, 3, 4], f = Σx: drops 3, 5, 7 for patches
    # [0, 1], [1, 2], [2, 3], spread as 1.5, 2.5, 3.5; a pixel takes the mean over its patches.
    line = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    line.layers[-1].set_weights([np.ones((4, 1), "float32")])
    heat = baselines.occlusion(patch=2, stride=1)(line, np.array([[1, 2, 3, 4]], "float32"),
                                                  np.array([0]))
    np.testing.assert_allclose(heat, [[1.5, 2.0, 3.0, 3.5]])


def test_occlusion_chunks_and_borders_are_batch_invariant():
    model = relu_cnn(seed=3)
    x = np.random.default_rng(4).random((3, 6, 6, 2)).astype("float32")
    targets = np.array([2, 0, 1])
    explainer = baselines.occlusion(patch=4, stride=3, fill=0.5, batch_size=8)  # last patch at 2
    together = explainer(model, x, targets)
    alone = np.concatenate([explainer(model, x[i:i + 1], targets[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert np.all(together != 0)


def test_logit_model_strips_softmax_and_sigmoid_heads():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    logits_layer = keras.layers.Dense(3)
    logits = logits_layer(hidden)
    x = np.random.default_rng(5).normal(size=(4, 5)).astype("float32")
    reference = keras.Model(inputs, logits).predict(x, verbose=0)
    heads = {
        "activation": keras.layers.Activation("softmax")(logits),
        "softmax_layer": keras.layers.Softmax()(logits),
    }
    for name, output in heads.items():
        model = keras.Model(inputs, output, name=name)
        np.testing.assert_allclose(baselines.logit_model(model).predict(x, verbose=0),
                                   reference, rtol=1e-6, err_msg=name)
    for activation in ("softmax", "sigmoid"):
        fused = keras.layers.Dense(3, activation=activation, name="head")
        model = keras.Model(inputs, fused(hidden))
        fused.set_weights(logits_layer.get_weights())
        before = model.predict(x, verbose=0)
        stripped = baselines.logit_model(model)
        np.testing.assert_allclose(stripped.predict(x, verbose=0), reference, rtol=1e-6)
        assert stripped.layers[-1].name == "head"
        # The user's model is untouched: same activation, same predictions.
        assert fused.get_config()["activation"] == activation
        np.testing.assert_allclose(model.predict(x, verbose=0), before)
    linear = keras.Model(inputs, logits)
    assert baselines.logit_model(linear) is linear
    relu_head = keras.Model(inputs, keras.layers.Dense(3, activation="relu")(hidden))
    assert baselines.logit_model(relu_head) is relu_head


def test_logit_model_of_sequential_and_nested_models():
    model, (w1, b1, w2, b2) = relu_mlp()
    x = np.array([[1.0, 0.5, 0.25]], "float32")
    expected = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(baselines.logit_model(model).predict(x, verbose=0), expected,
                               rtol=1e-6)
    inputs = keras.Input((3,))
    nested = keras.Model(inputs, model(inputs))
    np.testing.assert_allclose(baselines.logit_model(nested).predict(x, verbose=0), expected,
                               rtol=1e-6)
    plain, _ = relu_mlp(softmax=False)
    wrapper = keras.Model(inputs, plain(inputs))
    assert baselines.logit_model(wrapper) is wrapper


def test_random_baseline_is_seeded_per_sample():
    model = relu_cnn()
    x = np.random.default_rng(6).random((3, 6, 6, 2)).astype("float32")
    targets = np.zeros(3, int)
    first = baselines.random_baseline(seed=1)(model, x, targets)
    assert first.shape == x.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() < 1
    np.testing.assert_array_equal(first, baselines.random_baseline(seed=1)(model, x, targets))
    np.testing.assert_array_equal(first[1:2], baselines.random_baseline(1)(model, x[1:2],
                                                                            targets[1:2]))
    assert not np.allclose(first, baselines.random_baseline(seed=2)(model, x, targets))
    assert not np.allclose(first[0], first[1])


def test_bad_targets_and_arguments():
    model = relu_cnn()
    x = np.zeros((2, 6, 6, 2), "float32")
    with pytest.raises(InvalidArgumentError, match=r"1-D integer array of 2 class ids.*"
                                                   r"Received: targets of dtype int64 and shape"
                                                   r" \(3,\)"):
        baselines.gradient(model, x, np.array([0, 1, 2]))
    with pytest.raises(InvalidArgumentError, match="Received: targets of dtype float"):
        baselines.gradient(model, x, np.array([0.0, 1.0]))
    with pytest.raises(InvalidArgumentError, match=r"class ids in \[0, 3\).*from 0 to 3"):
        baselines.gradient_times_input(model, x, np.array([0, 3]))
    with pytest.raises(InvalidArgumentError, match="Received: steps=0"):
        baselines.integrated_gradients(steps=0)
    with pytest.raises(InvalidArgumentError, match="Received: patch=0"):
        baselines.occlusion(patch=0)
    with pytest.raises(InvalidArgumentError, match="baseline that broadcasts"):
        baselines.integrated_gradients(baseline=np.zeros(5))(model, x, np.array([0, 1]))
    with pytest.raises(InvalidArgumentError, match="x must be a batch"):
        baselines.gradient(model, x[:, :3], np.array([0, 1]))
