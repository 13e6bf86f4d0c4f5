"""tf_dtd's relevance against a tf.function gradient×input: time, first call, peak memory.

    python -m benchmarks [--models VGG16 ResNet50 MobileNetV2 EfficientNetB0 digits]
        [--batch 1 8 32] [--presets deep_taylor_bounded lrp_epsilon ...] [--size 224] [--jit]
        [--repeats 15] [--min-seconds 20] [--call predict_on_batch|function] [--gpu]
        [--threads N] [--no-fresh] [--tensor-memory] [--json benchmarks/results/performance.json]

What is timed (the same target on both sides: the top pre-softmax logit of each sample, the
same numpy batch in, a numpy array out):

- relevance: ``relevance_model.predict_on_batch(x)`` — the compiled predict step Keras runs for
  a user (``relevance_model.compile(jit_compile=...)`` is called explicitly, so ``--jit`` and
  its absence mean what they say on GPU too, where Keras' "auto" would choose XLA). With
  ``--call function``: ``tf.function(relevance_model)`` (``jit_compile`` as ``--jit``).
- baseline: a ``tf.function`` (``jit_compile`` as ``--jit``) of GradientTape gradient×input of
  that logit, ``.numpy()`` of its result.

The first call (rewrite + trace + first batch; for the baseline trace + first batch) and the
peak memory are measured in a fresh process per (model, preset, batch) and per (model, batch)
for the baseline; with ``--tensor-memory`` (CPU) also the bytes TensorFlow's tensors take, which
leave out what the resident set adds (the interpreter, tracing and graph optimisation, pages the
allocator keeps). See :mod:`benchmarks.harness` and :mod:`benchmarks.protocol`;
``python -m benchmarks.report FILE...`` prints the tables of saved results.
"""

import os

from benchmarks import harness, protocol

__all__ = ["ADAPTER", "main"]

MODELS = ("VGG16", "ResNet50", "MobileNetV2", "EfficientNetB0", "digits")
DEFAULT_PRESETS = ("deep_taylor_bounded", "lrp_epsilon", "lrp_epsilon_plus",
                   "lrp_epsilon_gamma_box")
DEFAULT_JSON = os.path.join(protocol.REPO_ROOT, "benchmarks", "results", "performance.json")


class _GpuMemory:
    def __init__(self, tf):
        self.tf = tf

    def reset(self):
        self.tf.config.experimental.reset_memory_stats("GPU:0")
        return self.tf.config.experimental.get_memory_info("GPU:0")["current"]

    def peak(self):
        return self.tf.config.experimental.get_memory_info("GPU:0")["peak"]


class _HostTensorMemory:
    """Bytes of TensorFlow's tensors in host memory, from its allocator's statistics (needs
    ``TF_CPU_ALLOCATOR_USE_BFC=1`` before TensorFlow starts)."""

    def __init__(self, tf):
        self.tf = tf

    def reset(self):
        self.tf.config.experimental.reset_memory_stats("CPU:0")
        return self.current()

    def current(self):
        return self.tf.config.experimental.get_memory_info("CPU:0")["current"]

    def peak(self):
        return self.tf.config.experimental.get_memory_info("CPU:0")["peak"]


class TfDtdAdapter:
    """tf_dtd for :mod:`benchmarks.harness` (TensorFlow is imported in the workers only)."""

    framework = "tf_dtd"
    baseline_name = "gradient_x_input (tf.function)"
    models = default_models = MODELS
    methods = None  # any tf_dtd preset; the probe worker checks the names
    default_methods = DEFAULT_PRESETS

    def configure(self, settings):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if settings.get("tensor_memory") and settings.get("worker") == "fresh":
            os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "1"
        import tensorflow as tf

        if settings.get("threads"):
            tf.config.threading.set_intra_op_parallelism_threads(settings["threads"])
            tf.config.threading.set_inter_op_parallelism_threads(settings["threads"])

    def environment(self):
        import keras
        import numpy as np
        import tensorflow as tf

        import tf_dtd

        try:
            from tensorflow.python.util import _pywrap_util_port

            onednn = bool(_pywrap_util_port.IsMklEnabled())
        except (ImportError, AttributeError):
            onednn = None
        gpus = tf.config.list_physical_devices("GPU")
        return {
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__,
                         "tf_dtd": tf_dtd.__version__, "numpy": np.__version__},
            "tf_dtd_path": os.path.dirname(tf_dtd.__file__),
            "onednn": onednn,
            "devices": [device.name for device in tf.config.list_logical_devices()],
            "gpus": [tf.config.experimental.get_device_details(gpu) for gpu in gpus],
            "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "methods": sorted(tf_dtd.PRESETS),
        }

    def build(self, name, settings):
        from benchmarks import models

        return models.build(name, size=settings["size"], seed=settings["seed"],
                            cache_dir=settings["cache_dir"])

    def input_shape(self, subject):
        return subject.model.input_shape[1:]

    def inputs(self, subject, batch):
        return subject.inputs(batch)

    def method(self, subject, name, settings):
        import tensorflow as tf

        import tf_dtd

        relevance_model = tf_dtd.relevance_model(subject.model, name,
                                                 input_range=subject.input_range)
        relevance_model.compile(jit_compile=settings["jit"])
        info = {"jit_compile": bool(relevance_model.jit_compile), "call": settings["call"]}
        if settings["call"] == "predict_on_batch":
            return harness.Call(relevance_model.predict_on_batch, info)
        compiled = tf.function(lambda x: relevance_model(x, training=False),
                               jit_compile=settings["jit"])
        return harness.Call(lambda x: compiled(x).numpy(), info)

    def baseline(self, subject, settings):
        import tensorflow as tf

        logits = subject.logits

        @tf.function(jit_compile=settings["jit"])
        def gradient_x_input(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                top = tf.reduce_max(logits(x), axis=-1)
            return tape.gradient(top, x) * x

        return harness.Call(lambda x: gradient_x_input(x).numpy(), {"jit_compile": settings["jit"]})

    def device_memory(self):
        import tensorflow as tf

        return _GpuMemory(tf) if tf.config.list_physical_devices("GPU") else None

    def tensor_memory(self):
        import tensorflow as tf

        if (os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") != "1"
                or tf.config.list_physical_devices("GPU")):
            return None
        return _HostTensorMemory(tf)


ADAPTER = TfDtdAdapter()


def add_arguments(parser):
    parser.add_argument("--call", choices=("predict_on_batch", "function"),
                        default="predict_on_batch",
                        help="how the relevance model is called (default: %(default)s)")
    parser.add_argument("--tensor-memory", action="store_true",
                        help="on CPU, the fresh workers also report the bytes TensorFlow's "
                             "tensors take (its BFC allocator's statistics: they run with "
                             "TF_CPU_ALLOCATOR_USE_BFC=1, their resident set and first call "
                             "with that allocator)")


def main(argv=None):
    """Run the benchmark (see the module doc); returns the result document."""
    return harness.main(ADAPTER, "benchmarks.run", __doc__, DEFAULT_JSON, argv,
                        add_arguments=add_arguments)


if __name__ == "__main__":
    main()
