"""What ``tf-dtd explain`` writes for many images, streamed: shards, heatmap PNGs, summary.csv."""

import io
import os

from tf_dtd import visualize
from tf_dtd.app import inputs, output
from tf_dtd.errors import InvalidArgumentError
from tf_dtd.files import atomic_write
from tf_dtd.scale.dataset import explain_dataset
from tf_dtd.scale.shards import load_results

__all__ = ["RESULTS_FOLDER", "explain_files"]

RESULTS_FOLDER = "results"


def explain_files(relevance_model, files, out, *, preprocessing="unit", batch_size=32,
                  shard_size=256, cmap="bwr", overlay=False, verbose="auto"):
    """Explain image files in bounded memory and write ``tf-dtd explain``'s outputs to ``out``.

    Runs :func:`tf_dtd.explain_dataset` into ``out/results/`` (resumable: run it again after a
    crash), then writes, one shard at a time, a heatmap PNG per image (``<stem>.png``; a repeated
    stem becomes ``<stem>~1``, ...) and ``summary.csv`` (file, predicted class, explained class,
    logit of the explained class, relevance sum), each file atomically.

    Args:
        relevance_model: a model made by :func:`tf_dtd.relevance_model`.
        files: image paths (PNG / JPEG / BMP), e.g. from ``tf_dtd.app.inputs.collect``.
        out: the output folder.
        preprocessing, batch_size, shard_size, verbose: as in :func:`tf_dtd.explain_dataset`.
        cmap: the colour map of the PNGs (``tf_dtd.visualize.COLORMAPS``).
        overlay: draw each heatmap over its image (read again, one shard at a time).

    Returns:
        The number of images explained.

    Raises:
        InvalidArgumentError: a file is not an image (``.npy`` arrays are not streamed), or an
            argument of :func:`tf_dtd.explain_dataset` is bad.

    Example:
        >>> files = tf_dtd.app.inputs.collect(["photos/"])
        >>> explain_files(relevance, files, "heatmaps", verbose=0)
    """
    files = [os.fspath(f) for f in files]
    others = [f for f in files if not f.lower().endswith(inputs.IMAGE_SUFFIXES)]
    if others:
        raise InvalidArgumentError(
            f"explain_files streams image files ({', '.join(inputs.IMAGE_SUFFIXES)}). Received: "
            f"{others[:3]}")
    os.makedirs(out, exist_ok=True)
    count = explain_dataset(relevance_model, files, os.path.join(out, RESULTS_FOLDER),
                            batch_size=batch_size, shard_size=shard_size,
                            preprocessing=preprocessing, verbose=verbose)
    sample_shape = tuple(relevance_model.inputs[0].shape[1:])

    def write_outputs(summary):  # PNGs and summary rows, one shard at a time
        names = inputs.UniqueNames()
        text = io.TextIOWrapper(summary, encoding="utf-8", newline="")
        writer = output.summary_writer(text)
        for shard in load_results(os.path.join(out, RESULTS_FOLDER)):
            pictures = (inputs.load_inputs(list(shard["id"]), sample_shape, preprocessing)[2]
                        if overlay else None)
            for i, path in enumerate(shard["id"]):
                name = names.add(os.path.splitext(os.path.basename(path))[0])
                target = os.path.join(out, f"{name}.png")
                if overlay:
                    colours = visualize.heatmap_to_rgb(shard["relevance"][i], cmap=cmap)
                    visualize.save_rgb_png(target, visualize.overlay(pictures[i], colours,
                                                                     alpha=0.6))
                else:
                    visualize.save_png(target, shard["relevance"][i], cmap=cmap)
                explained = int(shard["explained_class"][i])
                writer.writerow([name, int(shard["predicted_class"][i]), explained,
                                 float(shard["logits"][i, explained]),
                                 float(shard["relevance_sum"][i])])
        text.flush()
        text.detach()  # the binary file stays open for atomic_write

    atomic_write(os.path.join(out, "summary.csv"), write_outputs)
    return count
