"""A relevance model traced for one batch size holds no constant as large as the batch.

With the batch size known when a function is traced (the first ``predict`` call, a SavedModel
signature of fixed batch), TensorFlow's graph optimiser (Grappler) turns every op whose value
follows from shapes alone (``zeros_like``, ``ones_like``, a scalar broadcast to a tensor's
shape) into a constant, and the function holds that constant for as long as it lives: ResNet50
under deep_taylor_bounded, traced for batch 32, held 870 MB between calls that way. One test
runs Grappler on the traced graph and looks for constants of the batch's size; the other
measures, in a fresh process with TensorFlow's allocator statistics, what a relevance model
holds after its first call (at run time Grappler sees more shapes than in the first test).
"""

import json
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.grappler import tf_optimizer

import tf_dtd

L = keras.layers
BATCH = 7  # a size no layer of the model has


def _model():
    """Pixels, ZeroPadding and a strided convolution, a folded BatchNorm, a padded overlapping
    max-pooling, a depthwise convolution, a residual Add, average pooling and a Dense head."""
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 3))
    h = L.ZeroPadding2D(1)(x)
    h = L.Conv2D(6, 3, strides=2)(h)
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    h = L.MaxPooling2D(3, strides=1, padding="same")(h)
    branch = L.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    branch = L.Conv2D(6, 1)(branch)
    h = L.ReLU()(L.Add()([h, branch]))
    h = L.AveragePooling2D(2)(h)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(4)(h))


def _batch_sized_constants(relevance_model):
    """``(name, shape)`` of every constant with the batch's size in the optimised graph of
    ``relevance_model`` traced for ``BATCH`` samples."""
    function = tf.function(lambda x: relevance_model(x, training=False))
    concrete = function.get_concrete_function(
        tf.TensorSpec((BATCH, *relevance_model.input_shape[1:]), tf.float32))
    graph = concrete.graph
    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    meta_graph.collection_def["train_op"].node_list.value.extend(
        [tensor.op.name for tensor in concrete.outputs])
    optimized = tf_optimizer.OptimizeGraph(config_pb2.ConfigProto(), meta_graph)
    nodes = list(optimized.node) + [node for function_def in optimized.library.function
                                    for node in function_def.node_def]
    found = []
    for node in nodes:
        if node.op == "Const":
            shape = [dim.size for dim in node.attr["value"].tensor.tensor_shape.dim]
            if BATCH in shape:
                found.append((node.name, shape))
    return found


@pytest.mark.parametrize("preset", ["deep_taylor_bounded", "lrp_epsilon", "lrp_epsilon_plus",
                                    "lrp_epsilon_gamma_box"])
def test_no_constant_grows_with_the_batch(preset):
    relevance_model = tf_dtd.relevance_model(_model(), preset, input_range=(0.0, 1.0))
    assert _batch_sized_constants(relevance_model) == []


def test_the_check_sees_batch_sized_constants():
    """The scan finds what it looks for: a zeros_like the batch size lets Grappler fold."""
    x = keras.Input((5,))
    zeros = L.Lambda(lambda t: keras.ops.zeros_like(t) + keras.ops.ones_like(t))(x)
    model = keras.Model(x, L.Multiply()([x, zeros]))
    found = _batch_sized_constants(model)
    assert found and all(shape == [BATCH, 5] for _, shape in found)
    np.testing.assert_array_equal(model.predict_on_batch(np.ones((BATCH, 5), "float32")), 1.0)


HELD = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "1"  # makes get_memory_info work on CPU
    import numpy as np
    import tensorflow as tf
    import tf_dtd
    sys.path.insert(0, sys.argv[1])
    from test_graph_constants import _model

    held = {}
    x = np.random.default_rng(0).uniform(0, 1, (256, 12, 12, 3)).astype("float32")
    for preset in sys.argv[2:]:
        relevance_model = tf_dtd.relevance_model(_model(), preset, input_range=(0.0, 1.0))
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        relevance_model.predict_on_batch(x)  # traced for batch 256
        relevance_model.predict_on_batch(x)
        held[preset] = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    print(json.dumps(held))
""")


def test_first_call_leaves_no_batch_sized_memory_behind():
    """After two calls at batch 256, what the process holds grew by less than the input batch
    (442 KiB): the constants of the batch's shape (deep_taylor_bounded's spreads, ε⁺'s) held
    700–760 KiB here before."""
    presets = ["deep_taylor_bounded", "lrp_epsilon", "lrp_epsilon_plus", "lrp_epsilon_gamma_box"]
    done = subprocess.run([sys.executable, "-c", HELD, str(pathlib.Path(__file__).parent),
                           *presets], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    held = json.loads(done.stdout.strip().splitlines()[-1])
    batch_bytes = 256 * 12 * 12 * 3 * 4
    assert all(bytes_ < batch_bytes for bytes_ in held.values()), held
