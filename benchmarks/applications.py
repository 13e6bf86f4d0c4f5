"""Coverage of keras.applications: rewrite each family and measure logits and conservation.

Every model is built with ``weights=None`` (nothing downloads), ``classes=10``, its smallest
legal input size and no classifier activation. Random weights with the default BatchNorm
statistics shrink activations towards 1e-20 in the deeper families, so the BatchNorm statistics
are first set from one batch of random images (``calibrate_batch_norm``), which gives activations
of the scale a trained network has. Prints a markdown table (the one in docs/architectures.md):

    python benchmarks/applications.py [--presets lrp_epsilon_plus deep_taylor_bounded] [NAME ...]

A preset name followed by ``+bn_pass`` also passes relevance unchanged through the BatchNorm
layers that cannot be folded (``by_type={BatchNormalization: Pass()}``).
"""

import argparse
import dataclasses
import time

import keras
import numpy as np

import tf_dtd
from tf_dtd import composites, rules

A = keras.applications

# name -> (constructor, smallest input size, the layers that make the family)
APPLICATIONS = {
    "VGG16": (A.VGG16, 32, "Conv2D, MaxPooling2D, Flatten, Dense"),
    "VGG19": (A.VGG19, 32, "Conv2D, MaxPooling2D, Flatten, Dense"),
    "ResNet50": (A.ResNet50, 32, "Conv2D+BN, Add (residual), ZeroPadding2D"),
    "ResNet50V2": (A.ResNet50V2, 32, "pre-activation BN, Add, ZeroPadding2D"),
    "ResNet101": (A.ResNet101, 32, "Conv2D+BN, Add (residual)"),
    "MobileNet": (A.MobileNet, 32, "DepthwiseConv2D+BN, ReLU6, Reshape"),
    "MobileNetV2": (A.MobileNetV2, 32, "DepthwiseConv2D, ReLU6, Add (linear bottleneck)"),
    "MobileNetV3Small": (A.MobileNetV3Small, 32,
                         "DepthwiseConv2D, SE gate (Multiply), hard_swish, x+3 / x*(1/6) ops"),
    "MobileNetV3Large": (A.MobileNetV3Large, 32,
                         "DepthwiseConv2D, SE gate (Multiply), hard_swish, ops"),
    "DenseNet121": (A.DenseNet121, 32, "Concatenate, pre-activation BN, AveragePooling2D"),
    "InceptionV3": (A.InceptionV3, 75, "Concatenate, AveragePooling2D, Conv2D+BN"),
    "InceptionResNetV2": (A.InceptionResNetV2, 75,
                          "Concatenate, CustomScaleLayer (scaled residual)"),
    "Xception": (A.Xception, 71, "SeparableConv2D+BN, Add"),
    "NASNetMobile": (A.NASNetMobile, 32,
                     "SeparableConv2D, Cropping2D, AveragePooling2D, Add, Concatenate"),
    "EfficientNetB0": (A.EfficientNetB0, 32,
                       "Rescaling+Normalization, DepthwiseConv2D, SE gate, swish"),
    "EfficientNetV2B0": (A.EfficientNetV2B0, 32,
                         "Rescaling+Normalization, DepthwiseConv2D, SE gate, swish"),
    "ConvNeXtTiny": (A.ConvNeXtTiny, 32,
                     "LayerNormalization, Dense on 4-D, gelu, LayerScale, x + y op"),
}

INPUT_RANGE = (0.0, 255.0)  # keras.applications take raw pixels (their preprocessing aside)


def build(name, seed=0):
    """The application ``name`` with random weights and calibrated BatchNorm statistics."""
    constructor, size, _ = APPLICATIONS[name]
    keras.utils.set_random_seed(seed)
    model = constructor(weights=None, classes=10, input_shape=(size, size, 3),
                        classifier_activation=None)
    calibrate_batch_norm(model, images(8, size, seed + 1))
    return model


def images(count, size, seed=0):
    """Random RGB images in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def calibrate_batch_norm(model, batch):
    """Set every BatchNorm's moving statistics to those of ``batch`` (one training pass with
    momentum 0); dropout draws in that pass do not matter for the statistics' scale."""
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    model(batch, training=True)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def composite(preset):
    """The Composite of a preset name, with the ``+bn_pass`` variant (see the module doc)."""
    name, _, variant = preset.partition("+")
    result = composites.resolve(name, INPUT_RANGE)
    if variant == "bn_pass":
        by_type = {**result.by_type, keras.layers.BatchNormalization: rules.Pass()}
        result = dataclasses.replace(result, by_type=by_type)
    elif variant:
        raise ValueError(f"Unknown preset variant {variant!r} in {preset!r}")
    return result


def measure(model, x, preset):
    """Rewrite ``model`` under ``preset`` (see :func:`composite`) and explain ``x``.

    Returns:
        dict with the relevance, the relevance model's logits, the original logits, the
        relative logit error, the per-sample relative conservation error
        ``|ΣR − f_c| / |f_c|`` of the explained (top) class, and the rewrite time.
    """
    start = time.perf_counter()
    relevance_model = tf_dtd.relevance_model(model, composite(preset), return_prediction=True)
    rewrite_s = time.perf_counter() - start
    relevance, logits = relevance_model.predict(x, verbose=0)
    reference = model.predict(x, verbose=0)
    explained = reference[np.arange(len(x)), reference.argmax(axis=1)]
    sums = relevance.reshape(len(x), -1).sum(axis=1)
    return dict(
        relevance=relevance, logits=logits, reference=reference, rewrite_s=rewrite_s,
        logit_error=float(np.max(np.abs(logits - reference)) / np.max(np.abs(reference))),
        conservation=np.abs(sums - explained) / np.abs(explained),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(APPLICATIONS))
    parser.add_argument("--presets", nargs="+",
                        default=["lrp_epsilon_plus", "deep_taylor_bounded",
                                 "deep_taylor_bounded+bn_pass"])
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    header = " | ".join(f"conservation error, {preset} (median / max)" for preset in args.presets)
    print(f"| family | input | layers involved | logit error | {header} |")
    print("|---" * (4 + len(args.presets)) + "|")
    for name in args.names:
        model = build(name)
        x = images(args.samples, model.input_shape[1], seed=2)
        cells, logit_error = [], 0.0
        for preset in args.presets:
            result = measure(model, x, preset)
            logit_error = max(logit_error, result["logit_error"])
            error = result["conservation"]
            cells.append(f"{np.median(error):.1e} / {np.max(error):.1e}")
        size = model.input_shape[1]
        print(f"| {name} | {size}² | {APPLICATIONS[name][2]} | {logit_error:.0e} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
