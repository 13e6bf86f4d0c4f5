"""Bad input gives a clear error or a warning — never a silent wrong or all-zero heatmap.

Documented behaviour (docs/api.md, "Bad input"): ``explain`` checks NumPy batches (numeric, the
model's sample shape), returns empty results for an empty batch and warns about inputs outside
the z^B box; class ids given at predict time (``target="input"``) must be in range: an Assert
raises, and under XLA (which drops asserts) the bad sample's heatmap is NaN.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_dtd

L = keras.layers


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6, 6, 2))
    h = L.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, L.Dense(4)(L.Flatten()(h)))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (3, 6, 6, 2)).astype("float32")


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((3, 6, 6)), "shape (3, 6, 6)"),            # wrong rank
    (np.zeros((3, 6, 5, 2)), "shape (3, 6, 5, 2)"),      # wrong size
    (np.zeros((6, 6, 2)), "shape (6, 6, 2)"),            # one sample without the batch axis
    (np.full((3, 6, 6, 2), "a"), "dtype <U1"),           # not numbers
])
def test_explain_rejects_batches_of_the_wrong_rank_shape_or_dtype(model, bad, fragment):
    with pytest.raises(tf_dtd.InvalidArgumentError, match="x must") as error:
        tf_dtd.explain(model, bad, input_range=(0.0, 1.0))
    assert fragment in str(error.value)


def test_predict_with_the_wrong_shape_raises(model):
    relevance_model = tf_dtd.relevance_model(model, input_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"expected shape=\(None, 6, 6, 2\), "
                                         r"found shape=\(2, 6, 5, 2\)"):
        relevance_model.predict(np.zeros((2, 6, 5, 2)), verbose=0)


def test_integer_inputs_are_accepted_as_numbers(model, x):
    pixels = np.round(x * 4).astype("int64")
    expected = tf_dtd.explain(model, pixels.astype("float32"), input_range=(0.0, 4.0))
    np.testing.assert_array_equal(tf_dtd.explain(model, pixels, input_range=(0.0, 4.0)),
                                  expected)


def test_empty_batch_gives_empty_results(model):
    empty = np.zeros((0, 6, 6, 2), "float32")
    relevance = tf_dtd.explain(model, empty, input_range=(0.0, 1.0))
    assert relevance.shape == (0, 6, 6, 2) and relevance.dtype == np.float32
    relevance, logits = tf_dtd.explain(model, empty, input_range=(0.0, 1.0),
                                       target=np.zeros(0, "int64"), return_prediction=True)
    assert relevance.shape == (0, 6, 6, 2) and logits.shape == (0, 4)


@pytest.mark.parametrize("ids", [[0, 4, 1], [0, -1, 2]], ids=["too_large", "negative"])
def test_class_ids_out_of_range_fail_at_predict_time(model, x, ids):
    relevance_model = tf_dtd.relevance_model(model, "lrp_z", target="input")
    with pytest.raises(tf.errors.InvalidArgumentError, match="class ids must lie in"):
        relevance_model.predict([x, np.array(ids)], verbose=0)

    relevance_model.compile(jit_compile=True)  # XLA drops asserts: the bad sample is NaN
    relevance = relevance_model.predict([x, np.array(ids)], verbose=0)
    assert np.all(np.isnan(relevance[1]))
    good = relevance_model.predict([x[[0, 2]], np.array(ids)[[0, 2]]], verbose=0)
    np.testing.assert_allclose(relevance[[0, 2]], good, rtol=1e-6, atol=1e-7)


def test_class_ids_of_the_wrong_length_or_dtype_are_errors(model, x):
    relevance_model = tf_dtd.relevance_model(model, "lrp_z", target="input")
    with pytest.raises(ValueError, match="Data cardinality is ambiguous"):
        relevance_model.predict([x, np.array([0, 1])], verbose=0)
    with pytest.raises(tf_dtd.InvalidArgumentError, match="one class id per sample"):
        tf_dtd.explain(model, x, "lrp_z", target=np.array([0, 1]))
    with pytest.raises(tf_dtd.InvalidArgumentError, match="dtype float64"):
        tf_dtd.explain(model, x, "lrp_z", target=np.array([0.0, 1.0, 2.0]))


def test_inputs_outside_the_box_warn(model, x):
    with pytest.warns(tf_dtd.InputRangeWarning, match="1 of 3 samples"):
        tf_dtd.explain(model, np.concatenate([x[:2], x[2:] + 1.5]), input_range=(0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tf_dtd.InputRangeWarning)
        tf_dtd.explain(model, x, input_range=(0.0, 1.0))
        tf_dtd.explain(model, x + 5, "lrp_z")  # no box: nothing to warn about
