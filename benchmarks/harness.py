"""Run a benchmark: worker subprocesses, the orchestration, the command line, the JSON.

A framework plugs in through an *adapter*: an object with

- ``framework``, ``baseline_name``: names stored in every result; ``supports_jit`` (optional,
  default true): whether ``--jit`` and ``--gpu`` mean anything; ``baseline_needs_own_model``
  (optional, default true): whether the timing worker builds a second instance of the model
  for the baseline;
- ``models``, ``methods`` (all choices) and ``default_models``, ``default_methods``;
- ``configure(settings)``: called first in every worker (threads, before the framework starts);
- ``environment()``: dict of versions and devices;
- ``build(model_name, settings)``: the model ("subject"), weights cached in
  ``settings["cache_dir"]`` so that every worker explains the same weights;
- ``input_shape(subject)``, ``inputs(subject, batch)``: one sample's shape, a batch;
- ``method(subject, name, settings)`` / ``baseline(subject, settings)``: set up an explanation
  (the rewrite, for tf_dtd) and return a callable ``fn(x) -> numpy array`` that finishes its
  work (a :class:`Call` carries an ``info`` dict into the results); a callable with a
  ``close()`` method is closed after use;
- ``device_memory()``: ``None`` on CPU, else an object with ``reset() -> bytes in use`` and
  ``peak() -> peak bytes since the reset``;
- ``tensor_memory()`` (optional): ``None``, or such an object (with ``current() -> bytes in
  use`` too) counting the bytes the framework's tensors take in host memory: the fresh worker
  then reports them beside the resident set. ``configure`` sees the worker's kind in
  ``settings["worker"]`` (``"probe"``, ``"timing"`` or ``"fresh"``).

A *probe* worker starts first and builds every model once (the weights cache). In a timing
worker the baseline explains its own instance of the model (same weights). Work is done in
fresh processes (``python -m <module> --worker TASK``): one *timing* worker per
model and XLA setting (every method and batch, interleaved with the baseline, see
:mod:`benchmarks.protocol`), and one *fresh* worker per (model, batch, method) and per (model,
batch) for the baseline, which measures the first call (set-up + trace + first batch) and the
peak memory: ``ru_maxrss`` after the first call and ``memory_calls`` more; its increase over the
resident set after the model was built (``increase_bytes``) and over ``ru_maxrss`` then
(``increase_over_peak_bytes``, zero when building the model peaked higher); on GPU also the
device's peak bytes, reset after the build, and their increase over the bytes in use then; where
the adapter counts its tensors' bytes (``tensor_memory``), the same for them, and what they hold
after the calls (``held_after_bytes``, over the bytes in use after the build).
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import protocol, report

__all__ = ["RESULT_MARK", "SCHEMA", "Call", "argument_parser", "error_text", "main", "measure",
           "run_worker", "worker_main", "write_json"]

SCHEMA = "tf_dtd-benchmark/1"
RESULT_MARK = "@@benchmark-result@@ "


class Call:
    """A callable ``x -> numpy array`` with ``info``, a dict saying what it runs (stored in the
    results as ``method_info`` / ``baseline_info``)."""

    def __init__(self, fn, info):
        self.fn, self.info = fn, info

    def __call__(self, x):
        return self.fn(x)


def error_text(error):
    return f"{type(error).__name__}: {error}"[:2000]


def _close(fn):
    if hasattr(fn, "close"):
        fn.close()


def _device_memory_of_call(memory, fn, x):
    before = memory.reset()
    fn(x)
    peak = memory.peak()
    return {"peak_bytes": peak, "before_bytes": before, "increase_bytes": peak - before}


def timing_worker(adapter, task):
    """Interleaved timing of every method and batch of one model (one XLA setting)."""
    settings = task["settings"]
    subject = adapter.build(task["model"], settings)
    # The baseline gets its own instance of the model (the same cached weights), so that
    # nothing a method sets up on its model (hooks, canonizers, caches) touches the baseline.
    own = getattr(adapter, "baseline_needs_own_model", True)
    baseline = adapter.baseline(adapter.build(task["model"], settings) if own else subject,
                                settings)
    memory = adapter.device_memory()
    records = []
    for method in task["methods"]:
        try:
            fn = adapter.method(subject, method, settings)
        except Exception as error:  # recorded; the other methods go on
            records += [{"batch": batch, "method": method, "error": error_text(error)}
                        for batch in task["batches"]]
            continue
        for batch in task["batches"]:
            record = {"batch": batch, "method": method, "method_info": getattr(fn, "info", None)}
            try:
                x = adapter.inputs(subject, batch)
                record["timing"] = protocol.interleaved(
                    lambda: fn(x), lambda: baseline(x),  # noqa: B023 - called before x changes
                    repeats=settings["repeats"], min_seconds=settings["min_seconds"],
                    max_repeats=settings["max_repeats"], warmup=settings["warmup"])
                if memory is not None:
                    record["device_memory_in_process"] = {
                        "method": _device_memory_of_call(memory, fn, x),
                        "baseline": _device_memory_of_call(memory, baseline, x)}
            except Exception as error:  # recorded; the other batches go on
                record["error"] = error_text(error)
            records.append(record)
        _close(fn)
        fn = None  # free the relevance model before the next one is built
        gc.collect()
    return {"input_shape": list(adapter.input_shape(subject)), "records": records,
            "baseline_info": getattr(baseline, "info", None)}


def fresh_worker(adapter, task):
    """First call and peak memory of one side (method or baseline) in this fresh process."""
    settings = task["settings"]
    subject = adapter.build(task["model"], settings)
    x = adapter.inputs(subject, task["batch"])
    gc.collect()
    peak_before, current_before = protocol.peak_rss_bytes(), protocol.current_rss_bytes()
    memory = adapter.device_memory()
    device_before = memory.reset() if memory is not None else None
    tensors = getattr(adapter, "tensor_memory", lambda: None)()
    tensors_before = tensors.reset() if tensors is not None else None
    start = time.perf_counter()
    if task["side"] == "method":
        fn = adapter.method(subject, task["method"], settings)
    else:
        fn = adapter.baseline(subject, settings)
    set_up = time.perf_counter()
    out = fn(x)
    first = time.perf_counter()
    for _ in range(settings["memory_calls"]):
        out = fn(x)
    peak = protocol.peak_rss_bytes()
    result = {
        "first_call": {"setup_s": set_up - start, "first_batch_s": first - set_up,
                       "total_s": first - start},
        "rss": {"peak_bytes": peak, "current_before_bytes": current_before,
                "peak_before_bytes": peak_before, "increase_bytes": peak - current_before,
                "increase_over_peak_bytes": peak - peak_before},
        "output": {"shape": list(out.shape), "finite": bool(_all_finite(out))},
    }
    if memory is not None:
        device_peak = memory.peak()
        result["device_memory"] = {"peak_bytes": device_peak, "before_bytes": device_before,
                                   "increase_bytes": device_peak - device_before}
    if tensors is not None:
        tensors_peak = tensors.peak()
        result["tensor_memory"] = {"peak_bytes": tensors_peak, "before_bytes": tensors_before,
                                   "increase_bytes": tensors_peak - tensors_before,
                                   "held_after_bytes": tensors.current() - tensors_before}
    _close(fn)
    return result


def probe_worker(adapter, task):
    """Check that the framework starts; build each model once, so that its weights are cached
    before any fresh worker runs (building them first, BatchNorm calibration included, would
    leave its memory in that worker's resident set)."""
    for model in task.get("models", ()):
        adapter.build(model, task["settings"])
    return {}


def _all_finite(array):
    import numpy as np

    return np.all(np.isfinite(np.asarray(array)))


def worker_main(adapter, task_json):
    """Entry of a worker process: run one task, print its result as one marked JSON line."""
    task = json.loads(task_json)
    adapter.configure({**task["settings"], "worker": task["kind"]})
    kinds = {"timing": timing_worker, "fresh": fresh_worker, "probe": probe_worker}
    result = kinds[task["kind"]](adapter, task)
    result["environment"] = adapter.environment()
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(module, task, *, timeout, python=sys.executable, arguments=None):
    """Run ``python -m module --worker TASK`` (or ``python -m module *arguments``) from the
    repository root; the dict it printed after :data:`RESULT_MARK`, or ``{"error": ...}`` with
    the end of its stderr when it failed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [protocol.REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    arguments = ["--worker", json.dumps(task)] if arguments is None else arguments
    try:
        done = subprocess.run([python, "-m", module, *arguments],
                              cwd=protocol.REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return {"error": f"worker exited with status {done.returncode}: {done.stderr[-3000:]}"}


def argument_parser(adapter, description, default_json, *, prog=None):
    """The command line every benchmark shares (tf_dtd and the peers)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", nargs="+", default=list(adapter.default_models), choices=adapter.models,
        help="default: %(default)s")
    add("--batch", "--batches", dest="batches", type=int, nargs="+", default=None,
        help="batch sizes (default: 1 8 32; 64 with --gpu)")
    add("--presets", "--methods", dest="methods", nargs="+",
        default=list(adapter.default_methods), choices=adapter.methods,
        help="default: %(default)s")
    add("--size", type=int, default=224, help="input height and width of the applications")
    add("--jit", action="store_true", help="compile both sides with XLA")
    add("--gpu", action="store_true",
        help="GPU table: batch 64, with and without XLA (exits with a message without a GPU)")
    add("--repeats", type=int, default=15, help="at least this many interleaved pairs")
    add("--min-seconds", type=float, default=20.0, help="and at least this long in timed pairs")
    add("--max-repeats", type=int, default=1000, help="at most this many pairs")
    add("--warmup", type=int, default=2, help="untimed calls of each side before timing")
    add("--memory-calls", type=int, default=2,
        help="calls after the first one before the peak memory is read")
    add("--threads", type=int, default=None, help="intra- and inter-op threads (default: all)")
    add("--no-fresh", action="store_true",
        help="skip the fresh subprocesses (first call and peak memory)")
    add("--no-timing", action="store_true",
        help="skip the timed pairs (first call and peak memory only)")
    add("--fresh-methods", nargs="+", default=None,
        help="measure first call and memory only for these methods (default: all)")
    add("--budget-seconds", type=float, default=None,
        help="start no new worker after this long; what is left is listed as skipped")
    add("--worker-timeout", type=float, default=3600.0)
    add("--seed", type=int, default=0)
    add("--json", default=default_json, help="where to write the results (default: %(default)s)")
    add("--worker", help=argparse.SUPPRESS)
    return parser


def _settings(args, cache_dir):
    settings = {name: value for name, value in vars(args).items()
                if name not in ("worker", "json", "models", "batches", "methods")}
    return {**settings, "cache_dir": cache_dir}


def _log(start, text):
    print(f"[{time.monotonic() - start:7.1f} s] {text}", file=sys.stderr, flush=True)


def _pair_memory(method, baseline):
    if not method or not baseline:
        return None
    return {"method": method, "baseline": baseline,
            "peak_ratio": method["peak_bytes"] / baseline["peak_bytes"],
            "increase_ratio": (method["increase_bytes"] / baseline["increase_bytes"]
                               if baseline["increase_bytes"] > 0 else None)}


def measure(adapter, module, args, *, python=sys.executable):
    """Every timing and fresh worker the arguments ask for; the result document (a dict)."""
    if (args.jit or args.gpu) and not getattr(adapter, "supports_jit", True):
        raise SystemExit(f"{adapter.framework}: --jit and --gpu are not supported here.")
    start = time.monotonic()
    deadline = None if args.budget_seconds is None else start + args.budget_seconds
    jit_settings = [False, True] if args.gpu else [bool(args.jit)]
    machine = protocol.describe_machine()
    skipped, results = [], {}
    with tempfile.TemporaryDirectory(prefix="tf_dtd_bench_") as cache_dir:
        settings = _settings(args, cache_dir)
        probe = run_worker(module, {"kind": "probe", "settings": settings,
                                    "models": args.models},
                           timeout=args.worker_timeout, python=python)
        if "error" in probe:
            raise SystemExit(f"The {adapter.framework} worker does not start: {probe['error']}")
        environment = probe["environment"]
        if args.gpu and not environment.get("gpus"):
            print(f"No GPU visible to {adapter.framework}: nothing measured (--gpu needs one).")
            raise SystemExit(0)
        unknown = sorted(set(args.methods) - set(environment.get("methods", args.methods)))
        if unknown:
            raise SystemExit(f"Unknown {adapter.framework} methods {unknown}. Expected some of "
                             f"{environment['methods']}.")

        def call(label, task):
            if deadline is not None and time.monotonic() > deadline:
                skipped.append(label)
                _log(start, f"skipped (budget): {label}")
                return None
            _log(start, label)
            return run_worker(module, task, timeout=args.worker_timeout, python=python)

        for model in args.models:
            for jit in jit_settings:
                out = {"error": "not measured (--no-timing)"} if args.no_timing else call(
                    f"timing {model} XLA={jit}",
                    {"kind": "timing", "model": model, "batches": args.batches,
                     "methods": args.methods, "settings": {**settings, "jit": jit}})
                for batch in args.batches:
                    for method in args.methods:
                        record = _new_record(adapter, args, environment, model, batch, method,
                                             jit)
                        results[model, batch, method, jit] = record
                        if out is None:
                            record["errors"]["timing"] = "skipped (budget)"
                        elif "error" in out:
                            record["errors"]["timing"] = out["error"]
                        else:
                            record["input_shape"] = out["input_shape"]
                            found = next(r for r in out["records"]
                                         if r["batch"] == batch and r["method"] == method)
                            record["timing"] = found.get("timing")
                            record["device_memory_in_process"] = found.get(
                                "device_memory_in_process")
                            record["method_info"] = found.get("method_info")
                            record["baseline_info"] = out.get("baseline_info")
                            if "error" in found:
                                record["errors"]["timing"] = found["error"]
        if not args.no_fresh:
            _fresh_all(adapter, args, jit_settings, settings, results, call)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["framework_environment"] = environment
    return {"schema": SCHEMA, "framework": adapter.framework, "machine": machine,
            "settings": {**settings, "cache_dir": None, "models": args.models,
                         "batches": args.batches, "methods": args.methods,
                         "jit": jit_settings},
            "results": list(results.values()), "skipped": skipped}


def _new_record(adapter, args, environment, model, batch, method, jit):
    return {"framework": adapter.framework, "model": model, "input_shape": None,
            "batch": batch, "method": method, "baseline": adapter.baseline_name, "jit": jit,
            "call": getattr(args, "call", None),
            "device": "GPU" if environment.get("gpus") else "CPU",
            "timing": None, "method_info": None, "baseline_info": None,
            "device_memory_in_process": None,
            "first_call": {"method": None, "baseline": None},
            "memory": {"rss": None, "device": None, "tensors": None}, "output": None,
            "errors": {}}


def _fresh_all(adapter, args, jit_settings, settings, results, call):
    fresh_methods = args.fresh_methods or args.methods
    for model in args.models:
        for jit in jit_settings:
            for batch in args.batches:
                common = {"kind": "fresh", "model": model, "batch": batch,
                          "settings": {**settings, "jit": jit}}
                base = call(f"first call + memory: {model} batch {batch} baseline XLA={jit}",
                            {**common, "side": "baseline"})
                for method in args.methods:
                    record = results[model, batch, method, jit]
                    if method not in fresh_methods:
                        continue
                    own = call(f"first call + memory: {model} batch {batch} {method} XLA={jit}",
                               {**common, "side": "method", "method": method})
                    for side, out in (("method", own), ("baseline", base)):
                        if out is None:
                            record["errors"][f"fresh_{side}"] = "skipped (budget)"
                        elif "error" in out:
                            record["errors"][f"fresh_{side}"] = out["error"]
                    own = own if own and "error" not in own else {}
                    other = base if base and "error" not in base else {}
                    record["first_call"] = {"method": own.get("first_call"),
                                            "baseline": other.get("first_call")}
                    record["memory"] = {
                        "rss": _pair_memory(own.get("rss"), other.get("rss")),
                        "device": _pair_memory(own.get("device_memory"),
                                               other.get("device_memory")),
                        "tensors": _pair_memory(own.get("tensor_memory"),
                                                other.get("tensor_memory"))}
                    record["output"] = own.get("output")


def main(adapter, module, description, default_json, argv=None, *, add_arguments=None,
         python=sys.executable):
    """Parse the command line; run a worker task, or measure, print the table, write JSON.

    ``add_arguments(parser)`` adds a framework's own options; they reach the adapter in
    ``settings``.
    """
    parser = argument_parser(adapter, description, default_json,
                             prog=f"python -m {module.removesuffix('.run')}")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker_main(adapter, args.worker)
        return None
    if args.batches is None:
        args.batches = [64] if args.gpu else [1, 8, 32]
    document = measure(adapter, module, args, python=python)
    print(report.describe(document))
    print(report.format_table(document["results"]))
    write_json(document, args.json)
    return document


def write_json(document, path):
    """Write a benchmark document to ``path`` (folders created) and say so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as out:
        json.dump(document, out, indent=1)
    print(f"Wrote {path}")
