"""The measuring protocol: interleaved timing, its statistics, peak memory, the machine.

Framework-free (standard library and NumPy only), so tf_dtd and the peers in
``benchmarks/peers`` are measured by the same code.

Timing: after ``warmup`` calls of each side, the explanation method and its baseline
(gradient×input) are called in pairs, the order alternating from pair to pair (method first in
even pairs, baseline first in odd ones), until there are at least ``repeats`` pairs *and* at
least ``min_seconds`` have passed (at most ``max_repeats`` pairs). Python's garbage collector is
off inside the loop. Reported: the median, quartiles and range of each side's times and of the
per-pair ratios ``method / baseline``, and the ratio of the two medians.
"""

import datetime
import gc
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

__all__ = [
    "REPO_ROOT",
    "current_rss_bytes",
    "describe_machine",
    "interleaved",
    "peak_rss_bytes",
    "summary",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary(values):
    """Median, quartiles, range and count of ``values`` (a non-empty sequence of numbers).

    Example:
        >>> summary([1.0, 2.0, 4.0])["median"]
        2.0
    """
    values = np.asarray(values, dtype="float64")
    if values.size == 0:
        raise ValueError("Expected at least one value. Received: values=[]")
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75),
            "min": float(values.min()), "max": float(values.max()), "n": int(values.size)}


def interleaved(method, baseline, *, repeats, min_seconds, max_repeats=1000, warmup=1,
                clock=time.perf_counter):
    """Time ``method()`` against ``baseline()`` in alternating pairs (see the module doc).

    Args:
        method, baseline: callables without arguments; each call must finish its work (return
            host arrays, not pending device tensors).
        repeats: the least number of pairs.
        min_seconds: the least time spent in timed pairs.
        max_repeats: the most pairs, whatever ``min_seconds`` says.
        warmup: untimed calls of each side first.
        clock: the clock (seconds).

    Returns:
        dict: ``pairs``, ``seconds`` (time in the loop), ``method_s`` and ``baseline_s``
        (summaries), ``ratio`` (summary of the per-pair ratios), ``ratio_of_medians``, and the
        raw ``method_samples_s``, ``baseline_samples_s`` in call order.

    Example:
        >>> result = interleaved(lambda: None, lambda: None, repeats=3, min_seconds=0.0)
        >>> result["pairs"]
        3
    """
    if not 1 <= repeats <= max_repeats:
        raise ValueError(f"Expected 1 <= repeats <= max_repeats. Received: repeats={repeats}, "
                         f"max_repeats={max_repeats}")
    for _ in range(warmup):
        method()
        baseline()
    method_s, baseline_s = [], []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = clock()
        while len(method_s) < max_repeats and (
                len(method_s) < repeats or clock() - start < min_seconds):
            pair = [(method, method_s), (baseline, baseline_s)]
            for fn, times in pair if len(method_s) % 2 == 0 else pair[::-1]:
                begin = clock()
                fn()
                times.append(clock() - begin)
        seconds = clock() - start
    finally:
        if was_enabled:
            gc.enable()
    ratios = np.asarray(method_s) / np.asarray(baseline_s)
    method_summary, baseline_summary = summary(method_s), summary(baseline_s)
    return {
        "pairs": len(method_s), "seconds": seconds,
        "method_s": method_summary, "baseline_s": baseline_summary, "ratio": summary(ratios),
        "ratio_of_medians": method_summary["median"] / baseline_summary["median"],
        "method_samples_s": method_s, "baseline_samples_s": baseline_s,
    }


def peak_rss_bytes():
    """This process's peak resident set size so far (``getrusage``'s ``ru_maxrss``), in bytes."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes():
    """This process's resident set size now (Linux ``/proc/self/statm``), in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total_bytes():
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git_commit():
    def git(*args):
        return subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


ENVIRONMENT_VARIABLES = (
    "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_XLA_FLAGS",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "OPENBLAS_CORETYPE",
)


def describe_machine():
    """The machine and the moment: CPU model, cores, memory, load, Python, git commit, date.

    The framework's own facts (versions, oneDNN, devices) come from its workers and are
    stored beside this under ``"framework_environment"``.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_total_bytes": _memory_total_bytes(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "git_commit": _git_commit(),
        "environment_variables": {name: os.environ.get(name) for name in ENVIRONMENT_VARIABLES},
    }
