"""Winner-take-all max-pooling behind an explicit ZeroPadding, against a float64 NumPy loop.

ResNetV2 pads the stem convolution's signed, linear output with zeros and max-pools it with a
``valid`` 3×3 window. Where a border window's real inputs are all negative, a padded zero is its
maximum: before, its relevance went to the padding and was cropped away (3.6 % of the logit on
a trained ResNet50V2). Such a window is a unit that no input explains; its relevance is spread
over the window's real inputs in proportion to their magnitude.
"""

import keras
import numpy as np
import pytest

import tf_dtd

L = keras.layers


def _model(pool, strides, pad):
    inputs = keras.Input((7, 7, 2))
    h = L.ZeroPadding2D(pad, name="pad")(inputs)
    h = L.MaxPooling2D(pool, strides=strides, name="pool")(h)
    # As in ResNetV2: a BatchNorm that cannot fold (its shift keeps a pooled zero's unit on;
    # under z⁺ relevance passes through it), then ReLU.
    h = L.ReLU()(L.BatchNormalization(beta_initializer="ones", name="preact_bn")(h))
    positive = keras.initializers.RandomUniform(0.1, 1.0, seed=3)
    outputs = L.Dense(3, use_bias=False, kernel_initializer=positive)(L.Flatten()(h))
    return keras.Model(inputs, outputs)


def _signed_input(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, 7, 7, 2))
    x[:, :3, :3, :] = -np.abs(x[:, :3, :3, :])       # a negative corner: padding wins there
    x[:, 4, 4, 0] = x[:, 4, 5, 0] = 5.0                # an exact tie inside
    return x.astype("float32")


def _reference(x, arriving, pool, strides, pad):
    """Relevance at the (unpadded) input: per window, shared equally by the real inputs that
    attain its maximum; a window whose maximum only padding attains, by |x| over its inputs."""
    x = x.astype("float64")
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c))
    padded[:, pad:pad + h, pad:pad + w] = x
    real = np.zeros(padded.shape[1:3], bool)
    real[pad:pad + h, pad:pad + w] = True
    result = np.zeros_like(padded)
    for b in range(n):
        for k in range(c):
            for i in range(arriving.shape[1]):
                for j in range(arriving.shape[2]):
                    rows = slice(i * strides, i * strides + pool)
                    cols = slice(j * strides, j * strides + pool)
                    window = padded[b, rows, cols, k]
                    inside = real[rows, cols]
                    winners = inside & (window == window.max())
                    if winners.any():
                        weights = winners.astype("float64")
                    else:
                        weights = inside * np.abs(window)
                        if weights.sum() == 0:
                            weights = inside.astype("float64")
                    result[b, rows, cols, k] += arriving[b, i, j, k] * weights / weights.sum()
    return result[:, pad:pad + h, pad:pad + w]


@pytest.mark.parametrize("pool, strides, pad", [(3, 2, 1), (2, 2, 1), (3, 1, 1)])
def test_padded_max_pooling_matches_the_reference(pool, strides, pad):
    model = _model(pool, strides, pad)
    x = _signed_input(pool + strides)
    relevance_model = tf_dtd.relevance_model(model, "deep_taylor", layers=["pool"])
    out = relevance_model.predict(x, verbose=0)
    arriving = out["layers"]["pool"].astype("float64")
    expected = _reference(x, arriving, pool, strides, pad)
    np.testing.assert_allclose(out["relevance"], expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    # Nothing lost on the padding: the input relevance sums to what reached the pooling.
    np.testing.assert_allclose(out["relevance"].sum(axis=(1, 2, 3)),
                               arriving.sum(axis=(1, 2, 3)), rtol=1e-5)
    # The case is real: windows won by padding alone receive relevance.
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    corner = padded[:, :pool, :pool, :]
    assert np.all(corner.max(axis=(1, 2)) == 0) and np.all(arriving[:, 0, 0, :] > 0)


def test_the_reference_sees_relevance_lost_on_the_padding():
    # The routing this replaces: the padded zero that wins takes the relevance, and cropping
    # the padding drops it. The reference's sums differ from it by exactly that.
    pool, strides, pad = 3, 2, 1
    x = _signed_input(0).astype("float64")
    arriving = np.ones((3, 4, 4, 2))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    won_by_padding = 0
    for i in range(4):
        for j in range(4):
            window = padded[:, i * 2:i * 2 + 3, j * 2:j * 2 + 3, :]
            won_by_padding += np.sum(window.max(axis=(1, 2)) == 0)
    assert won_by_padding > 0
    expected = _reference(x.astype("float32"), arriving, pool, strides, pad)
    np.testing.assert_allclose(expected.sum(), arriving.sum())


def test_padded_max_pooling_survives_save_and_load(tmp_path):
    model = _model(3, 2, 1)
    x = _signed_input(1)
    relevance_model = tf_dtd.relevance_model(model, "deep_taylor")
    relevance_model.save(tmp_path / "relevance.keras")
    loaded = keras.models.load_model(tmp_path / "relevance.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  relevance_model.predict(x, verbose=0))
    pooling = next(layer for layer in loaded.layers if layer.get_config().get("zero_padding"))
    assert pooling.get_config()["zero_padding"] == [[1, 1], [1, 1]]


def _window_reference(x, arriving, pool, strides, padding, zero_padding=None):
    """Channels-last float64 loop over every window of an N-d max-pooling: the window's
    relevance shared equally by the real inputs that attain its maximum; TensorFlow's "same"
    padding takes no part; a window whose maximum only ``zero_padding`` attains, by |x|."""
    x = x.astype("float64")
    spatial = x.shape[1:-1]
    outputs = arriving.shape[1:-1]
    before = [0] * len(spatial)
    if padding == "same":
        before = [max((o - 1) * s + p - n, 0) // 2
                  for n, p, s, o in zip(spatial, pool, strides, outputs)]
    real = np.ones(spatial, bool)
    if zero_padding is not None:
        real[:] = False
        real[tuple(slice(a, n - b) for n, (a, b) in zip(spatial, zero_padding))] = True
    result = np.zeros_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[-1]):
            for out in np.ndindex(*outputs):
                cells = [idx for idx in np.ndindex(*pool)
                         if all(0 <= o * s + d - p0 < n for o, s, d, p0, n in
                                zip(out, strides, idx, before, spatial))]
                cells = [tuple(o * s + d - p0 for o, s, d, p0 in zip(out, strides, idx, before))
                         for idx in cells]
                values = np.array([x[(b, *cell, c)] for cell in cells])
                inside = np.array([real[cell] for cell in cells])
                winners = inside & (values == values.max())
                weights = winners.astype("float64")
                if not winners.any():
                    weights = inside * np.abs(values)
                    if weights.sum() == 0:
                        weights = inside.astype("float64")
                for cell, weight in zip(cells, weights / weights.sum()):
                    result[(b, *cell, c)] += arriving[(b, *out, c)] * weight
    return result


@pytest.mark.parametrize("rank, pool, strides, padding, zero_padding, channels_first", [
    (2, (2, 2), (2, 2), "valid", None, False),      # VGG: disjoint windows (a row left over)
    (2, (3, 2), (3, 2), "same", None, True),        # disjoint, but "same" pads the rows
    (2, (3, 2), (3, 2), "valid", None, True),       # disjoint, a row left over
    (3, (1, 2, 5), (1, 2, 5), "valid", None, False),
    (2, (3, 3), (2, 2), "same", None, False),       # ResNet50: overlapping, "same"
    (2, (3, 2), (1, 2), "same", None, True),
    (2, (3, 3), (2, 2), "valid", ((1, 1), (1, 1)), False),  # ResNetV2 behind ZeroPadding
    (2, (2, 2), (3, 3), "valid", None, False),      # gaps between windows
    (1, (3,), (2,), "same", None, False),
    (1, (2,), (1,), "valid", None, True),
    (3, (2, 2, 2), (2, 1, 2), "same", None, False),
    (2, (3, 3), (1, 1), "same", None, False),       # Inception's 3×3, stride 1
    (2, (2, 3), (3, 2), "same", None, True),        # gaps on one axis, overlap on the other
    (3, (3, 2, 2), (2, 2, 1), "valid", None, True),
])
def test_max_pooling_windows_match_a_loop(rank, pool, strides, padding, zero_padding,
                                          channels_first):
    from tf_dtd.relevance.pooling import MaxPoolRelevance  # the layer itself, random data

    rng = np.random.default_rng(rank + sum(pool))
    shape = (2, *((7, 6, 5)[:rank]), 3)
    x = rng.integers(-2, 3, size=shape).astype("float32")  # few values: many exact ties
    if zero_padding is not None:
        x[:, :1] = x[:, -1:] = x[:, :, :1] = x[:, :, -1:] = 0  # the padded border
        x[:, 1:4, 1:4] = -np.abs(x[:, 1:4, 1:4]) - 1           # windows won by padding
    data_format = "channels_first" if channels_first else "channels_last"
    layer = getattr(L, f"MaxPooling{rank}D")(pool, strides=strides, padding=padding,
                                             data_format=data_format)
    fed = np.moveaxis(x, -1, 1) if channels_first else x
    out_shape = layer.compute_output_shape(fed.shape)
    arriving = rng.uniform(0.5, 2.0, size=out_shape).astype("float32")
    relevance = MaxPoolRelevance(layer, zero_padding=zero_padding)([fed, arriving])
    relevance = np.asarray(relevance)
    if channels_first:
        relevance, arriving = np.moveaxis(relevance, 1, -1), np.moveaxis(arriving, 1, -1)
    expected = _window_reference(x, arriving.astype("float64"), pool, strides, padding,
                                 zero_padding)
    np.testing.assert_allclose(relevance, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(relevance.sum(), arriving.sum(), rtol=1e-5)
