"""Fixtures shared by the test files: the shipped digits model and its relevance model.

A test file may define a fixture of the same name for its own model; pytest then uses that one.
Both are built once per test session and must not be changed by a test (copy them instead).
"""

import pytest

import tf_dtd
from tf_dtd import digits


@pytest.fixture(scope="session")
def model():
    """The shipped digits model (``tf_dtd.digits.load_model()``)."""
    return digits.load_model()


@pytest.fixture(scope="session")
def relevance_model(model):
    """Its ``deep_taylor_bounded`` relevance model on the box of its inputs, ``[0, 1]``."""
    return tf_dtd.relevance_model(model, input_range=digits.INPUT_RANGE)
