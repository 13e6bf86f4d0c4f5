"""The ``tf-dtd`` command: heatmaps, SavedModel export and a layer report from the shell.

    tf-dtd demo [--out DIR]
    tf-dtd explain MODEL INPUT... [--rules PRESET] [--input-range L H] [--target max|N]
                   [--out DIR] [--overlay] [--cmap NAME] [--batch-size N] [--preprocess NAME]
    tf-dtd export MODEL OUTDIR [--rules PRESET] [--input-range L H] [--target max|N]
    tf-dtd info MODEL [--rules PRESET] [--input-range L H]

A failure (missing or corrupt model or image, unsupported layer, bad argument) prints one line on
stderr and exits with status 1 (2 for a malformed command line); ``--debug`` shows the traceback.
Outputs are written only once everything is computed, each file atomically, and the files of a
failed run are removed: no half-written output is left behind.
"""

import argparse
import csv
import io
import os
import shutil
import sys
import tempfile

import numpy as np

from tf_dtd.app.inputs import PREPROCESSING
from tf_dtd.composites import PRESETS
from tf_dtd.errors import TfDtdError
from tf_dtd.visualize import COLORMAPS

__all__ = ["main"]


_BOX_PRESETS = ("deep_taylor_bounded", "lrp_epsilon_gamma_box")  # they need an input range


class CommandError(TfDtdError):
    """A failure the command reports in one line (bad file, bad argument)."""


def main(argv=None):
    """Run the ``tf-dtd`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except Exception as error:  # one line, no traceback: the contract of the command
        if args.debug:
            raise
        known = isinstance(error, (TfDtdError, OSError, ValueError))
        kind = "" if known else f"{type(error).__name__}: "
        hint = "" if known else " (run with --debug for the traceback)"
        print(f"tf-dtd: error: {kind}{error}{hint}".replace("\n", " "), file=sys.stderr)
        return 1


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of failures")
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument("--rules", default="deep_taylor_bounded", choices=sorted(PRESETS),
                       help="rule preset (default: deep_taylor_bounded)")
    rules.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                       help="the box the model inputs live in (default: from --preprocess)")
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", default="max", type=_target,
                        help="'max' (the top class, default) or a class index")

    parser = argparse.ArgumentParser(
        prog="tf-dtd", description="Deep Taylor / LRP heatmaps for Keras models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", parents=[common],
                               help="explain the shipped digits model on its sample digits")
    demo.add_argument("--rules", default="deep_taylor_bounded", choices=sorted(PRESETS),
                      help="rule preset (default: deep_taylor_bounded)")
    demo.add_argument("--out", default="tf-dtd-demo", help="output folder (default: %(default)s)")
    demo.set_defaults(run=_demo)

    explain = commands.add_parser("explain", parents=[common, rules, target],
                                  help="heatmaps of images or .npy arrays under a model")
    explain.add_argument("model", help="a .keras or .h5 model file")
    explain.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files (PNG, JPEG, BMP), folders of them, or .npy arrays")
    explain.add_argument("--out", default="tf-dtd-out", help="output folder (default: %(default)s)")
    explain.add_argument("--overlay", action="store_true",
                         help="draw heatmaps over the inputs instead of alone")
    explain.add_argument("--cmap", default="bwr", choices=COLORMAPS, help="colour map")
    explain.add_argument("--batch-size", type=int, default=32)
    explain.add_argument("--preprocess", default="unit", choices=PREPROCESSING,
                         help="how image pixels become model inputs (default: unit = /255); "
                              ".npy arrays are used as they are")
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", parents=[common, rules, target],
                                 help="export the relevance model as a SavedModel")
    export.add_argument("model")
    export.add_argument("outdir")
    export.set_defaults(run=_export)

    info = commands.add_parser("info", parents=[common, rules],
                               help="list the layers, the rule each gets, what is unsupported")
    info.add_argument("model")
    info.set_defaults(run=_info)
    return parser


def _target(value):
    if value == "max":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'max' or a class index, got {value!r}") from None


# --- Commands ---

def _demo(args):
    import tf_dtd
    from tf_dtd import visualize
    from tf_dtd.app import digits

    model = digits.load_model()
    images, labels = digits.load_samples()
    relevance_model = tf_dtd.relevance_model(model, args.rules, input_range=digits.INPUT_RANGE,
                                             return_prediction=True)
    relevance, logits = relevance_model.predict(images, verbose=0)
    predicted = logits.argmax(axis=1)
    names = [f"digit_{i:02d}_label_{label}" for i, label in enumerate(labels)]
    pictures = [np.repeat(np.round(image * 255).astype("uint8"), 3, axis=-1) for image in images]
    with _Output(args.out) as out:
        for name, heatmap in zip(names, relevance):
            out.write(f"{name}.png", lambda path, h=heatmap: visualize.save_png(path, h))
        tiles, captions = [], []
        for start in range(0, len(images), 10):
            rows = slice(start, start + 10)
            tiles += pictures[rows] + list(visualize.heatmap_to_rgb(relevance[rows]))
            captions += [f"{label}" for label in labels[rows]]
            captions += [f"->{p}" for p in predicted[rows]]
        overview = visualize.grid(tiles, captions=captions, columns=10, scale=3)
        out.write("overview.png", lambda path: visualize.save_rgb_png(path, overview))
    print(f"{'sample':<24}{'label':>6}{'predicted':>10}{'logit':>10}{'relevance sum':>15}")
    for i, name in enumerate(names):
        logit = logits[i, predicted[i]]
        print(f"{name:<24}{labels[i]:>6}{predicted[i]:>10}{logit:>10.4f}"
              f"{relevance[i].sum():>15.4f}")
    explained = logits[np.arange(len(logits)), predicted]
    error = np.abs(relevance.reshape(len(relevance), -1).sum(axis=1) - explained)
    print(f"{np.mean(predicted == labels):.0%} correct. Rules {args.rules}: the heatmaps sum to "
          f"the logit within {np.max(error / np.abs(explained)):.1e} (relative).")
    print(f"Wrote {len(names)} heatmaps and overview.png to {args.out}/")


def _explain(args):
    import tf_dtd
    from tf_dtd import visualize
    from tf_dtd.app import inputs

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1. Received: {args.batch_size}")
    model = _load_model(args.model)
    files = inputs.collect(args.inputs)
    input_shape = tuple(model.input_shape[1:])
    x, names, pictures = inputs.load_inputs(files, input_shape, args.preprocess)
    input_range = args.input_range or inputs.preprocessing_box(args.preprocess, input_shape[-1])
    relevance_model = tf_dtd.relevance_model(model, args.rules, input_range=input_range,
                                             target=args.target, return_prediction=True)
    verbose = 1 if len(x) > args.batch_size else 0  # a progress bar for many inputs
    relevance, logits = relevance_model.predict(x, batch_size=args.batch_size, verbose=verbose)
    predicted = logits.argmax(axis=1)
    explained = predicted if args.target == "max" else np.full(len(x), args.target)
    with _Output(args.out) as out:
        for i, name in enumerate(names):
            if args.overlay:
                picture = pictures[i] if pictures[i] is not None else _as_picture(x[i])
                colours = visualize.heatmap_to_rgb(relevance[i], cmap=args.cmap)
                image = visualize.overlay(picture, colours, alpha=0.6)
                out.write(f"{name}.png", lambda path, im=image: visualize.save_rgb_png(path, im))
            else:
                out.write(f"{name}.png", lambda path, h=relevance[i]: visualize.save_png(
                    path, h, cmap=args.cmap))
        out.write("relevance.npz", lambda path: _save_npz(
            path, relevance=relevance, logits=logits, names=np.array(names),
            explained=explained))
        rows = [(name, int(p), int(e), float(logits[i, e]), float(relevance[i].sum()))
                for i, (name, p, e) in enumerate(zip(names, predicted, explained))]
        out.write("summary.csv", lambda path: _save_csv(path, rows))
    print(f"Explained {len(x)} input(s) with {args.rules}; wrote {len(x)} PNGs, relevance.npz "
          f"and summary.csv to {args.out}/")


def _export(args):
    import tensorflow as tf

    import tf_dtd

    if args.input_range is None and args.rules in _BOX_PRESETS:
        raise CommandError(f"--rules {args.rules} needs the input box: pass --input-range LOW "
                           "HIGH, e.g. --input-range 0 1 for inputs in [0, 1].")
    model = _load_model(args.model)
    outdir = os.path.abspath(args.outdir)
    if os.path.exists(outdir) and (not os.path.isdir(outdir) or os.listdir(outdir)):
        raise CommandError(f"{args.outdir!r} exists and is not an empty folder.")
    relevance_model = tf_dtd.relevance_model(model, args.rules, input_range=args.input_range,
                                             target=args.target)
    parent = os.path.dirname(outdir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tf-dtd-export-", dir=parent)
    try:
        relevance_model.export(staging, verbose=False)
        if os.path.isdir(outdir):
            os.rmdir(outdir)  # empty, checked above
        os.replace(staging, outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    loaded = tf.saved_model.load(outdir)  # held: its variables must outlive the signature
    serve = loaded.signatures["serving_default"]
    (inputs,) = serve.structured_input_signature[1].values()
    (outputs,) = serve.structured_outputs.values()
    print(f"Exported {args.rules} relevance model of {model.name!r} to {args.outdir}")
    print(f"  serving_default / serve: {inputs.dtype.name}{inputs.shape.as_list()} -> "
          f"{outputs.dtype.name}{outputs.shape.as_list()}")
    print("  load with tf.saved_model.load(path).serve(x); tf_dtd is not needed to serve it")


def _info(args):
    from tf_dtd.relevance.plan import decide
    from tf_dtd.report.info import format_plan

    model = _load_model(args.model)
    input_range = args.input_range
    note = ""
    if input_range is None and args.rules in _BOX_PRESETS:
        input_range, note = (0.0, 1.0), " (input range assumed [0, 1]; see --input-range)"
    plan = decide(model, args.rules, input_range=input_range)
    print(f"Model {model.name!r}: input {model.input_shape}, output {model.output_shape}; "
          f"rules {args.rules}{note}")
    print(format_plan(plan))
    unsupported = [step.user_layer.name for step in plan.errors]
    if not unsupported:
        from tf_dtd.report.diagnosis import diagnose, format_findings

        print("\nDeep Taylor assumptions:")
        print(format_findings(diagnose(model, args.rules, input_range=input_range)))
    if unsupported:
        raise CommandError(f"{len(unsupported)} unsupported layer(s): {', '.join(unsupported)}")


# --- Helpers ---

def _load_model(path):
    import keras

    import tf_dtd  # noqa: F401  (registers tf_dtd layers, for saved relevance models)

    if not os.path.exists(path):
        raise CommandError(f"Model file {path!r} does not exist.")
    if os.path.isdir(path) or not path.endswith((".keras", ".h5")):
        raise CommandError(f"Model {path!r} must be a .keras or .h5 file.")
    try:
        return keras.models.load_model(path)
    except Exception as error:
        raise CommandError(f"Cannot read model {path!r}: {type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}") from error


def _as_picture(sample):
    """A model input without a source image (``.npy``), min-max scaled to RGB uint8."""
    low, high = float(sample.min()), float(sample.max())
    scaled = (sample - low) / (high - low) if high > low else np.zeros_like(sample)
    picture = np.round(scaled * 255).astype("uint8")
    return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture


def _save_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def _save_csv(path, rows):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "predicted_class", "explained_class", "logit", "relevance_sum"])
    writer.writerows(rows)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.getvalue())


class _Output:
    """An output folder whose files appear whole or not at all.

    Each file is written to a temporary name and renamed into place; if the ``with`` block
    fails, the files it wrote (and the folder, if it created it) are removed again.
    """

    def __init__(self, folder):
        self.folder = folder
        self.written = []

    def __enter__(self):
        self.created = not os.path.isdir(self.folder)
        os.makedirs(self.folder, exist_ok=True)
        return self

    def write(self, name, save):
        """Call ``save(temporary_path)``, then move the file to ``folder/name``."""
        final = os.path.join(self.folder, name)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(name)[1],
                                             dir=self.folder)
        os.close(handle)
        try:
            save(temporary)
            os.replace(temporary, final)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        self.written.append(final)

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            for path in self.written:
                if os.path.exists(path):
                    os.remove(path)
            if self.created and not os.listdir(self.folder):
                os.rmdir(self.folder)
        return False
