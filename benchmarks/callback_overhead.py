"""Per-epoch overhead of tf_dtd.callbacks.RelevanceMonitor on a small digits CNN.

    python benchmarks/callback_overhead.py [--epochs 6] [--samples 16] [--batchnorm]

Trains the same small CNN (32×32 digits, 1348 training images, batch 32) without and then with
the callback and prints the median epoch time of each, the callback's epoch-end work (timed
inside it) in seconds and relative to an epoch, and how that splits into the weight refresh
(``tf_dtd.sync_weights``) and the rest (explaining the samples, drawing the grid, writing the
summaries). The first epoch is left out of the medians (it traces ``fit`` and builds the
relevance model).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import tf_dtd  # noqa: E402
from tf_dtd import callbacks, digits  # noqa: E402

L = keras.layers


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)

    def on_train_begin(self, logs=None):
        self.times = []


class TimedMonitor(callbacks.RelevanceMonitor):
    """The callback, timing its own epoch-end work."""

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        super().on_epoch_end(epoch, logs)
        self.times.append(time.perf_counter() - start)


class TimedSync:
    """Wraps callbacks.sync_weights to time it."""

    def __init__(self):
        self.times, self.original = [], callbacks.sync_weights

    def __call__(self, relevance_model, model):
        start = time.perf_counter()
        result = self.original(relevance_model, model)
        self.times.append(time.perf_counter() - start)
        return result


def small_cnn(batchnorm):
    keras.utils.set_random_seed(0)
    inputs = L.Input((32, 32, 1))
    x = L.Conv2D(16, 3, padding="same")(inputs)
    x = L.ReLU()(L.BatchNormalization()(x) if batchnorm else x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Dense(64, activation="relu")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(x), name="small_cnn")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batchnorm", action="store_true", help="BatchNorm after the first conv")
    args = parser.parse_args()
    data = load_digits()
    train, _ = digits.held_out_split(len(data.images))
    x, y = digits.prepare(data.images[train]), data.target[train]

    timer = EpochTimer()
    plain = small_cnn(args.batchnorm)
    plain.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0, callbacks=[timer])
    base = statistics.median(timer.times[1:])

    timed_sync = TimedSync()
    callbacks.sync_weights = timed_sync
    monitored = small_cnn(args.batchnorm)
    monitor = TimedMonitor(x[:args.samples], "deep_taylor_bounded",
                                         input_range=digits.INPUT_RANGE,
                                         log_dir=tempfile.mkdtemp(), masks=x[:args.samples] > 0.5)
    monitor.times = []
    start = time.perf_counter()
    monitored.fit(x, y, epochs=args.epochs, batch_size=32, verbose=0,
                  callbacks=[monitor, timer])   # the timer's epoch end comes last
    total = time.perf_counter() - start
    with_monitor = statistics.median(timer.times[1:])
    sync = statistics.median(timed_sync.times[1:])
    overhead = statistics.median(monitor.times[1:])
    print(f"tf_dtd {tf_dtd.__version__}, {len(x)} training images, {args.samples} monitored "
          f"samples, {args.epochs} epochs ({total:.1f} s with the callback)")
    print(f"epoch without callback: {base:.3f} s (median of epochs 2..{args.epochs})")
    print(f"epoch with callback:    {with_monitor:.3f} s")
    print(f"callback's epoch end:   {overhead:.3f} s = {overhead / base:.0%} of an epoch "
          "(timed inside the callback)")
    print(f"  of which sync_weights {sync:.3f} s, explain + grid + summaries "
          f"{overhead - sync:.3f} s; traces of the explain function: "
          f"{monitor.explain_function.experimental_get_tracing_count()}")


if __name__ == "__main__":
    main()
