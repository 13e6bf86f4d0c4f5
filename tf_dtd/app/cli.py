"""The ``tf-dtd`` command: heatmaps, SavedModel export and a layer report from the shell.

    tf-dtd demo [--out DIR] [--rules PRESET] [--overwrite]
    tf-dtd explain MODEL INPUT... [--out DIR] [--overwrite] [relevance options] [--overlay]
                   [--cmap NAME] [--batch-size N] [--html]
    tf-dtd export MODEL OUTDIR [--overwrite] [relevance options]
    tf-dtd info MODEL [--rules PRESET] [--input-range L H] [--preprocess NAME]

relevance options: --rules PRESET, --input-range L H, --preprocess NAME (the box when
--input-range is not given), --target max|N — the same for ``explain`` and ``export``.

Exit status: 0 done; 1 the user's mistake (a missing or unreadable file, a bad model, argument or
output folder: one line ``tf-dtd: error: ...`` on stderr); 2 a malformed command line; 70 a bug
in tf_dtd (the traceback goes to a file named on stderr); 130 / 143 interrupted by SIGINT /
SIGTERM. Output appears whole or not at all (see :mod:`tf_dtd.app.output`). ``--help`` and
argument errors answer without starting TensorFlow; its start-up messages are hidden unless
``--verbose``.
"""

import argparse
import os
import sys
import warnings

import numpy as np

from tf_dtd.app import output, process
from tf_dtd.app.inputs import PREPROCESSING, load_model_file
from tf_dtd.app.output import OutputFolder
from tf_dtd.errors import TfDtdError
from tf_dtd.preset_names import BOX_PRESETS, PRESET_NAMES
from tf_dtd.visualize import COLORMAPS

__all__ = ["main"]

STREAM_ABOVE = 1024  # more image inputs than this are streamed (tf_dtd.scale.explain_files)
SHARD_SIZE = 256  # inputs per results shard when streaming


class CommandError(TfDtdError):
    """A mistake in what the user gave the command (a file, an argument); one line, status 1."""


def main(argv=None):
    """Run the ``tf-dtd`` command line; returns the exit status (see the module doc)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    with process.SignalsToExceptions(), warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args) or 0
        except process.Interrupted as interruption:
            print(f"tf-dtd: interrupted by {interruption}", file=sys.stderr)
            return interruption.exit_status
        except BrokenPipeError:  # `tf-dtd info ... | head`: the reader has all it wants
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return process.EXIT_BROKEN_PIPE
        except (TfDtdError, OSError) as error:  # a mistake in what the command was given
            if args.debug:
                raise
            print(f"tf-dtd: error: {_message(error)}", file=sys.stderr)
            return process.EXIT_ERROR
        except Exception as error:
            if args.debug:
                raise
            if _is_out_of_memory(error):
                print("tf-dtd: error: out of memory; try a smaller --batch-size", file=sys.stderr)
                return process.EXIT_ERROR
            path = process.save_traceback(error, argv)  # anything else is a bug in tf_dtd
            print(f"tf-dtd: internal error: {type(error).__name__}: {_message(error)}. This is "
                  f"a bug in tf_dtd; the traceback is in {path} (please attach it to a bug "
                  "report).", file=sys.stderr)
            return process.EXIT_BUG


def _is_out_of_memory(error):
    tf = sys.modules.get("tensorflow")  # imported by then, if it can have raised
    return isinstance(error, MemoryError) or (
        tf is not None and isinstance(error, tf.errors.ResourceExhaustedError))


def _message(error):
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else ""
        return f"{error.strerror}: {where!r}" if where else error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"tf-dtd: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="raise failures with their traceback instead of one line")
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and log messages")

    relevance = argparse.ArgumentParser(add_help=False)
    group = relevance.add_argument_group("relevance options")
    group.add_argument("--rules", default="deep_taylor_bounded", choices=PRESET_NAMES,
                       metavar="PRESET", help="rule preset: %(choices)s (default: %(default)s)")
    group.add_argument("--input-range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                       help="the box the model inputs live in, for z^B (default: from "
                            "--preprocess)")
    group.add_argument("--preprocess", default="unit", choices=PREPROCESSING,
                       help="how image pixels become model inputs, which also sets the box: "
                            "unit = /255 in [0, 1] (default), raw, tf, caffe, torch; .npy "
                            "arrays are used as they are")
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument_group("relevance options").add_argument(
        "--target", default="max", type=_target,
        help="'max' (the top class, default) or a class index")
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true",
                           help="replace an output folder that holds an earlier run")

    parser = argparse.ArgumentParser(
        prog="tf-dtd", description="Deep Taylor / LRP heatmaps for Keras models.",
        epilog="Exit status: 0 done, 1 error in the input, 2 bad command line, 70 bug in tf_dtd, "
               "130/143 interrupted. See docs/cli.md.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", parents=[common, overwrite],
                               help="explain the shipped digits model on its sample digits")
    demo.add_argument("--rules", default="deep_taylor_bounded", choices=PRESET_NAMES,
                      metavar="PRESET", help="rule preset (default: %(default)s)")
    demo.add_argument("--out", default="tf-dtd-demo", help="output folder (default: %(default)s)")
    demo.set_defaults(run=_demo)

    explain = commands.add_parser("explain", parents=[common, relevance, target, overwrite],
                                  help="heatmaps of images or .npy arrays under a model")
    explain.add_argument("model", help="a .keras or .h5 model file")
    explain.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="image files (PNG, JPEG, BMP), folders of them, or .npy arrays")
    explain.add_argument("--out", default="tf-dtd-out", help="output folder (default: %(default)s)")
    explain.add_argument("--overlay", action="store_true",
                         help="draw heatmaps over the inputs instead of alone")
    explain.add_argument("--cmap", default="bwr", choices=COLORMAPS, help="colour map")
    explain.add_argument("--batch-size", type=_positive, default=32,
                         help="inputs per batch (default: %(default)s)")
    explain.add_argument("--html", action="store_true",
                         help="also write report.html: inputs, heatmaps, overlays, top classes "
                              "(one offline page, sortable)")
    explain.set_defaults(run=_explain)

    export = commands.add_parser("export", parents=[common, relevance, target, overwrite],
                                 help="export the relevance model as a SavedModel")
    export.add_argument("model", help="a .keras or .h5 model file")
    export.add_argument("outdir", help="the SavedModel folder to write")
    export.set_defaults(run=_export)

    info = commands.add_parser("info", parents=[common, relevance],
                               help="list the layers, the rule each gets, what is unsupported")
    info.add_argument("model", help="a .keras or .h5 model file")
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


def _positive(value):
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


# --- Commands ---

def _demo(args):
    out = OutputFolder(args.out, overwrite=args.overwrite)
    out.check()
    process.import_tensorflow(args.verbose)
    import tf_dtd
    from tf_dtd import visualize
    from tf_dtd.app import digits

    model = digits.load_model()
    images, labels = digits.load_samples()
    relevance, logits = tf_dtd.explain(model, images, args.rules, input_range=digits.INPUT_RANGE,
                                       return_prediction=True)
    predicted = logits.argmax(axis=1)
    names = [f"digit_{i:02d}_label_{label}" for i, label in enumerate(labels)]
    pictures = [np.repeat(np.round(image * 255).astype("uint8"), 3, axis=-1) for image in images]
    with out:
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
    sums = relevance.reshape(len(relevance), -1).sum(axis=1)
    print(f"{np.mean(predicted == labels):.0%} correct. Rules {args.rules}: "
          f"{conservation_summary(sums, explained, args.rules)}")
    print(f"Wrote {len(names)} heatmaps and overview.png to {args.out}/")


def conservation_summary(sums, logits, rules):
    """One sentence on where the explained logits went: kept, absorbed or created relevance.

    Args:
        sums: each heatmap's total relevance.
        logits: each sample's explained logit.
        rules: the preset's name (its ε, if any, is named as an absorber).
    """
    sums, logits = np.asarray(sums, "float64"), np.asarray(logits, "float64")
    error = np.abs(sums - logits) / np.maximum(np.abs(logits), 1e-12)
    if np.max(error) < 1e-4:
        return f"each heatmap sums to its logit (within {np.max(error):.0e} relative)."
    kept = sums / np.where(logits == 0, np.nan, logits)  # each heatmap's share of its logit
    absorbed = 1.0 - np.nanmean(kept)
    where = (f"the heatmap sums range from {np.nanmin(kept):.0%} to {np.nanmax(kept):.0%} of "
             "the logit")
    if absorbed < 0:
        return (f"the rules created {-absorbed:.0%} more relevance than the logit on average "
                f"({where}).")
    absorbers = "ε and biases" if "epsilon" in rules else "biases"
    return f"{absorbers} absorbed {absorbed:.0%} of the logit on average ({where})."


def _explain(args):
    out = OutputFolder(args.out, overwrite=args.overwrite, reads=[args.model, *args.inputs])
    out.check()
    from tf_dtd.app import inputs

    files = inputs.collect(args.inputs)
    streamed = len(files) > STREAM_ABOVE and not any(f.lower().endswith(".npy") for f in files)
    if streamed and args.html:
        raise CommandError(
            f"--html makes one page for at most {STREAM_ABOVE} inputs; received {len(files)} "
            "images. Explain a part of them for the report, or leave out --html.")
    process.import_tensorflow(args.verbose)
    import tf_dtd

    model = load_model_file(args.model)
    if streamed:
        _explain_streamed(args, out, model, files)
        return
    x, names, pictures = inputs.load_inputs(files, _image_shape(model), args.preprocess)
    verbose = 1 if len(x) > args.batch_size else 0  # a progress bar (stdout) for many inputs
    relevance, logits = tf_dtd.explain(
        model, x, args.rules, input_range=_input_range(args, model), target=args.target,
        return_prediction=True, batch_size=args.batch_size, verbose=verbose)
    predicted = logits.argmax(axis=1)
    explained = predicted if args.target == "max" else np.full(len(x), args.target)
    pictures = [p if p is not None else output.as_picture(x[i]) for i, p in enumerate(pictures)]
    with out:
        _write_heatmaps(out, args, names, relevance, pictures)
        out.write("relevance.npz", lambda path: output.save_npz(
            path, relevance=relevance, logits=logits, names=np.array(names),
            explained=explained))
        rows = [(name, int(p), int(e), float(logits[i, e]), float(relevance[i].sum()))
                for i, (name, p, e) in enumerate(zip(names, predicted, explained))]
        out.write("summary.csv", lambda path: output.save_summary(path, rows))
        if args.html:
            out.write("report.html", lambda path: tf_dtd.report.html(
                path, pictures, relevance, logits, targets=explained, names=names,
                cmap=args.cmap, title=f"{model.name}: {args.rules}"))
    report = ", report.html" if args.html else ""
    print(f"Explained {len(x)} input(s) with {args.rules}; wrote {len(x)} PNGs, relevance.npz, "
          f"summary.csv{report} to {args.out}/")


def _write_heatmaps(out, args, names, relevance, pictures):
    from tf_dtd import visualize

    for i, name in enumerate(names):
        if args.overlay:
            colours = visualize.heatmap_to_rgb(relevance[i], cmap=args.cmap)
            image = visualize.overlay(pictures[i], colours, alpha=0.6)
            out.write(f"{name}.png", lambda path, im=image: visualize.save_rgb_png(path, im))
        else:
            out.write(f"{name}.png", lambda path, h=relevance[i]: visualize.save_png(
                path, h, cmap=args.cmap))


def _explain_streamed(args, out, model, files):
    """More than STREAM_ABOVE images: shards of results instead of one array in memory."""
    import tf_dtd
    from tf_dtd.scale import explain_files

    _image_shape(model)
    relevance_model = tf_dtd.relevance_model(model, args.rules, target=args.target,
                                             input_range=_input_range(args, model))
    print(f"Streaming {len(files)} images: results/ holds shards of {SHARD_SIZE} "
          "(tf_dtd.load_results reads them); heatmaps are written shard by shard.")
    with out:
        out.fill(lambda path: explain_files(
            relevance_model, files, path, preprocessing=args.preprocess,
            batch_size=args.batch_size, shard_size=SHARD_SIZE, cmap=args.cmap,
            overlay=args.overlay, verbose=1))
    print(f"Explained {len(files)} input(s) with {args.rules}; wrote {len(files)} PNGs, "
          f"results/ and summary.csv to {args.out}/")


def _export(args):
    out = OutputFolder(args.outdir, overwrite=args.overwrite, option="OUTDIR", reads=[args.model])
    out.check()
    tf, _ = process.import_tensorflow(args.verbose)
    import tf_dtd

    model = load_model_file(args.model)
    relevance_model = tf_dtd.relevance_model(model, args.rules, target=args.target,
                                             input_range=_input_range(args, model))
    with out:
        out.fill(lambda path: relevance_model.export(path, verbose=False))
    loaded = tf.saved_model.load(args.outdir)  # held: its variables must outlive the signature
    serve = loaded.signatures["serving_default"]
    (inputs,) = serve.structured_input_signature[1].values()
    (outputs,) = serve.structured_outputs.values()
    print(f"Exported {args.rules} relevance model of {model.name!r} to {args.outdir}")
    print(f"  serving_default / serve: {inputs.dtype.name}{inputs.shape.as_list()} -> "
          f"{outputs.dtype.name}{outputs.shape.as_list()}")
    print("  load with tf.saved_model.load(path).serve(x); tf_dtd is not needed to serve it")


def _info(args):
    process.import_tensorflow(args.verbose)
    from tf_dtd.relevance.plan import decide
    from tf_dtd.report.diagnosis import diagnose, format_findings
    from tf_dtd.report.info import format_plan

    model = load_model_file(args.model)
    input_range = _input_range(args, model)
    plan = decide(model, args.rules, input_range=input_range)
    print(f"Model {model.name!r}: input {model.input_shape}, output {model.output_shape}; "
          f"rules {args.rules}{_box_note(args, input_range)}")
    print(format_plan(plan))
    unsupported = [step.user_layer.name for step in plan.errors]
    if unsupported:
        raise CommandError(f"{len(unsupported)} unsupported layer(s): {', '.join(unsupported)}")
    print("\nDeep Taylor assumptions:")
    print(format_findings(diagnose(model, args.rules, input_range=input_range)))


# --- Helpers ---

def _input_range(args, model):
    """The z^B box: ``--input-range``, else the one ``--preprocess`` gives the model's inputs."""
    if args.input_range is not None:
        return tuple(args.input_range)
    from tf_dtd.app.inputs import preprocessing_box

    channels = model.input_shape[-1] if isinstance(model.input_shape, tuple) else None
    return preprocessing_box(args.preprocess, channels)


def _box_note(args, input_range):
    if args.rules not in BOX_PRESETS:
        return ""
    low, high = (np.round(np.asarray(bound, "float64"), 4).tolist() for bound in input_range)
    source = "--input-range" if args.input_range is not None else f"--preprocess {args.preprocess}"
    return f", input box [{low}, {high}] from {source}"


def _image_shape(model):
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4:
        raise CommandError(
            "tf-dtd explain reads images for models with one input of shape (height, width, 1 "
            f"or 3 channels). Received: model {model.name!r} with input shape {shape}")
    return tuple(shape[1:])
