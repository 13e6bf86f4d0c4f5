"""Time VGG16 relevance against a plain gradient×input on the same model, interleaved.

    python benchmarks/bench_vgg16.py [--batch 8] [--size 224] [--repeats 7] [--jit]

Prints the median time of ``relevance_model.predict`` under ``deep_taylor_bounded`` (caffe-style
per-channel input box), the median time of a ``tf.function`` GradientTape gradient×input of the
top logit on the same model, their ratio, and the first-call time (rewrite + trace + one batch).
Weights are random (``weights=None``): timing does not depend on them.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_dtd  # noqa: E402

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--jit", action="store_true", help="compile both with XLA")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(args.size, args.size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 3))
    x = (x[..., ::-1] - CAFFE_MEAN_BGR).astype("float32")  # what vgg16.preprocess_input does

    head = model.layers[-1]
    features = keras.Model(model.inputs[0], head.input)

    @tf.function(jit_compile=args.jit)
    def gradient_times_input(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.matmul(features(images), head.kernel) + head.bias
            top = tf.reduce_max(logits, axis=-1)
        return tape.gradient(top, images) * images

    start = time.perf_counter()
    relevance_model = tf_dtd.relevance_model(
        model, "deep_taylor_bounded", input_range=(-CAFFE_MEAN_BGR, 255.0 - CAFFE_MEAN_BGR))
    if args.jit:
        relevance_model.compile(jit_compile=True)
    rewrite = time.perf_counter() - start
    heatmaps = relevance_model.predict(x, batch_size=args.batch, verbose=0)
    first_call = time.perf_counter() - start
    gradient_times_input(x)  # trace the baseline too

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    ours, baseline = [], []
    for _ in range(args.repeats):
        baseline.append(timed(lambda: gradient_times_input(x).numpy()))
        ours.append(timed(lambda: relevance_model.predict(x, batch_size=args.batch, verbose=0)))
    ours_median, base_median = statistics.median(ours), statistics.median(baseline)
    print(f"VGG16 {args.size}x{args.size}, batch {args.batch}, {args.repeats} interleaved "
          f"repeats, XLA {'on' if args.jit else 'off'}, TF {tf.__version__}, "
          f"devices {[d.device_type for d in tf.config.list_logical_devices()]}")
    print(f"  gradient×input (tf.function)      median {base_median:8.3f} s")
    print(f"  relevance_model.predict (DTD z^B) median {ours_median:8.3f} s")
    print(f"  ratio                                    {ours_median / base_median:8.2f}x"
          "  (maths bound 1.5x)")
    print(f"  first call: rewrite {rewrite:.2f} s, rewrite + trace + one batch {first_call:.2f} s")
    print(f"  heatmaps finite: {bool(np.all(np.isfinite(heatmaps)))}")


if __name__ == "__main__":
    main()
