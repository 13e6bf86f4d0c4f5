"""The benchmark's instruments (benchmarks/): statistics, the interleaving, the report, the
max-pooling tie check of benchmarks/gpu_check.py run on the CPU. Nothing here is timed: the
interleaving runs on a fake clock."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import gpu_check, harness, protocol, report  # noqa: E402


class FakeClock:
    """A clock that only moves when a fake workload says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, name, seconds, log):
        def run():
            log.append(name)
            self.now += seconds
        return run


def test_summary_gives_median_quartiles_and_range():
    result = protocol.summary([4.0, 1.0, 3.0, 2.0, 5.0])
    assert result == {"median": 3.0, "q25": 2.0, "q75": 4.0, "min": 1.0, "max": 5.0, "n": 5}


def test_summary_rejects_no_values():
    with pytest.raises(ValueError, match="Expected at least one value"):
        protocol.summary([])


def test_interleaved_alternates_the_order_and_takes_per_pair_ratios():
    clock, log = FakeClock(), []
    result = protocol.interleaved(clock.work("m", 3.0, log), clock.work("b", 2.0, log),
                                  repeats=4, min_seconds=0.0, warmup=1, clock=clock)
    assert log == ["m", "b"] + ["m", "b", "b", "m"] * 2  # warm-up, then alternating pairs
    assert result["pairs"] == 4
    assert result["method_samples_s"] == [3.0] * 4 and result["baseline_samples_s"] == [2.0] * 4
    assert result["ratio"]["median"] == result["ratio_of_medians"] == 1.5
    assert result["seconds"] == 20.0


def test_interleaved_runs_until_both_repeats_and_min_seconds_are_reached():
    clock, log = FakeClock(), []
    result = protocol.interleaved(clock.work("m", 3.0, log), clock.work("b", 2.0, log),
                                  repeats=2, min_seconds=21.0, warmup=0, clock=clock)
    assert result["pairs"] == 5  # 4 pairs take 20 s < 21 s
    capped = protocol.interleaved(clock.work("m", 3.0, log), clock.work("b", 2.0, log),
                                  repeats=2, min_seconds=1e9, max_repeats=3, warmup=0,
                                  clock=clock)
    assert capped["pairs"] == 3


def test_interleaved_rejects_repeats_above_the_cap():
    with pytest.raises(ValueError, match="Expected 1 <= repeats <= max_repeats"):
        protocol.interleaved(lambda: None, lambda: None, repeats=5, min_seconds=0.0,
                             max_repeats=4)


def test_report_row_shows_medians_ratio_spread_and_memory():
    clock, log = FakeClock(), []
    timing = protocol.interleaved(clock.work("m", 3.0, log), clock.work("b", 2.0, log),
                                  repeats=3, min_seconds=0.0, warmup=0, clock=clock)
    mib = 2 ** 20
    record = {
        "framework": "tf_dtd", "model": "VGG16", "input_shape": [224, 224, 3], "batch": 8,
        "method": "deep_taylor_bounded", "jit": False, "device": "CPU", "timing": timing,
        "first_call": {"method": {"total_s": 6.5}, "baseline": {"total_s": 2.25}},
        "memory": {"rss": {"method": {"peak_bytes": 3000 * mib, "increase_bytes": 900 * mib},
                           "baseline": {"peak_bytes": 2500 * mib, "increase_bytes": 400 * mib}},
                   "device": None},
        "errors": {},
    }
    row = report.format_table([record]).splitlines()[-1]
    assert row == ("| tf_dtd | VGG16 | 224×224×3 | 8 | deep_taylor_bounded | off | 3 | 2 | "
                   "1.50 [1.50–1.50] (1.50–1.50) | 3 | 6.5 / 2.25 | 3000 / 2500 | 900 / 400 |")
    record["memory"]["tensors"] = {
        "method": {"increase_bytes": 700 * mib, "held_after_bytes": 30 * mib},
        "baseline": {"increase_bytes": 350 * mib, "held_after_bytes": 0}}
    header, _, row = report.format_table([record]).splitlines()
    assert header.endswith("| tensors +MiB: method / g×i; held |")
    assert row.endswith("| 3000 / 2500 | 900 / 400 | 700 / 350; 30 |")


def test_report_ratios_put_batches_in_columns_and_later_files_win():
    def record(model, batch, ratio, jit=False, timed=True):
        timing = {"ratio": {"median": ratio, "q25": ratio - 0.1, "q75": ratio + 0.1}}
        return {"model": model, "method": "lrp_epsilon", "batch": batch, "jit": jit,
                "timing": timing if timed else None}

    table = report.format_ratios([
        record("VGG16", 8, 1.5), record("VGG16", 1, 1.25), record("digits", 32, 2.0),
        record("VGG16", 8, 1.0625), record("VGG16", 8, 3.0, jit=True),
        record("digits", 1, 9.0, timed=False)]).splitlines()
    assert table == [
        "| model | method | XLA | batch 1 | batch 8 | batch 32 |",
        "|---|---|---|---|---|---|",
        "| VGG16 | lrp_epsilon | off | 1.25 [1.15–1.35] | 1.06 [0.96–1.16] | — |",
        "| digits | lrp_epsilon | off | — | — | 2.00 [1.90–2.10] |",
        "| VGG16 | lrp_epsilon | on | — | 3.00 [2.90–3.10] | — |",
    ]


def test_tie_images_hold_exact_ties_in_pooling_windows():
    for pool in (2, 3):
        windows = gpu_check._windows(gpu_check.tie_images(pool), pool)
        flat = windows.reshape(-1, pool * pool)
        assert np.all(flat[::4] == flat[::4, :1])  # every 4th window all equal
        maximal = flat == flat.max(axis=1, keepdims=True)
        assert (maximal.sum(axis=1) > 1).mean() > 0.3


def test_window_check_flags_duplicated_lost_and_misplaced_relevance():
    pool = 2
    x = gpu_check.tie_images(pool)
    arriving = gpu_check._windows(x, pool).max(axis=-1)  # relevance = the window's max
    windows = gpu_check._windows(x, pool)
    maximal = windows == windows.max(axis=-1, keepdims=True)

    def placed_from(shares):  # (n, h, w, c, pool*pool) -> NHWC
        n, h, w, c, _ = shares.shape
        return shares.reshape(n, h, w, c, pool, pool).transpose(0, 1, 4, 2, 5, 3).reshape(
            x.shape)

    shared = np.where(maximal, arriving[..., None] / maximal.sum(axis=-1, keepdims=True), 0.0)
    assert gpu_check.check_windows(x, arriving, placed_from(shared), pool)["passed"]
    # The gradient's routing: all to the first maximal input, conserving but unfair on ties.
    first = np.argmax(maximal, axis=-1)[..., None]
    one_winner = np.where(np.arange(pool * pool) == first, arriving[..., None], 0.0)
    first_only = gpu_check.check_windows(x, arriving, placed_from(one_winner), pool)
    assert first_only["unequal_windows"] == first_only["tied_windows"] and not first_only["passed"]
    assert first_only["max_window_conservation_error"] < 1e-6
    # cuDNN-style duplication: every tied maximum receives the window's full relevance.
    duplicated = gpu_check.check_windows(
        x, arriving, placed_from(np.where(maximal, arriving[..., None], 0.0)), pool)
    assert duplicated["duplicated_windows"] == duplicated["tied_windows"] > 0
    assert duplicated["max_window_conservation_error"] > 0.5 and not duplicated["passed"]
    lost = gpu_check.check_windows(x, arriving, placed_from(one_winner * 0), pool)
    assert lost["lost_windows"] == lost["windows"] and not lost["passed"]
    on_minimum = np.where(np.arange(pool * pool) == np.argmin(windows, axis=-1)[..., None],
                          arriving[..., None], 0.0)
    misplaced = gpu_check.check_windows(x, arriving, placed_from(on_minimum), pool)
    assert misplaced["misplaced_windows"] > 0 and not misplaced["passed"]


@pytest.mark.parametrize("pool", [2, 3])
def test_max_pooling_ties_share_each_window_equally_on_cpu(pool):
    case = gpu_check.tie_case(pool, "channels_last", jit=False)
    assert case["tied_windows"] > 0 and case["windows_with_relevance"] == case["windows"]
    assert case["duplicated_windows"] == case["lost_windows"] == case["misplaced_windows"] == 0
    assert case["unequal_windows"] == 0
    assert case["max_window_conservation_error"] < 1e-5
    assert case["passed"]


class FakeDeviceMemory:
    """Device memory that grows by 100 bytes per call, peaking 50 above that inside it."""

    def __init__(self):
        self.current, self.high = 1000, 1000

    def reset(self):
        self.high = self.current
        return self.current

    def peak(self):
        return self.high

    def use(self):
        self.high = max(self.high, self.current + 150)
        self.current += 100


class FakeTensorMemory:
    """Host bytes of tensors: 10 more in use after each call, peaking 80 above that inside it."""

    def __init__(self):
        self.used, self.high = 500, 500

    def reset(self):
        self.high = self.used
        return self.used

    def current(self):
        return self.used

    def peak(self):
        return self.high

    def use(self):
        self.high = max(self.high, self.used + 80)
        self.used += 10


class FakeAdapter:
    """A framework-free adapter: 'good' returns 2·x, 'broken' cannot be set up."""

    framework, baseline_name = "fake", "gradient_x_input"
    models = default_models = ("tiny",)
    methods = default_methods = ("good", "broken")

    def __init__(self):
        self.memory, self.tensors = FakeDeviceMemory(), FakeTensorMemory()

    def build(self, name, settings):
        return {"name": name}

    def input_shape(self, subject):
        return (3,)

    def inputs(self, subject, batch):
        return np.ones((batch, 3), "float32")

    def method(self, subject, name, settings):
        if name == "broken":
            raise RuntimeError("cannot rewrite")

        def relevance(x):
            self.memory.use()
            self.tensors.use()
            return 2 * x
        return harness.Call(relevance, {"name": name})

    def baseline(self, subject, settings):
        return lambda x: x

    def device_memory(self):
        return self.memory

    def tensor_memory(self):
        return self.tensors


SETTINGS = {"repeats": 2, "min_seconds": 0.0, "max_repeats": 10, "warmup": 0, "memory_calls": 1}


def test_timing_worker_records_every_method_and_batch_and_goes_on_after_an_error():
    out = harness.timing_worker(FakeAdapter(), {"model": "tiny", "batches": [1, 4],
                                                "methods": ["broken", "good"],
                                                "settings": SETTINGS})
    records = {(r["method"], r["batch"]): r for r in out["records"]}
    assert sorted(records) == [("broken", 1), ("broken", 4), ("good", 1), ("good", 4)]
    assert records["broken", 4]["error"] == "RuntimeError: cannot rewrite"
    assert records["good", 4]["timing"]["pairs"] == 2
    assert records["good", 1]["method_info"] == {"name": "good"}
    device = records["good", 1]["device_memory_in_process"]
    assert device["method"]["increase_bytes"] == 150 and device["baseline"]["increase_bytes"] == 0


def test_fresh_worker_reports_first_call_memory_and_the_output():
    out = harness.fresh_worker(FakeAdapter(), {"model": "tiny", "batch": 4, "side": "method",
                                               "method": "good", "settings": SETTINGS})
    assert out["output"] == {"shape": [4, 3], "finite": True}
    assert out["first_call"]["total_s"] >= out["first_call"]["first_batch_s"] >= 0
    rss = out["rss"]
    assert rss["increase_bytes"] == rss["peak_bytes"] - rss["current_before_bytes"]
    assert rss["increase_over_peak_bytes"] == rss["peak_bytes"] - rss["peak_before_bytes"] >= 0
    # two calls (the first and --memory-calls 1): in use 1000 -> 1200, peak 1200 + 50
    assert out["device_memory"] == {"peak_bytes": 1250, "before_bytes": 1000,
                                    "increase_bytes": 250}
    # tensors: in use 500 -> 520, peak 510 + 80
    assert out["tensor_memory"] == {"peak_bytes": 590, "before_bytes": 500,
                                    "increase_bytes": 90, "held_after_bytes": 20}


def test_tensor_memory_counts_tensorflow_tensors_in_a_fresh_worker(tmp_path):
    """``--tensor-memory``: the fresh worker runs TensorFlow's BFC allocator and reports the
    bytes its tensors took (the relevance model's weights, built after the reset, stay held)."""
    settings = {"size": 224, "seed": 0, "cache_dir": str(tmp_path), "jit": False,
                "call": "predict_on_batch", "memory_calls": 1, "threads": None,
                "tensor_memory": True}
    task = {"kind": "fresh", "model": "digits", "batch": 64, "side": "method",
            "method": "lrp_epsilon", "settings": settings}
    out = harness.run_worker("benchmarks.run", task, timeout=600)
    assert "error" not in out, out.get("error")
    tensors = out["tensor_memory"]
    batch_bytes = 64 * 28 * 28 * 4  # the relevance returned, as float32
    assert tensors["increase_bytes"] == tensors["peak_bytes"] - tensors["before_bytes"]
    assert batch_bytes < tensors["increase_bytes"] < 64 * 2 ** 20
    assert 0 < tensors["held_after_bytes"] < tensors["increase_bytes"]
