"""Markdown tables from benchmark JSON files; merges tf_dtd's and the peers' results.

    python -m benchmarks.report benchmarks/results/performance.json \\
        benchmarks/results/innvestigate.json benchmarks/results/zennit.json

Standard library only. Times are medians in seconds; the ratio column is the median of the
per-pair ratios ``method / baseline`` with its quartiles in brackets and its range after them;
memory is the peak resident set size (CPU) or the device's peak bytes (GPU), in MiB, and "+"
the increase of that peak over the memory in use after the model was built. Where a result
counted its tensors' bytes (``--tensor-memory``), a last column gives their peak's increase over
the bytes in use after the build, method / baseline, and what the method's held after its calls.
``--ratios`` prints the ratios alone: one row per model, method and XLA setting, one column per
batch size (a result in a later file replaces one of the same row and batch in an earlier file).
"""

import argparse
import json

__all__ = ["describe", "format_ratios", "format_table", "main"]

MIB = 2.0 ** 20
COLUMNS = ("framework", "model", "input", "batch", "method", "XLA", "method s",
           "gradient×input s", "ratio median [IQR] (min–max)", "pairs",
           "first call s: method / g×i", "peak MiB: method / g×i", "+MiB: method / g×i")
TENSOR_COLUMN = "tensors +MiB: method / g×i; held"


def _seconds(value):
    return "—" if value is None else f"{value:.3g}"


def _mib(memory, side, key):
    if not memory or not memory.get(side):
        return "—"
    return f"{memory[side][key] / MIB:.0f}"


def _row(record, with_tensors=False):
    timing = record.get("timing")
    if timing:
        ratio = timing["ratio"]
        times = (_seconds(timing["method_s"]["median"]), _seconds(timing["baseline_s"]["median"]),
                 f"{ratio['median']:.2f} [{ratio['q25']:.2f}–{ratio['q75']:.2f}] "
                 f"({ratio['min']:.2f}–{ratio['max']:.2f})", str(timing["pairs"]))
    else:
        problem = (record.get("errors") or {}).get("timing") or "—"
        times = ("—", "—", "skipped" if problem.startswith("skipped") else
                 "error" if problem != "—" else "—", "0")
    first = record.get("first_call") or {}
    first_cell = " / ".join(_seconds((first.get(side) or {}).get("total_s"))
                            for side in ("method", "baseline"))
    memories = record.get("memory") or {}
    memory = memories.get("device") if record.get("device") == "GPU" else memories.get("rss")
    peak = f"{_mib(memory, 'method', 'peak_bytes')} / {_mib(memory, 'baseline', 'peak_bytes')}"
    increase = (f"{_mib(memory, 'method', 'increase_bytes')} / "
                f"{_mib(memory, 'baseline', 'increase_bytes')}")
    shape = record.get("input_shape")
    cells = (record["framework"], record["model"],
             "×".join(map(str, shape)) if shape else "—", str(record["batch"]),
             record["method"], "on" if record.get("jit") else "off", *times, first_cell, peak,
             increase)
    if with_tensors:
        tensors = memories.get("tensors")
        cells += (f"{_mib(tensors, 'method', 'increase_bytes')} / "
                  f"{_mib(tensors, 'baseline', 'increase_bytes')}; "
                  f"{_mib(tensors, 'method', 'held_after_bytes')}",)
    return "| " + " | ".join(cells) + " |"


def format_table(results):
    """One markdown table row per result record (see docs/performance.md for the schema)."""
    with_tensors = any((record.get("memory") or {}).get("tensors") for record in results)
    columns = COLUMNS + (TENSOR_COLUMN,) if with_tensors else COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [_row(record, with_tensors) for record in results]
    errors = [(record, stage, text) for record in results
              for stage, text in (record.get("errors") or {}).items()]
    if errors:
        lines.append("")
    for record, stage, text in errors:
        lines.append(f"- {record['framework']} {record['model']} batch {record['batch']} "
                     f"{record['method']} XLA={record.get('jit')}: {stage}: "
                     f"{text.strip().splitlines()[-1] if text.strip() else text}")
    return "\n".join(lines)


def format_ratios(results):
    """The median ratio [quartiles] of each model, method and XLA setting (rows) per batch
    (columns), in the order the rows first appear; "—" where a batch was not timed."""
    cells, batches = {}, set()
    for record in results:
        timing = record.get("timing")
        if not timing:
            continue
        ratio = timing["ratio"]
        key = (record["model"], record["method"], "on" if record.get("jit") else "off")
        cells.setdefault(key, {})[record["batch"]] = (
            f"{ratio['median']:.2f} [{ratio['q25']:.2f}–{ratio['q75']:.2f}]")
        batches.add(record["batch"])
    batches = sorted(batches)
    lines = ["| model | method | XLA | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|" + "---|" * (3 + len(batches))]
    lines += ["| " + " | ".join([*key, *(row.get(b, "—") for b in batches)]) + " |"
              for key, row in cells.items()]
    return "\n".join(lines)


def describe(document):
    """One line about the machine and the framework a result document was measured on."""
    machine = document["machine"]
    environment = machine.get("framework_environment") or {}
    versions = ", ".join(f"{name} {version}" for name, version in
                         (environment.get("versions") or {}).items())
    return (f"{document['framework']} ({versions}) on {machine['cpu_model']}, "
            f"{machine['usable_cpus']} of {machine['logical_cpus']} CPUs usable, "
            f"devices {environment.get('devices')}, oneDNN {environment.get('onednn')}, "
            f"load {machine['load_average_at_start'][0]:.1f} → "
            f"{machine.get('load_average_at_end', [float('nan')])[0]:.1f}, {machine['date']}")


def main(argv=None):
    """Print the machine line of every file and one table of all their results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="JSON files written by the benchmarks")
    parser.add_argument("--ratios", action="store_true",
                        help="only the ratios: a row per model and method, a column per batch")
    args = parser.parse_args(argv)
    documents = []
    for path in args.paths:
        with open(path) as source:
            documents.append(json.load(source))
    for document in documents:
        print(f"- {describe(document)}")
    print()
    results = [record for document in documents for record in document["results"]]
    print(format_ratios(results) if args.ratios else format_table(results))


if __name__ == "__main__":
    main()
