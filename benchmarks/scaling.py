"""Memory and speed of tf_dtd.explain_dataset against plain predict (docs/scaling.md).

    python benchmarks/scaling.py memory 2000 20000      # peak RSS, one fresh process per run
    python benchmarks/scaling.py speed 2000             # images/s, in one process

The shipped digits model (28×28×1 inputs, deep_taylor_bounded) explains random images.
``memory``: "stream" runs explain_dataset on a tf.data generator (the images are never all in
memory); "predict" makes the images as one array and calls relevance_model.predict on it. Each
reports the resident memory after building the model and the peak (VmHWM) of its process.
``speed``: the best of three runs of relevance_model.predict (one call on the array, and a loop
of one predict call per batch) and of explain_dataset (from the array, a tf.data dataset and a
folder of PNG files). Run with TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS to pin threads.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

SHAPE = (32, 32, 1)
BATCH_SIZE = 32


def _memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def _worker(mode, count):
    import numpy as np
    import tensorflow as tf

    import tf_dtd
    from tf_dtd.app import digits

    relevance_model = tf_dtd.relevance_model(digits.load_model(), input_range=(0.0, 1.0))
    relevance_model.predict(np.zeros((BATCH_SIZE, *SHAPE), "float32"), verbose=0)
    built = _memory()["VmRSS"]
    start = time.perf_counter()
    if mode == "stream":
        def images():
            rng = np.random.default_rng(0)
            for _ in range(count):
                yield rng.uniform(0, 1, SHAPE).astype("float32")

        dataset = tf.data.Dataset.from_generator(
            images, output_signature=tf.TensorSpec(SHAPE, tf.float32))
        with tempfile.TemporaryDirectory() as out:
            tf_dtd.explain_dataset(relevance_model, dataset, os.path.join(out, "results"),
                                   batch_size=BATCH_SIZE, verbose=0)
    else:
        x = np.random.default_rng(0).uniform(0, 1, (count, *SHAPE)).astype("float32")
        relevance_model.predict(x, batch_size=BATCH_SIZE, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "images": count, "built_mib": built,
                      "peak_mib": _memory()["VmHWM"], "seconds": seconds}))


def memory(counts):
    print(f"{'run':<10}{'images':>8}{'RSS after build':>17}{'peak RSS':>10}{'growth':>9}"
          f"{'images/s':>10}")
    for count in counts:
        for mode in ("stream", "predict"):
            result = subprocess.run([sys.executable, __file__, "worker", mode, str(count)],
                                    capture_output=True, text=True, check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{mode:<10}{count:>8}{r['built_mib']:>13.0f} MiB{r['peak_mib']:>6.0f} MiB"
                  f"{r['peak_mib'] - r['built_mib']:>5.0f} MiB{count / r['seconds']:>10.0f}")


def speed(count):
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    import tf_dtd
    from tf_dtd.app import digits

    relevance_model = tf_dtd.relevance_model(digits.load_model(), input_range=(0.0, 1.0))
    x = np.random.default_rng(0).uniform(0, 1, (count, *SHAPE)).astype("float32")
    folder = tempfile.mkdtemp()
    for i, image in enumerate(x):
        Image.fromarray(np.round(image[..., 0] * 255).astype("uint8")).save(
            os.path.join(folder, f"{i:06d}.png"))
    runs = {
        "relevance_model.predict(x), one call": lambda out: relevance_model.predict(
            x, batch_size=BATCH_SIZE, verbose=0),
        "relevance_model.predict per batch, a loop": lambda out: [
            relevance_model.predict(x[i:i + BATCH_SIZE], verbose=0)
            for i in range(0, count, BATCH_SIZE)],
        "explain_dataset(NumPy array)": lambda out: tf_dtd.explain_dataset(
            relevance_model, x, out, batch_size=BATCH_SIZE, verbose=0),
        "explain_dataset(tf.data)": lambda out: tf_dtd.explain_dataset(
            relevance_model, tf.data.Dataset.from_tensor_slices(x), out,
            batch_size=BATCH_SIZE, verbose=0),
        "explain_dataset(PNG folder)": lambda out: tf_dtd.explain_dataset(
            relevance_model, folder, out, batch_size=BATCH_SIZE, verbose=0),
    }
    relevance_model.predict(x[:BATCH_SIZE], verbose=0)
    tf_dtd.explain_dataset(relevance_model, x[:BATCH_SIZE], tempfile.mkdtemp() + "/w", verbose=0)
    for name, run in runs.items():
        best = float("inf")
        for _ in range(3):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                run(os.path.join(out, "results"))
                best = min(best, time.perf_counter() - start)
        print(f"{name:<45}{count / best:>8.0f} images/s")


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "memory":
        memory([int(n) for n in sys.argv[2:]] or [2000, 20000])
    else:
        speed(int(sys.argv[2]) if len(sys.argv) > 2 else 2000)
