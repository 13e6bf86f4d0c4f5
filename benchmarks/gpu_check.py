"""GPU check: max-pooling ties under cuDNN, then the batch-64 table with and without XLA.

    python -m benchmarks.gpu_check [--budget-seconds 300] [--models ...] [--presets ...]
        [--skip-table] [--tie-test-on-cpu] [--json benchmarks/results/gpu.json]

Without a GPU it prints a message and exits with status 0 (``--tie-test-on-cpu`` runs the tie
test on the CPU instead, to check the script itself). With one:

1. **Winner-take-all ties** (a fresh process, seconds): a MaxPooling2D whose windows hold exact
   ties (values from {1, 2, 3}, a quarter of the windows all equal) under Dense(5) with a
   positive kernel, explained with ``lrp_z``; the relevance at the pooling's output and at its
   input (``relevance_model(..., layers=["pool"])``) are compared window by window: each
   window's input relevance must sum to its output relevance (nothing duplicated or lost) and
   be shared equally by the inputs that attain the window's maximum, and by no other. Pool
   sizes 2 and 3 (non-overlapping windows), channels_last and channels_first (GPU only), XLA
   off (cuDNN) and on.
2. **The table** of ``python -m benchmarks --gpu`` (batch 64, XLA off and on), with fewer
   repeats (``--repeats 10 --min-seconds 2``), first call and device memory only for
   ``deep_taylor_bounded`` (``--fresh-methods``), and a budget: no worker starts after
   ``--budget-seconds`` (what is left is listed as skipped).

Prints both and writes one JSON file: ``{"schema", "tie_test": {...}, "table": <the document
of python -m benchmarks>}``.
"""

import argparse
import json
import os

import numpy as np

from benchmarks import harness, protocol, report, run

__all__ = ["check_windows", "main", "tie_case", "tie_images", "tie_test"]

DEFAULT_JSON = os.path.join(protocol.REPO_ROOT, "benchmarks", "results", "gpu.json")


def _windows(array, pool):
    """(n, h, w, c) -> (n, h/pool, w/pool, c, pool*pool): the entries of each window."""
    n, h, w, c = array.shape
    blocks = array.reshape(n, h // pool, pool, w // pool, pool, c)
    return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // pool, w // pool, c, pool * pool)


def tie_images(pool, *, batch=4, windows=4, channels=3, seed=0):
    """Images (NHWC) with exact ties: values in {1, 2, 3}, every 4th window all equal."""
    rng = np.random.default_rng(seed)
    size = pool * windows
    x = rng.integers(1, 4, (batch, size, size, channels)).astype("float32")
    flat = _windows(x, pool).reshape(-1, pool * pool)
    flat[::4] = flat[::4, :1]  # all equal
    return flat.reshape(batch, windows, windows, channels, pool, pool).transpose(
        0, 1, 4, 2, 5, 3).reshape(x.shape)


def tie_case(pool, data_format, jit):
    """One configuration of the tie test; a dict of counts and ``passed``."""
    import keras

    import tf_dtd

    x = tie_images(pool)
    shape = x.shape[1:] if data_format == "channels_last" else (x.shape[3], *x.shape[1:3])
    inputs = keras.Input(shape)
    pooled = keras.layers.MaxPooling2D(pool, strides=pool, data_format=data_format,
                                       name="pool")(inputs)
    positive = keras.initializers.RandomUniform(0.1, 1.0, seed=1)
    outputs = keras.layers.Dense(5, use_bias=False, kernel_initializer=positive)(
        keras.layers.Flatten()(pooled))
    relevance_model = tf_dtd.relevance_model(keras.Model(inputs, outputs), "lrp_z",
                                             layers=["pool"])
    relevance_model.compile(jit_compile=jit)
    feed = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
    out = relevance_model.predict_on_batch(feed)
    arriving, placed = out["layers"]["pool"], out["relevance"]
    if data_format == "channels_first":
        arriving, placed = arriving.transpose(0, 2, 3, 1), placed.transpose(0, 2, 3, 1)
    return {"pool": pool, "data_format": data_format, "jit": jit,
            "jit_compile": bool(relevance_model.jit_compile),
            **check_windows(x, arriving, placed, pool)}


def check_windows(x, arriving, placed, pool):
    """Counts of how each pooling window's relevance reached its inputs (all NHWC arrays).

    Args:
        x: the pooling's input; arriving: the relevance at its output; placed: at its input;
        pool: the (non-overlapping) window size.

    Returns:
        dict: ``windows``, ``tied_windows`` (several maximal inputs), ``windows_with_relevance``,
        ``duplicated_windows`` (more relevance placed than arrived), ``lost_windows`` (on none),
        ``misplaced_windows`` (on a non-maximal input), ``unequal_windows`` (maximal inputs
        that received different shares), ``max_window_conservation_error`` (relative to the
        largest arriving relevance), ``total_relevance`` (arriving, placed) and ``passed``.
    """
    values, shares = _windows(x, pool), _windows(placed, pool)
    receivers = (shares != 0).sum(axis=-1)
    carrying = arriving != 0
    maximal = values == values.max(axis=-1, keepdims=True)
    misplaced = int(((shares != 0) & ~maximal).any(axis=-1).sum())
    scale = np.abs(arriving).max()
    excess = np.abs(shares.sum(axis=-1)) - np.abs(arriving)
    fair = arriving[..., None] / maximal.sum(axis=-1, keepdims=True)
    unequal = (maximal & (np.abs(shares - fair) > 1e-5 * scale)).any(axis=-1)
    error = float(np.abs(shares.sum(axis=-1) - arriving).max() / scale)
    counts = {
        "windows": int(arriving.size), "tied_windows": int((maximal.sum(axis=-1) > 1).sum()),
        "windows_with_relevance": int(carrying.sum()),
        "duplicated_windows": int((excess > 1e-5 * scale).sum()),
        "lost_windows": int((carrying & (receivers == 0)).sum()),
        "misplaced_windows": misplaced,
        "unequal_windows": int(unequal.sum()),
        "max_window_conservation_error": error,
        "total_relevance": [float(arriving.sum()), float(placed.sum())],
    }
    counts["passed"] = (counts["duplicated_windows"] == 0 and counts["lost_windows"] == 0
                        and misplaced == 0 and counts["unequal_windows"] == 0 and error < 1e-5
                        and counts["tied_windows"] > 0)
    return counts


def tie_test(allow_cpu=False):
    """Every tie case on this machine's device (see the module doc); ``None`` without a GPU
    unless ``allow_cpu``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not allow_cpu:
        return None
    formats = ("channels_last", "channels_first") if gpus else ("channels_last",)
    cases = []
    for data_format in formats:
        for pool in (2, 3):
            for jit in (False, True):
                try:
                    cases.append(tie_case(pool, data_format, jit))
                except Exception as error:  # recorded; the other cases go on
                    cases.append({"pool": pool, "data_format": data_format, "jit": jit,
                                  "passed": False, "error": harness.error_text(error)})
    return {"device": "GPU" if gpus else "CPU",
            "gpus": [tf.config.experimental.get_device_details(gpu) for gpu in gpus],
            "environment_variables": {name: os.environ.get(name) for name in (
                "TF_CUDNN_DETERMINISTIC", "TF_DETERMINISTIC_OPS")},
            "cases": cases, "passed": all(case["passed"] for case in cases)}


def _tie_worker(allow_cpu):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = tie_test(allow_cpu)
    print(harness.RESULT_MARK + json.dumps({"tie_test": result}), flush=True)


def format_ties(result):
    """A markdown table of the tie cases."""
    lines = ["| pool | data format | XLA | windows | tied | with relevance | duplicated | lost "
             "| misplaced | unequal | max window error | passed |", "|" + "---|" * 12]
    for case in result["cases"]:
        if "error" in case:
            lines.append(f"| {case['pool']} | {case['data_format']} | {case['jit']} | "
                         f"error: {case['error']} |")
            continue
        lines.append("| " + " | ".join(str(case[key]) for key in (
            "pool", "data_format", "jit", "windows", "tied_windows", "windows_with_relevance",
            "duplicated_windows", "lost_windows", "misplaced_windows", "unequal_windows")) +
            f" | {case['max_window_conservation_error']:.1e} | {case['passed']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = harness.argument_parser(run.ADAPTER, __doc__, DEFAULT_JSON,
                                     prog="python -m benchmarks.gpu_check")
    run.add_arguments(parser)
    parser.add_argument("--skip-table", action="store_true", help="run the tie test only")
    parser.add_argument("--tie-test-on-cpu", action="store_true",
                        help="without a GPU, run the tie test on the CPU (then stop)")
    parser.add_argument("--tie-worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(repeats=10, min_seconds=2.0, budget_seconds=300.0,
                        fresh_methods=["deep_taylor_bounded"])
    args = parser.parse_args(argv)
    if args.tie_worker:
        return _tie_worker(args.tie_test_on_cpu)
    extra = ["--tie-test-on-cpu"] if args.tie_test_on_cpu else []
    worker = harness.run_worker("benchmarks.gpu_check", None, timeout=600,
                                arguments=["--tie-worker", *extra])
    ties = worker["tie_test"] if "error" not in worker else {"passed": False, **worker}
    if ties is None:
        print("No GPU visible to TensorFlow: nothing to check (--tie-test-on-cpu runs the tie "
              "test on the CPU).")
        return None
    document = {"schema": harness.SCHEMA, "tie_test": ties, "table": None}
    if "error" in ties:
        print(f"The tie test did not run: {ties['error']}")
    else:
        print(format_ties(ties))
        print(f"tie test on {ties['device']}: {'passed' if ties['passed'] else 'FAILED'}")
    if not args.skip_table and ties.get("device") == "GPU":
        args.gpu, args.batches = True, args.batches or [64]
        table = harness.measure(run.ADAPTER, "benchmarks.run", args)
        document["table"] = table
        print(report.describe(table))
        print(report.format_table(table["results"]))
    harness.write_json(document, args.json)
    return document


if __name__ == "__main__":
    main()
