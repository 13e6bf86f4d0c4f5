"""Saving, exporting and compiling the relevance model."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tf_dtd

L = keras.layers


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((9, 9, 2), name="image")
    a = L.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    b = L.BatchNormalization()(L.Conv2D(6, 3, padding="same", use_bias=False)(inputs))
    h = L.Add()([a, L.ReLU()(b)])
    h = L.MaxPooling2D(2)(h)
    h = L.Concatenate()([L.GlobalAveragePooling2D()(h), L.Flatten()(h)])
    outputs = L.Dense(5, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([np.full(6, 1.5), np.full(6, 0.1), np.linspace(-0.2, 0.2, 6),
                               np.linspace(0.5, 2.0, 6)])
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (6, 9, 9, 2)).astype("float32")


def test_keras_file_round_trip(model, x, tmp_path):
    rel_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0), target="input",
                                       return_prediction=True)
    classes = np.array([0, 1, 2, 3, 4, 0], "int32")
    expected = rel_model.predict([x, classes], verbose=0)
    path = str(tmp_path / "relevance.keras")
    rel_model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    actual = loaded.predict([x, classes], verbose=0)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)
    assert np.abs(expected[0]).sum() > 0


def test_savedmodel_serves_without_tf_dtd(model, x, tmp_path):
    rel_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
    expected = rel_model.predict(x, verbose=0)
    export_dir = str(tmp_path / "savedmodel")
    rel_model.export(export_dir, verbose=False)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({export_dir!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        assert sorted(loaded.signatures) == ["serve", "serving_default"], list(loaded.signatures)
        first = loaded.serve(x[:4]).numpy()
        rest = loaded.serve(x[4:]).numpy()   # another batch size: dynamic batch dimension
        served = loaded.signatures["serving_default"](tf.constant(x))
        assert "tf_dtd" not in sys.modules
        np.save({str(tmp_path / 'out.npy')!r}, np.concatenate([first, rest]))
        np.save({str(tmp_path / 'sig.npy')!r}, list(served.values())[0].numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.load(tmp_path / "sig.npy"), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rules", ["deep_taylor_bounded", "lrp_epsilon", "deep_taylor_unbounded"])
def test_xla_compiled_relevance_matches(model, x, rules):
    plain = tf_dtd.relevance_model(model, rules, input_range=(0.0, 1.0))
    compiled = tf_dtd.relevance_model(model, rules, input_range=(0.0, 1.0))
    compiled.compile(jit_compile=True)
    expected = plain.predict(x, verbose=0)
    actual = compiled.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert np.abs(expected).max() > 0


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_explains_models_loaded_from_files(model, x, tmp_path, suffix):
    path = str(tmp_path / f"classifier{suffix}")
    model.save(path)
    loaded = keras.models.load_model(path)
    expected = tf_dtd.explain(model, x, input_range=(0.0, 1.0))
    actual = tf_dtd.explain(loaded, x, input_range=(0.0, 1.0))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9)
    assert np.abs(actual).sum() > 0


def _modern_model():
    """Every relevance layer kind the architectures need, in one small model."""
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    keras.utils.set_random_seed(11)
    inputs = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(h)))
    gate = L.Dense(4, activation="sigmoid")(L.GlobalAveragePooling2D()(h))
    h = L.Multiply()([h, L.Reshape((1, 1, 4))(gate)])
    h = L.SeparableConv2D(6, 3, activation="swish")(h)
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same")(h)
    h = L.UpSampling2D(interpolation="bilinear")(L.MaxPooling2D(2)(h))
    h = L.LayerNormalization()(h)
    h = CustomScaleLayer(0.2)([h, L.Conv2D(4, 1)(h)])
    h = L.Subtract()([h, L.Maximum()([h, h * 0.5])])
    outputs = L.Dense(3)(L.Flatten()(L.Average()([h, L.Conv2D(4, 1)(h)])))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("multiply", ["gate", "split"])
def test_modern_layers_save_export_and_compile(tmp_path, multiply):
    model = _modern_model()
    x = np.random.default_rng(1).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    composite = tf_dtd.Composite(default=tf_dtd.rules.Epsilon(1e-3),
                                 first=tf_dtd.rules.ZBox(0.0, 1.0), multiply=multiply)
    rel_model = tf_dtd.relevance_model(model, composite)
    expected = rel_model.predict(x, verbose=0)
    assert np.all(np.isfinite(expected)) and np.abs(expected).max() > 0

    rel_model.save(tmp_path / "relevance.keras")
    loaded = keras.models.load_model(tmp_path / "relevance.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)

    if multiply == "gate":
        return  # the split model (its gate branch carries relevance) covers XLA and export
    compiled = tf_dtd.relevance_model(model, composite)
    compiled.compile(jit_compile=True)
    np.testing.assert_allclose(compiled.predict(x, verbose=0), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())

    rel_model.export(str(tmp_path / "savedmodel"), verbose=False)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / 'savedmodel')!r})
        np.save({str(tmp_path / 'out.npy')!r}, loaded.serve(np.load({str(tmp_path / 'x.npy')!r})))
        assert "tf_dtd" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5,
                               atol=1e-7 * np.abs(expected).max())
