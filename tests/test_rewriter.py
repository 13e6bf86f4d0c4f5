"""The rewriter on whole models: equivalences, conservation, layer coverage, untouched models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dtd

L = keras.layers


def _randomize(model, seed=0, scale=0.3, zero_bias=False):
    """Give every weight random values (BatchNorm: positive variance) so tests are not trivial."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1, scale, zero_bias)
            continue
        new = []
        for variable, value in zip(layer.weights, layer.get_weights()):
            if "variance" in variable.path:
                new.append(rng.uniform(0.5, 2.0, value.shape))
            elif zero_bias and variable.path.endswith("bias"):
                new.append(np.zeros(value.shape))
            else:
                new.append(rng.normal(0, scale, value.shape))
        layer.set_weights([v.astype("float32") for v in new])
    return model


def _logits(model, x):
    """Pre-softmax output of a model whose last layer is Dense(activation=...)."""
    head = model.layers[-1]
    return keras.Model(model.inputs[0], head.input)(x) @ head.kernel + (
        head.bias if head.use_bias else 0)


def _grad_times_input(model_logits, x, target):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        selected = tf.reduce_sum(model_logits(x) * tf.one_hot(target, 10), axis=-1)
    return (tape.gradient(selected, x) * x).numpy()


def _relu_cnn(use_bias=True):
    inputs = keras.Input((12, 12, 2))
    h = L.Conv2D(6, 3, padding="same", activation="relu", use_bias=use_bias)(inputs)
    h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(8, 3, strides=2, padding="valid", activation="relu", use_bias=use_bias)(h)
    h = L.Flatten()(h)
    h = L.Dense(16, activation="relu", use_bias=use_bias)(h)
    outputs = L.Dense(10, use_bias=use_bias)(h)
    return _randomize(keras.Model(inputs, outputs))


def _x(shape, seed=1, low=-1.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype("float32")


def test_lrp0_equals_gradient_times_input_on_relu_net():
    model = _relu_cnn(use_bias=True)
    x = _x((5, 12, 12, 2))
    target = np.argmax(model.predict(x, verbose=0), axis=-1)
    relevance = tf_dtd.explain(model, x, "lrp_z")
    expected = _grad_times_input(model, x, target)
    np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_conservation_of_deep_taylor_on_bias_free_relu_net():
    model = _relu_cnn(use_bias=False)
    x = _x((6, 12, 12, 2), low=0.0)
    relevance, logits = tf_dtd.relevance_model(
        model, input_range=(0.0, 1.0), return_prediction=True).predict(x, verbose=0)
    top = logits.max(axis=-1)
    assert np.all(top > 0)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), top, rtol=1e-4)
    assert relevance.min() >= 0


def test_batchnorm_is_folded_and_logits_unchanged():
    inputs = keras.Input((10, 10, 3))
    h = L.Conv2D(8, 3, use_bias=False)(inputs)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.BatchNormalization()(h)  # after a ReLU: cannot be folded, an affine layer of its own
    h = L.GlobalAveragePooling2D()(h)
    h = L.Dense(12)(h)
    h = L.BatchNormalization(center=False)(h)
    outputs = L.Dense(10, activation="softmax")(h)
    model = _randomize(keras.Model(inputs, outputs))
    x = _x((4, 10, 10, 3))
    rel_model = tf_dtd.relevance_model(model, "lrp_epsilon", return_prediction=True)
    relevance, logits = rel_model.predict(x, verbose=0)
    np.testing.assert_allclose(logits, _logits(model, x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(lay, L.BatchNormalization) for lay in rel_model.layers)
    scales = [lay for lay in rel_model.layers if isinstance(lay, tf_dtd.layers.ScaleRelevance)]
    assert len(scales) == 1, "the one after the ReLU stays; the two foldable ones are folded away"
    assert scales[0].rule == tf_dtd.rules.Epsilon()  # it takes the preset's rule
    assert np.all(np.isfinite(relevance))


def _dag(use_bias=False):
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=use_bias)(inputs)
    b = L.Conv2D(4, 1, activation="relu", use_bias=use_bias)(inputs)  # fan-out of the input
    c = L.Add()([a, b])
    d = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=use_bias)(c)
    e = L.Concatenate()([c, d, a])  # fan-out of a and c
    f = L.AveragePooling2D(2)(e)
    g = L.Concatenate(axis=1)([f, f])
    h = L.Flatten()(g)
    outputs = L.Dense(10, use_bias=use_bias)(h)
    return _randomize(keras.Model(inputs, outputs))


@pytest.mark.parametrize("rules", ["lrp_z", "deep_taylor_bounded"])
def test_dag_with_add_concatenate_and_fan_out_conserves(rules):
    model = _dag()
    x = _x((5, 8, 8, 3), low=0.0)
    relevance, logits = tf_dtd.relevance_model(
        model, rules, input_range=(0.0, 1.0), return_prediction=True).predict(x, verbose=0)
    top = logits.max(axis=-1)
    assert np.all(top > 0)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), top, rtol=1e-4)
    if rules == "lrp_z":  # LRP-0 = gradient×input holds through Add and Concatenate too
        expected = _grad_times_input(model, x, np.argmax(logits, -1))
        np.testing.assert_allclose(relevance, expected, rtol=1e-4,
                                   atol=1e-6 * np.abs(expected).max())


def test_nested_model_gives_the_flat_model_heatmap():
    flat = _relu_cnn()
    inner_seq = keras.Sequential([L.Input((6, 6, 6)), flat.layers[3], flat.layers[4]],
                                 name="inner_seq")
    mid_in = keras.Input((12, 12, 6))
    mid = keras.Model(mid_in, inner_seq(flat.layers[2](mid_in)), name="middle")
    inputs = keras.Input((12, 12, 2))
    h = mid(flat.layers[1](inputs))
    outputs = flat.layers[6](flat.layers[5](h))
    nested = keras.Model(inputs, outputs)
    x = _x((3, 12, 12, 2), low=0.0)
    np.testing.assert_allclose(nested.predict(x, verbose=0), flat.predict(x, verbose=0),
                               rtol=1e-6)
    for rules in ("deep_taylor_bounded", "lrp_epsilon"):
        expected = tf_dtd.explain(flat, x, rules, input_range=(0.0, 1.0))
        actual = tf_dtd.explain(nested, x, rules, input_range=(0.0, 1.0))
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9)


def test_batch_invariance_and_numpy_and_dataset_inputs():
    model = _dag(use_bias=True)
    x = _x((8, 8, 8, 3), low=0.0)
    rel_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
    whole = rel_model.predict(x, batch_size=8, verbose=0)
    singles = np.concatenate([rel_model.predict(x[i:i + 1], verbose=0) for i in range(8)])
    np.testing.assert_allclose(whole, singles, rtol=1e-5, atol=1e-7)
    shuffled = rel_model.predict(x[::-1], batch_size=3, verbose=0)[::-1]
    np.testing.assert_allclose(whole, shuffled, rtol=1e-5, atol=1e-7)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(5)
    np.testing.assert_allclose(rel_model.predict(dataset, verbose=0), whole, rtol=1e-5,
                               atol=1e-7)
    assert whole.dtype == np.float32 and whole.shape == x.shape


def test_users_model_is_untouched():
    model = _dag(use_bias=True)
    inner = keras.Sequential(
        [L.Input((10,)), L.Dense(5, activation="relu"), L.BatchNormalization()])
    outer_in = keras.Input((10,))
    outer = keras.Model(outer_in, L.Dense(3, activation="softmax")(inner(outer_in)))
    for m in (model, outer):
        before = [w.tobytes() for w in m.get_weights()]
        config = m.get_config()
        nodes = {id(lay): len(lay._inbound_nodes) for lay in m._flatten_layers()}
        attrs = {id(lay): (lay.trainable, lay.name, getattr(lay, "activation", None))
                 for lay in m._flatten_layers()}
        variables = [(v.path, v.trainable, v.dtype) for v in m.weights]
        trainable = len(m.trainable_weights)
        tf_dtd.relevance_model(m, "deep_taylor_bounded", input_range=(0.0, 1.0))
        tf_dtd.relevance_model(m, "lrp_z", target=1)
        assert [w.tobytes() for w in m.get_weights()] == before
        assert [(v.path, v.trainable, v.dtype) for v in m.weights] == variables
        assert len(m.trainable_weights) == trainable
        assert m.get_config() == config
        assert {id(lay): len(lay._inbound_nodes) for lay in m._flatten_layers()} == nodes
        assert {id(lay): (lay.trainable, lay.name, getattr(lay, "activation", None))
                for lay in m._flatten_layers()} == attrs


def test_relevance_weights_and_the_models_change_independently():
    """The relevance model's variables start from the model's values (on the device: a
    variable made from another's value shares its buffer until either is written), and a write
    to either leaves the other as it was."""
    model = _dag(use_bias=True)
    x = _x((4, 8, 8, 3), low=0.0)
    relevance_model = tf_dtd.relevance_model(model, "lrp_epsilon")
    before = relevance_model.predict(x, verbose=0)
    model_weights = [w.copy() for w in model.get_weights()]
    relevance_weights = [w.copy() for w in relevance_model.get_weights()]
    for variable in model.weights:
        variable.assign(variable * 2.0 + 1.0)
    np.testing.assert_array_equal(relevance_model.predict(x, verbose=0), before)
    for w, saved in zip(relevance_model.get_weights(), relevance_weights):
        np.testing.assert_array_equal(w, saved)
    for variable in relevance_model.weights:
        variable.assign(variable * 0.0)
    for w, saved in zip(model.get_weights(), model_weights):
        np.testing.assert_array_equal(w, saved * 2.0 + 1.0)


@pytest.mark.parametrize("head", ["fused", "activation", "softmax_layer"])
def test_final_softmax_is_stripped(head):
    inputs = keras.Input((6,))
    h = L.Dense(8, activation="relu")(inputs)
    if head == "fused":
        outputs = L.Dense(4, activation="softmax")(h)
    else:
        z = L.Dense(4)(h)
        outputs = L.Activation("softmax")(z) if head == "activation" else L.Softmax()(z)
    model = _randomize(keras.Model(inputs, outputs), zero_bias=True)
    x = _x((5, 6), low=0.0)
    relevance, logits = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True).predict(
        x, verbose=0)
    probabilities = model.predict(x, verbose=0)
    np.testing.assert_allclose(keras.ops.softmax(logits), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relevance.sum(-1), logits.max(-1), rtol=1e-4, atol=1e-6)


def test_target_int_and_input_select_the_class():
    model = _relu_cnn(use_bias=False)
    x = _x((4, 12, 12, 2), low=0.0)
    logits = _logits(model, x).numpy()
    classes = np.array([3, 0, 9, 3], dtype="int32")
    by_input = tf_dtd.relevance_model(model, "lrp_z", target="input").predict(
        [x, classes], verbose=0)
    np.testing.assert_allclose(by_input.sum(axis=(1, 2, 3)), logits[np.arange(4), classes],
                               rtol=1e-4, atol=1e-6)
    by_int = tf_dtd.relevance_model(model, "lrp_z", target=3).predict(x, verbose=0)
    np.testing.assert_allclose(by_int[[0, 3]], by_input[[0, 3]], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(tf_dtd.explain(model, x, "lrp_z", target=classes), by_input,
                               rtol=1e-5, atol=1e-8)


def _coverage_models():
    """Bias-free models that use every supported layer at least once."""
    one_d = keras.Input((16, 3))
    h = L.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False)(one_d)
    h = L.LeakyReLU(0.1)(h)
    h = L.MaxPooling1D(2, strides=1, padding="same")(h)
    h = L.Conv1D(4, 3, strides=2, padding="same", groups=2, activation="elu", use_bias=False)(h)
    h = L.ZeroPadding1D(1)(h)
    h = L.Cropping1D((0, 1))(h)
    h = L.AveragePooling1D(2)(h)
    h = L.Concatenate()([L.GlobalAveragePooling1D()(h), L.GlobalMaxPooling1D()(h)])
    one_d_out = L.Dense(10, use_bias=False)(L.Dropout(0.5)(h))

    two_d = keras.Input((10, 10, 2))
    h = L.ZeroPadding2D(((1, 0), (0, 1)))(two_d)
    h = L.Conv2D(6, 3, dilation_rate=2, activation="relu", use_bias=False)(h)
    h = L.SpatialDropout2D(0.3)(h)
    h = L.GaussianNoise(0.1)(h)
    h = L.Conv2D(6, 2, strides=2, groups=3, use_bias=False)(h)
    h = L.Activation("tanh")(h)
    h = L.Cropping2D(1)(h)
    h = L.Permute((2, 1, 3))(h)
    h = L.AveragePooling2D(2, padding="same")(h)
    h = L.GaussianDropout(0.2)(h)
    h = L.AlphaDropout(0.1)(h)
    h = L.Reshape((-1, 6))(h)
    h = L.Dense(5, activation="relu", use_bias=False)(h)  # Dense on a rank-3 tensor
    h = L.GlobalMaxPooling1D()(h)
    two_d_out = L.Dense(10, use_bias=False)(h)

    three_d = keras.Input((6, 6, 6, 1))
    h = L.Conv3D(3, 3, padding="same", activation="relu", use_bias=False)(three_d)
    h = L.ZeroPadding3D(1)(h)
    h = L.Cropping3D(1)(h)
    h = L.MaxPooling3D(2)(h)
    h = L.SpatialDropout3D(0.1)(h)
    h = L.AveragePooling3D(1)(h)
    h = L.SpatialDropout1D(0.1)(L.Reshape((27, 3))(h))
    h = L.ReLU()(h)
    h = L.Reshape((3, 3, 3, 3))(h)
    h = L.Concatenate(axis=2)([h, h])
    h = L.Concatenate()([L.GlobalMaxPooling3D()(h), L.GlobalAveragePooling3D()(h)])
    three_d_out = L.Dense(10, use_bias=False)(L.ELU()(h))
    return {
        "1d": keras.Model(one_d, one_d_out),
        "2d": keras.Model(two_d, two_d_out),
        "3d": keras.Model(three_d, three_d_out),
    }


@pytest.mark.parametrize("name", ["1d", "2d", "3d"])
def test_every_supported_layer_conserves_under_lrp0(name):
    model = _randomize(_coverage_models()[name], seed=3)
    x = _x((4,) + tuple(model.input_shape[1:]), seed=5, low=0.05)
    relevance, logits = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True).predict(
        x, verbose=0)
    np.testing.assert_allclose(logits, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    sums = relevance.reshape(len(x), -1).sum(-1)
    np.testing.assert_allclose(sums, logits.max(-1), rtol=1e-3, atol=1e-5)
    assert np.all(np.isfinite(relevance))


@pytest.mark.parametrize("pool", [L.MaxPooling2D(2, strides=1), L.GlobalMaxPooling2D()])
def test_max_pooling_ties_do_not_duplicate_relevance(pool):
    inputs = keras.Input((4, 4, 1))
    h = pool(inputs)
    outputs = L.Dense(1, use_bias=False, kernel_initializer="ones")(L.Flatten()(h))
    model = keras.Model(inputs, outputs)
    x = np.ones((2, 4, 4, 1), "float32")  # every pooling window is one big tie
    relevance, logits = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True).predict(
        x, verbose=0)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logits[:, 0], rtol=1e-6)
    assert relevance.min() >= 0


def test_channels_first_convolution_folds_and_matches_gradient_times_input():
    # TF runs channels-first 1-D/2-D convolutions on GPU only; 3-D ones also on CPU (via XLA).
    inputs = keras.Input((3, 6, 6, 6))
    h = L.Conv3D(4, 3, padding="same", data_format="channels_first", use_bias=False)(inputs)
    h = L.BatchNormalization(axis=1)(h)
    h = L.ReLU()(h)
    h = L.AveragePooling3D(2, data_format="channels_first")(h)
    model = _randomize(keras.Model(inputs, L.Dense(10)(L.Flatten()(h))))
    x = _x((3, 3, 6, 6, 6))
    rel_model = tf_dtd.relevance_model(model, "lrp_z", return_prediction=True)
    assert not any(isinstance(lay, L.BatchNormalization) for lay in rel_model.layers)
    relevance, logits = rel_model.predict(x, verbose=0)
    np.testing.assert_allclose(logits, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    expected = _grad_times_input(model, x, logits.argmax(-1))
    np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


def test_layer_names_never_collide_with_tf_dtd_names():
    inputs = keras.Input((4,), name="class_ids")
    h = L.Dense(3, name="relevance", activation="relu")(inputs)
    h = L.Dense(3, name="target_relevance", activation="relu")(h)
    h = L.Dense(3, name="relevance_relevance")(h)
    model = _randomize(keras.Model(inputs, L.Dense(2, name="relevance_sum")(h)))
    x = _x((3, 4))
    relevance = tf_dtd.relevance_model(model, "lrp_z", target="input").predict(
        [x, np.array([0, 1, 0])], verbose=0)
    assert relevance.shape == x.shape and np.abs(relevance).sum() > 0


def test_by_name_rules_use_the_users_layer_names_in_nested_models():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="relu", name="fc")],
                             name="inner")
    inputs = keras.Input((4,))
    h = L.Dense(4, activation="relu", name="fc")(inner(inputs))
    model = keras.Model(inputs, L.Dense(2, name="fc_1")(h))
    composite = tf_dtd.Composite(default=tf_dtd.rules.ZPlus(),
                                 by_name={"fc_1": tf_dtd.rules.Epsilon(0.5)})
    rel_model = tf_dtd.relevance_model(model, composite)
    by_layer = {lay.name: lay.rule for lay in rel_model.layers
                if isinstance(lay, tf_dtd.layers.KernelRelevance)}
    epsilon_layers = [name for name, rule in by_layer.items() if rule == tf_dtd.rules.Epsilon(0.5)]
    assert len(by_layer) == 3 and len(epsilon_layers) == 1
    # the user's fc_1 is the output layer, the one the target relevance enters first
    head = [lay for lay in rel_model.layers if lay.name in epsilon_layers][0]
    assert head.weight_shapes["kernel"] == (4, 2)


@pytest.mark.parametrize("policy", ["mixed_float16", "float64"])
def test_models_in_other_precisions(policy, tmp_path):
    try:
        keras.config.set_dtype_policy(policy)
        inputs = keras.Input((6, 6, 2))
        h = L.Conv2D(3, 3, padding="same", activation="relu")(inputs)
        h = L.Add()([L.MaxPooling2D(2)(h), L.AveragePooling2D(2)(h)])
        h = L.BatchNormalization()(L.ReLU()(h))
        model = keras.Model(inputs, L.Dense(4, activation="softmax", dtype="float32")(
            L.Flatten()(h)))
        path = str(tmp_path / "model.keras")
        model.save(path)
    finally:
        keras.config.set_dtype_policy("float32")
    x = _x((3, 6, 6, 2), low=0.0)
    for candidate in (model, keras.models.load_model(path)):  # as trained, and reloaded in float32
        relevance, logits = tf_dtd.relevance_model(
            candidate, "lrp_epsilon", return_prediction=True).predict(x, verbose=0)
        assert relevance.dtype == np.float32 and np.all(np.isfinite(relevance))
        assert np.abs(relevance).sum() > 0
        np.testing.assert_allclose(keras.ops.softmax(logits), model.predict(x, verbose=0),
                                   rtol=1e-2, atol=1e-3)


def test_relevance_is_float32_under_a_global_mixed_precision_policy():
    try:
        keras.config.set_dtype_policy("mixed_float16")
        inputs = keras.Input((8, 8, 2))
        h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=False)(inputs)
        h = L.Add()([L.MaxPooling2D(2)(h), L.AveragePooling2D(2)(h)])
        h = L.Conv2D(4, 3, padding="same", activation="relu", use_bias=False)(h)
        model = keras.Model(inputs, L.Dense(3, use_bias=False, dtype="float32")(
            L.GlobalAveragePooling2D()(h)))
        _randomize(model, seed=4)
        rel_model = tf_dtd.relevance_model(model, "deep_taylor", return_prediction=True)
        x = _x((4, 8, 8, 2), low=0.0)
        relevance, logits = rel_model.predict(x, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    ours = [lay for lay in rel_model.layers if "Relevance" in type(lay).__name__]
    # kernel layers compute their forward map as trained (the convolutions in float16, the
    # float32 Dense in float32) and their relevance in float32
    kernels = {type(lay).__name__: lay.compute_dtype for lay in ours
               if isinstance(lay, tf_dtd.layers.KernelRelevance)}
    assert kernels == {"ConvRelevance": "float16", "DenseRelevance": "float32"}, kernels
    assert all(getattr(lay, "relevance_dtype", lay.compute_dtype) == "float32" for lay in ours)
    assert relevance.dtype == np.float32 and relevance.min() >= 0
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logits.max(-1), rtol=1e-4)
