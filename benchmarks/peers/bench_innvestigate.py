"""iNNvestigate 2.1.2 (TF 2.14) against its own TF gradient×input, measured like tf_dtd.

    /work/peers/innvestigate/bin/python -m benchmarks.peers.bench_innvestigate \\
        [--models VGG16 ResNet50 MobileNetV2] [--batch 1 8 32] [--methods deep_taylor.bounded]
        [--baseline function|input_t_gradient] [--size 224] [--repeats 15] [--min-seconds 20]
        [--threads N] [--json benchmarks/results/innvestigate.json]

Run from the repository root in the virtualenv of README.md. iNNvestigate 2 runs TF in graph
mode (``tf.compat.v1.disable_eager_execution()``, as its documentation requires). The models
are ``tf.keras.applications`` (Keras 2.14) with ``weights=None``, ``classes=10``,
``classifier_activation=None`` and raw pixels in ``[0, 255]``; their BatchNorm statistics stay
at the defaults (graph mode offers no cheap calibration pass; TF flushes denormals on CPU, so
the tiny activations of a deep random network cost no time). What is timed, the same target on
both sides (the top logit of each sample, the same numpy batch in, a numpy array out):

- relevance: ``analyzer.analyze(x)`` of ``innvestigate.create_analyzer(method, model, ...)``
  (``neuron_selection_mode="max_activation"``; ``deep_taylor.bounded`` with low=0, high=255),
  which runs the analyzer's Keras model with ``predict_on_batch``;
- baseline ``function`` (default): one graph-mode Keras backend function computing
  ``tf.gradients(max logit, x) * x`` — TF 2.14's plain gradient×input, on the same model
  (graph mode: the analyzer builds its own graph, so unlike the other benchmarks no second
  instance is built); ``input_t_gradient``: iNNvestigate's InputTimesGradient analyzer instead.

No ``--jit`` and CPU only.
"""

import os

from benchmarks import harness, protocol

__all__ = ["ADAPTER", "main"]

PIXEL_RANGE = (0.0, 255.0)
DEFAULT_JSON = os.path.join(protocol.REPO_ROOT, "benchmarks", "results", "innvestigate.json")
METHODS = ("deep_taylor.bounded", "deep_taylor", "lrp.epsilon", "lrp.sequential_preset_a",
           "input_t_gradient")


class _Subject:
    def __init__(self, model, inputs):
        self.model, self.inputs = model, inputs


class InnvestigateAdapter:
    """iNNvestigate for :mod:`benchmarks.harness` (TF 2.14 imported in the workers only)."""

    framework = "innvestigate"
    baseline_name = "gradient_x_input (TF 2.14 graph mode; see baseline_info)"
    models = default_models = ("VGG16", "ResNet50", "MobileNetV2")
    methods = METHODS
    default_methods = ("deep_taylor.bounded",)
    supports_jit = False
    # Graph mode: the analyzer builds its own graph and touches nothing of the baseline's, and a
    # second model would double the graph that every analyzer-building step extends.
    baseline_needs_own_model = False

    def configure(self, settings):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.compat.v1.disable_eager_execution()
        if settings.get("threads"):
            config = tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=settings["threads"],
                inter_op_parallelism_threads=settings["threads"])
            tf.compat.v1.keras.backend.set_session(tf.compat.v1.Session(config=config))

    def environment(self):
        from importlib.metadata import version

        import keras
        import numpy as np
        import tensorflow as tf

        try:
            from tensorflow.python.util import _pywrap_util_port

            onednn = bool(_pywrap_util_port.IsMklEnabled())
        except (ImportError, AttributeError):
            onednn = None
        return {
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "innvestigate": version("innvestigate"),
                         "numpy": np.__version__},
            "onednn": onednn, "devices": ["CPU"], "gpus": [],
            "eager": tf.executing_eagerly(),
            "methods": list(METHODS),
        }

    def build(self, name, settings):
        import numpy as np
        import tensorflow as tf

        size, seed = settings["size"], settings["seed"]
        tf.keras.utils.set_random_seed(seed)
        model = getattr(tf.keras.applications, name)(
            weights=None, classes=10, input_shape=(size, size, 3), classifier_activation=None)

        def inputs(batch):
            x = np.random.default_rng(seed + 2).uniform(0, 255, (batch, size, size, 3))
            return x.astype("float32")
        return _Subject(model, inputs)

    def input_shape(self, subject):
        return subject.model.input_shape[1:]

    def inputs(self, subject, batch):
        return subject.inputs(batch)

    def method(self, subject, name, settings):
        import innvestigate

        low, high = PIXEL_RANGE
        options = {"low": low, "high": high} if name == "deep_taylor.bounded" else {}
        analyzer = innvestigate.create_analyzer(name, subject.model, **options)
        return harness.Call(analyzer.analyze, {"analyzer": name, **options})

    def baseline(self, subject, settings):
        import tensorflow as tf

        if settings.get("baseline") == "input_t_gradient":
            return self.method(subject, "input_t_gradient", settings)
        model = subject.model
        top = tf.reduce_max(model.output, axis=-1)
        gradient = tf.gradients(top, model.input)[0]
        function = tf.compat.v1.keras.backend.function([model.input], [gradient * model.input])
        return harness.Call(lambda x: function([x])[0], {"baseline": "function"})

    def device_memory(self):
        return None


ADAPTER = InnvestigateAdapter()


def add_arguments(parser):
    parser.add_argument("--baseline", choices=("function", "input_t_gradient"),
                        default="function", help="the gradient×input (default: %(default)s)")


def main(argv=None):
    """Run the benchmark (see the module doc); returns the result document."""
    return harness.main(ADAPTER, "benchmarks.peers.bench_innvestigate", __doc__, DEFAULT_JSON,
                        argv, add_arguments=add_arguments)


if __name__ == "__main__":
    main()
