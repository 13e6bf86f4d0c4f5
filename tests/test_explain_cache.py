"""``tf_dtd.explain`` in a loop: one relevance model per (model, rules, box, target), reused
without retracing, following the model's weights, and never keeping a deleted model alive."""

import gc
import logging
import subprocess
import sys
import warnings
import weakref

import keras
import numpy as np
import pytest

import tf_dtd
from tf_dtd.relevance import api

L = keras.layers


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = L.Conv2D(3, 3, activation="relu")(inputs)
    return keras.Model(inputs, L.Dense(4)(L.Flatten()(h)))


def test_explain_in_a_loop_reuses_one_traced_relevance_model():
    model = _model()
    x = np.random.default_rng(0).uniform(0, 1, (10, 6, 6, 1)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retracing warning would fail here
        first = tf_dtd.explain(model, x, input_range=(0.0, 1.0), batch_size=4)
        (relevance_model, _), = api._EXPLAIN_CACHE[model].values()
        traces = relevance_model.predict_function.experimental_get_tracing_count()
        for size in (10, 7, 10, 3, 10):  # other lengths: a partial last batch each time
            again = tf_dtd.explain(model, x[:size], input_range=(0.0, 1.0), batch_size=4)
            np.testing.assert_array_equal(again, first[:size])
    assert len(api._EXPLAIN_CACHE[model]) == 1
    (cached, _), = api._EXPLAIN_CACHE[model].values()
    assert cached is relevance_model
    assert relevance_model.predict_function.experimental_get_tracing_count() == traces

    # Other rules or another box: another relevance model; the first stays cached.
    tf_dtd.explain(model, x, "lrp_epsilon")
    tf_dtd.explain(model, x, input_range=(-1.0, 1.0))
    assert len(api._EXPLAIN_CACHE[model]) == 3


def test_explain_follows_the_models_current_weights():
    model, other = _model(0), _model(1)
    x = np.random.default_rng(1).uniform(0, 1, (4, 6, 6, 1)).astype("float32")
    before = tf_dtd.explain(model, x, "lrp_epsilon")
    model.set_weights(other.get_weights())
    after = tf_dtd.explain(model, x, "lrp_epsilon")
    np.testing.assert_allclose(after, tf_dtd.explain(other, x, "lrp_epsilon"), rtol=1e-5,
                               atol=1e-7)
    assert np.abs(after - before).max() > 1e-3


def test_a_deleted_model_is_not_kept_alive():
    model = _model()
    # TensorFlow may log a retracing warning here (many models in one test process); pytest
    # keeps log records, and their arguments would keep the relevance model alive.
    tensorflow_logger = logging.getLogger("tensorflow")
    tensorflow_logger.disabled = True
    try:
        tf_dtd.explain(model, np.zeros((2, 6, 6, 1), "float32"), input_range=(0.0, 1.0))
    finally:
        tensorflow_logger.disabled = False
    alive = weakref.ref(model)
    relevance_model = weakref.ref(next(iter(api._EXPLAIN_CACHE[model].values()))[0])
    del model
    gc.collect()
    assert alive() is None
    gc.collect()  # the model's finalizer released its relevance models in the first collection
    assert relevance_model() is None


RETRACING_SCRIPT = """
import logging, sys
import keras, numpy as np, tf_dtd

messages = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: messages.append(record.getMessage())
logging.getLogger("tensorflow").addHandler(handler)
keras.utils.set_random_seed(2)
inputs = keras.Input((6, 6, 1))
h = keras.layers.Conv2D(3, 3, activation="relu")(inputs)
model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(h)))
x = np.random.default_rng(2).uniform(0, 1, (3, 6, 6, 1)).astype("float32")
if sys.argv[1] == "explain":
    for name in sorted(tf_dtd.PRESETS):
        tf_dtd.explain(model, x, name, input_range=(0.0, 1.0))
else:  # the same pattern without explain: a new model traced each time
    for _ in range(len(tf_dtd.PRESETS)):
        keras.Model(model.inputs, model.outputs).predict(x, verbose=0)
print(sum("triggered tf.function retracing" in m for m in messages))
"""


@pytest.mark.parametrize("loop, warnings_expected", [("explain", False), ("predict", True)])
def test_explaining_with_every_preset_reports_no_retracing(loop, warnings_expected):
    # Each preset is a new relevance model, traced once. TensorFlow counts traces per Python
    # function (every Keras predict function is one closure) and calls the sixth "retracing";
    # it warns at most twice per process, hence a fresh process per case.
    result = subprocess.run([sys.executable, "-c", RETRACING_SCRIPT, loop], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (int(result.stdout.split()[-1]) > 0) == warnings_expected
