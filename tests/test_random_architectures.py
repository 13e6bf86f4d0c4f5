"""Hypothesis-generated Functional models: the rewriter's invariants on architectures nobody wrote.

The strategies draw a *recipe* — plain data that shrinks well and prints readably — and its
inputs; :func:`build` turns the recipe into a tiny Functional model. Four families:

- ``conv2d``: 8×8×2 images; Conv2D (plain, strided, dilated), max/average pooling;
- ``conv1d``: length-12 signals with 2 channels; Conv1D (plain, strided, dilated, causal),
  max/average pooling;
- ``dense``: 12-vectors; a Dense stack;
- ``dense3d``: (6, 3) sequences; Dense acting on the last axis, 1-D max/average pooling.

Every family has Add and Concatenate blocks fed by fan-out, BatchNorm right after a linear kernel
layer (foldable) or after an Add (not foldable: a shift, i.e. a bias), a nested Sequential
(kernel, BatchNorm, activation) and a nested Functional model (kernel, a Sequential inside it,
fan-out into an Add). Kernel layers carry one of relu, ReLU(6), LeakyReLU, ELU, tanh, sigmoid,
swish, gelu or linear, fused or as a separate layer. The head is Flatten or global pooling, then a
Dense with a fused softmax, a ``Softmax`` layer or a linear output. Biases and BatchNorm
statistics are random (a foldable BatchNorm of a bias-free recipe only scales). The inputs are
drawn on the grid k/16 in [0, 1], zeros and ones included, half the batches sparse.

A *regime* steers the strategy towards the preconditions of the properties; which properties run
is decided by the recipe itself (:attr:`Recipe.bias_free`, :attr:`Recipe.relu`):

1. every recipe: the rewrite succeeds under a drawn preset and the relevance model's logits equal
   the original's pre-softmax logits;
2. bias-free recipes with only foldable BatchNorms, in float64: LRP-0 conserves the top logit
   (``|ΣR − f_c| ≤ 1e-5·|f_c|``, see :func:`_assert_conserves`) on signed inputs, leaving out
   samples where a sigmoid sits at σ(0) = 1/2 (a bias in effect); on every recipe — biases,
   unfoldable BatchNorms, any activation — Deep Taylor (z^B + z⁺) conserves the samples with
   ``f_c > 0`` (z^B and z⁺ leave biases out and spread what they cannot credit);
3. every recipe: z⁺, z^B + z⁺, w² + z⁺ and α1β0 relevance is non-negative where the explained
   logit is;
4. every recipe: a batch of n equals n batches of 1, and a shuffled batch gives shuffled results;
5. every recipe: the user's model is untouched (weights byte for byte, config, inbound nodes).

ReLU recipes whose top logit is ≤ 0 on every sample (a dead net) are rejected with ``assume``
(about 8 % of the drawn examples). The default run draws 6 examples per family, ``-m slow`` 240.
"""

import contextlib
import dataclasses

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tf_dtd

L = keras.layers

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid", "swish", "gelu", "linear")
RELUS = ("relu", "relu6")
OUTPUTS = ("softmax", "softmax_layer", "linear")
DEEP_TAYLOR = ("deep_taylor", "deep_taylor_bounded", "deep_taylor_unbounded", "lrp_alpha_1_beta_0")
CLASSES = 4
BATCH = 4
BOX = (0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Family:
    """Input shape, kernel layers by block name, and the pooling layers of one model family."""

    input_shape: tuple
    kernels: dict  # block name -> (filters, **kwargs) -> a Dense or convolution layer
    pools: dict = dataclasses.field(default_factory=dict)  # max, avg, global_max, global_avg
    heads: tuple = ("flatten", "global_max", "global_avg")


FAMILIES = {
    "conv2d": Family(
        (8, 8, 2),
        {"kernel": lambda f, **kw: L.Conv2D(f, 3, padding="same", **kw),
         "strided": lambda f, **kw: L.Conv2D(f, 2, strides=2, **kw),
         "dilated": lambda f, **kw: L.Conv2D(f, 3, padding="same", dilation_rate=2, **kw)},
        {"max": lambda: L.MaxPooling2D(2, padding="same"),
         "avg": lambda: L.AveragePooling2D(2, strides=1, padding="same"),
         "global_max": L.GlobalMaxPooling2D, "global_avg": L.GlobalAveragePooling2D}),
    "conv1d": Family(
        (12, 2),
        {"kernel": lambda f, **kw: L.Conv1D(f, 3, padding="same", **kw),
         "strided": lambda f, **kw: L.Conv1D(f, 2, strides=2, **kw),
         "dilated": lambda f, **kw: L.Conv1D(f, 3, padding="same", dilation_rate=2, **kw),
         "causal": lambda f, **kw: L.Conv1D(f, 2, padding="causal", dilation_rate=2, **kw)},
        {"max": lambda: L.MaxPooling1D(2, padding="same"),
         "avg": lambda: L.AveragePooling1D(3, strides=1, padding="same"),
         "global_max": L.GlobalMaxPooling1D, "global_avg": L.GlobalAveragePooling1D}),
    "dense": Family((12,), {"kernel": lambda f, **kw: L.Dense(f, **kw)}, heads=("none",)),
    "dense3d": Family(
        (6, 3),
        {"kernel": lambda f, **kw: L.Dense(f, **kw)},
        {"max": lambda: L.MaxPooling1D(2, padding="same"),
         "avg": lambda: L.AveragePooling1D(2, strides=1, padding="same"),
         "global_max": L.GlobalMaxPooling1D, "global_avg": L.GlobalAveragePooling1D}),
}
SHARED_BLOCKS = ("add", "concat", "kernel_bn", "nested_sequential", "nested_functional")
SHIFTED_BLOCKS = ("bn",)  # BatchNorm after an Add: not foldable, its shift is a bias
POOL_BLOCKS = ("max_pool", "avg_pool")

# regime -> (activations, bias choices, may use unfoldable BatchNorm)
REGIMES = {
    "any": (ACTIVATIONS, (False, True), True),
    "bias_free": (ACTIVATIONS, (False,), False),
    "relu": (RELUS, (False, True), False),
    "relu_bias_free": (RELUS, (False,), False),
}


def family_blocks(name, shifted=True):
    family = FAMILIES[name]
    return (tuple(family.kernels) + SHARED_BLOCKS + (SHIFTED_BLOCKS if shifted else ())
            + (POOL_BLOCKS if family.pools else ()))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What :func:`build` makes: blocks are ``(kind, activation)``, activation None for pooling."""

    family: str
    blocks: tuple
    head: str
    output: str
    bias: bool
    separate_activations: bool
    width: int
    rules: str  # the preset of properties 1 and 4
    seed: int

    @property
    def activations(self):
        return {activation for _, activation in self.blocks if activation is not None}

    @property
    def bias_free(self):
        """No bias anywhere: no kernel bias and every BatchNorm foldable with a zero shift."""
        return not self.bias and not any(kind in SHIFTED_BLOCKS for kind, _ in self.blocks)

    @property
    def relu(self):
        """ReLU activations only and every BatchNorm foldable (no shift after a ReLU)."""
        return self.activations <= set(RELUS) and not any(
            kind in SHIFTED_BLOCKS for kind, _ in self.blocks)

    @property
    def pixels_averaged(self):
        """Average pooling between the input and the first kernel layer: z^B loses the relevance
        of all-zero windows there (see :func:`test_zbox_behind_average_pooling_conserves`)."""
        for kind, _ in self.blocks:
            if kind not in POOL_BLOCKS:
                return False
            if kind == "avg_pool":
                return True
        return self.head == "global_avg"


@st.composite
def recipes(draw, family=None, regime=None):
    """A recipe of the family and regime (drawn when None): see :data:`REGIMES`."""
    regime = regime or draw(st.sampled_from(sorted(REGIMES)))
    activations, biases, shifted = REGIMES[regime]
    family = family or draw(st.sampled_from(sorted(FAMILIES)))
    kind = st.sampled_from(family_blocks(family, shifted))
    block = kind.flatmap(lambda k: st.tuples(
        st.just(k), st.none() if k in POOL_BLOCKS else st.sampled_from(activations)))
    return Recipe(
        family=family,
        blocks=tuple(draw(st.lists(block, min_size=1, max_size=4))),
        head=draw(st.sampled_from(FAMILIES[family].heads)),
        output=draw(st.sampled_from(OUTPUTS)),
        bias=draw(st.sampled_from(biases)),
        separate_activations=draw(st.booleans()),
        width=draw(st.integers(2, 4)),
        rules=draw(st.sampled_from(sorted(tf_dtd.PRESETS))),
        seed=draw(st.integers(0, 2**16)),
    )


def inputs(recipe):
    """A batch on the grid k/16 in [0, 1], one value per element; half the batches sparse (about
    half zeros, as in digits), which makes dead units and all-zero windows common."""
    shape = (BATCH, *FAMILIES[recipe.family].input_shape)
    grid = st.integers(0, 16).map(lambda k: k / 16)
    sparse = st.one_of(st.just(0.0), grid)
    return st.sampled_from([grid, sparse]).flatmap(
        lambda elements: hnp.arrays(np.float64, shape, elements=elements, fill=st.nothing()))


@st.composite
def examples(draw, family=None, regime=None):
    recipe = draw(recipes(family, regime))
    return recipe, draw(inputs(recipe))


class _Builder:
    """Turns a recipe into layers; records every BatchNorm and whether it may have a shift, and
    where the sigmoids are."""

    def __init__(self, recipe):
        self.recipe = recipe
        self.family = FAMILIES[recipe.family]
        self.norms = []  # (layer, shifted)
        self.scope = []  # (outer tensor, inner input) of each nested model the builder is in
        self.sigmoids = []  # (scope, output tensor) of every sigmoid

    def apply(self, layers, h):
        for layer in layers:
            h = layer(h)
        self.watch(layers, self.scope)
        return h

    def watch(self, layers, scope):
        """Remember the sigmoids: σ(0) = 1/2, so a unit whose inputs are all zero still passes
        relevance on while its LRP-0 denominator is 0 — the one leak of a bias-free net."""
        self.sigmoids += [(tuple(scope), layer.output) for layer in layers
                          if getattr(layer, "activation", None) is keras.activations.sigmoid]

    def sequential(self, layers, h):
        model = keras.Sequential([keras.Input(tuple(h.shape[1:])), *layers])
        self.watch(layers, [*self.scope, (h, model.inputs[0])])
        return model(h)

    def activation(self, name, fuse=True):
        """(fused ``activation=`` argument, separate layer or None) for one activation name."""
        if name == "relu6":
            return None, L.ReLU(6.0)
        if name == "leaky_relu":
            return None, L.LeakyReLU(0.2)
        if fuse and not self.recipe.separate_activations:
            return name, None
        return None, {"relu": L.ReLU, "elu": L.ELU}.get(name, lambda: L.Activation(name))()

    def kernel(self, activation, variant="kernel", width=None, shape=None):
        """The layers of one kernel layer with its activation; the variant falls back to plain
        where the input is too short for a stride-2 kernel."""
        if variant == "strided" and shape is not None and shape[0] < 2:
            variant = "kernel"
        fused, separate = self.activation(activation)
        layer = self.family.kernels[variant](width or self.recipe.width, activation=fused,
                                              use_bias=self.recipe.bias)
        return [layer] + ([separate] if separate else [])

    def norm(self, shifted):
        layer = L.BatchNormalization()
        self.norms.append((layer, shifted))
        return layer

    def kernel_norm(self, activation):
        """Kernel, foldable BatchNorm (shifted only when the recipe has biases), activation."""
        _, separate = self.activation(activation, fuse=False)
        return [self.family.kernels["kernel"](self.recipe.width, use_bias=self.recipe.bias),
                self.norm(self.recipe.bias), separate]

    def block(self, h, kind, activation):
        shape = tuple(h.shape[1:])
        if kind in self.family.kernels:
            return self.apply(self.kernel(activation, kind, shape=shape), h)
        if kind in POOL_BLOCKS:
            return self.family.pools[kind.split("_")[0]]()(h)
        if kind in ("add", "bn"):  # fan-out into two branches, merged by Add
            h = L.Add()([self.apply(self.kernel(activation), h) for _ in range(2)])
            return self.norm(shifted=True)(h) if kind == "bn" else h
        if kind == "concat":
            return L.Concatenate()([self.apply(self.kernel(activation, width=2), h), h])
        if kind == "kernel_bn":
            return self.apply(self.kernel_norm(activation), h)
        if kind == "nested_sequential":
            return self.sequential(self.kernel_norm(activation), h)
        if kind == "nested_functional":  # with a Sequential inside and a fan-out into Add
            inner_in = keras.Input(shape)
            self.scope.append((h, inner_in))
            a = self.apply(self.kernel(activation), inner_in)
            a = L.Add()([a, self.sequential(self.kernel(activation), a)])
            self.scope.pop()
            return keras.Model(inner_in, a)(h)
        raise AssertionError(f"unknown block {kind!r}")


def build(recipe):
    """The recipe's model, and two functions of a batch: the pre-softmax logits as float64 NumPy,
    and for each sample whether a sigmoid unit sits at exactly 1/2 (pre-activation 0)."""
    keras.utils.set_random_seed(recipe.seed)
    builder = _Builder(recipe)
    inputs = keras.Input(FAMILIES[recipe.family].input_shape)
    h = inputs
    for kind, activation in recipe.blocks:
        h = builder.block(h, kind, activation)
    if recipe.head == "flatten":
        h = L.Flatten()(h)
    elif recipe.head != "none":
        h = builder.family.pools[recipe.head]()(h)
    head = L.Dense(CLASSES, activation="softmax" if recipe.output == "softmax" else None,
                   use_bias=recipe.bias)
    outputs = head(h)
    if recipe.output == "softmax_layer":
        outputs = L.Softmax()(outputs)
    model = keras.Model(inputs, outputs)

    rng = np.random.default_rng(recipe.seed)
    for layer in _all_layers(model):  # Keras initialises biases with zeros: make them matter
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(-0.5, 0.5, layer.bias.shape))
    for norm, shifted in builder.norms:
        channels = norm.gamma.shape[0]
        gamma = rng.uniform(0.5, 1.5, channels) * rng.choice([-1, 1], channels)
        beta, mean = rng.uniform(-0.5, 0.5, (2, channels)) * shifted  # zero: a pure scale
        norm.set_weights([gamma, beta, mean, rng.uniform(0.5, 2, channels)])

    features = keras.Model(inputs, h)

    def logits(x):
        bias = head.bias.numpy() if recipe.bias else 0.0
        return np.asarray(features(x), "float64") @ head.kernel.numpy().astype("float64") + bias

    def sigmoid_at_half(x):
        hit = np.zeros(len(x), bool)
        for scope, tensor in builder.sigmoids:
            source, value = inputs, x
            for outer, inner in scope:  # evaluate down through the nested models
                value, source = keras.Model(source, outer)(value), inner
            value = np.asarray(keras.Model(source, tensor)(value))
            hit |= (value.reshape(len(x), -1) == 0.5).any(-1)
        return hit

    return model, logits, sigmoid_at_half


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


@contextlib.contextmanager
def float64():
    """floatx and dtype policy float64 inside; float32 restored even when a check fails."""
    policy = keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy(policy)


def _snapshot(model):
    """Weights byte for byte, config, and the inbound-node count of every (nested) layer."""
    return ([w.tobytes() for w in model.get_weights()], model.get_config(),
            [(layer.name, len(layer._inbound_nodes)) for layer in _all_layers(model)])


def check_properties(recipe, x):
    with float64() if recipe.bias_free else contextlib.nullcontext():
        wide = keras.config.floatx() == "float64"
        model, logits_of, sigmoid_at_half = build(recipe)
        x = x.astype(keras.config.floatx())
        top = logits_of(x).max(-1)
        if recipe.relu:
            assume(np.any(top > 0))  # a dead ReLU net explains nothing
        before = _snapshot(model)
        tolerance = 1e-10 if wide else 1e-5

        # 1. the rewrite succeeds and keeps the logits
        explainer = tf_dtd.relevance_model(model, recipe.rules, input_range=BOX,
                                           return_prediction=True)
        relevance, logits = (np.asarray(t) for t in explainer(x))
        assert relevance.shape == x.shape and np.all(np.isfinite(relevance))
        np.testing.assert_allclose(logits, logits_of(x), rtol=tolerance * 10,
                                   atol=tolerance * np.abs(logits_of(x)).max())

        # 4. batch invariance
        scale = np.abs(relevance).max()
        singles = np.concatenate([np.asarray(explainer(x[i:i + 1])[0]) for i in range(len(x))])
        np.testing.assert_allclose(singles, relevance, rtol=tolerance, atol=tolerance * scale)
        order = np.random.default_rng(recipe.seed).permutation(len(x))
        np.testing.assert_allclose(np.asarray(explainer(x[order])[0]), relevance[order],
                                   rtol=tolerance, atol=tolerance * scale)

        # 2. conservation (bias-free, float64)
        if recipe.bias_free:
            event("checked: LRP-0 conservation")
            signed = 2 * x - 1
            relevance = np.asarray(tf_dtd.relevance_model(model, "lrp_z")(signed))
            kept = ~sigmoid_at_half(signed)  # σ(0) = 1/2 acts as a bias of that sample
            if not kept.all():
                event("LRP-0 conservation: a sample with a sigmoid at 1/2 left out")
            _assert_conserves(relevance[kept], logits_of(signed).max(-1)[kept])
        # Deep Taylor conserves on every recipe, biases and all activations included: z⁺ and z^B
        # leave biases out, and spread what they cannot credit instead of losing it.
        event("checked: Deep Taylor conservation")
        f_c = top
        relevance = np.asarray(tf_dtd.relevance_model(model, input_range=BOX)(x))
        _assert_conserves(relevance[f_c > 0], f_c[f_c > 0], 1e-5 if wide else 1e-4)

        # 3. positivity of the Deep Taylor presets, on every recipe
        event("checked: Deep Taylor positivity")
        for rules in DEEP_TAYLOR:
            relevance = np.asarray(tf_dtd.relevance_model(model, rules, input_range=BOX)(x))
            explained = relevance[top >= 0]
            assert explained.size == 0 or explained.min() >= -1e-6 * np.abs(explained).max(), (
                rules)

        # 5. the user's model is untouched
        assert _snapshot(model) == before


def _assert_conserves(relevance, explained_logit, rtol=1e-5):
    """|ΣR − f_c| ≤ rtol·|f_c| + 1e-12 (no stabiliser leaks: LRP-0 on pooling and merges has
    none)."""
    sums = relevance.reshape(len(relevance), int(np.prod(relevance.shape[1:]))).sum(-1)
    error = np.abs(sums - explained_logit)
    assert np.all(error <= rtol * np.abs(explained_logit) + 1e-12), (sums, explained_logit)


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=6, **_SETTINGS)
@given(data=st.data())
def test_rewriter_invariants_on_random_models(family, data):
    check_properties(*data.draw(examples(family), label="example"))


@pytest.mark.slow
@settings(max_examples=240, **_SETTINGS)
@given(examples())
def test_rewriter_invariants_on_many_random_models(example):
    event(f"family {example[0].family}")
    check_properties(*example)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_builder_makes_every_block(family):
    """The builder really produces each block (guards the property test itself)."""
    blocks = tuple((kind, None if kind in POOL_BLOCKS else "relu")
                   for kind in family_blocks(family))
    recipe = Recipe(family, blocks, FAMILIES[family].heads[0], "softmax_layer", True, True, 3,
                    "lrp_z", 0)
    model, logits, _ = build(recipe)
    kinds = {type(layer).__name__ for layer in _all_layers(model)}
    kernel = "Dense" if family.startswith("dense") else f"Conv{family[-2:].upper()}"
    expected = {kernel, "Add", "Concatenate", "BatchNormalization", "Sequential", "Functional",
                "ReLU", "Softmax"}
    if FAMILIES[family].pools:
        expected |= {type(FAMILIES[family].pools[name]()).__name__ for name in ("max", "avg")}
    assert expected <= kinds
    x = np.zeros((1, *FAMILIES[family].input_shape), "float32")
    assert logits(x).shape == (1, CLASSES)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_builder_makes_every_activation(name):
    recipe = Recipe("dense", (("kernel", name),), "none", "linear", False, False, 2, "lrp_z", 0)
    model, _, _ = build(recipe)
    if name in ("relu6", "leaky_relu"):
        expected = {"relu6": {"max_value": 6.0}, "leaky_relu": {"negative_slope": 0.2}}[name]
        assert expected.items() <= model.layers[2].get_config().items()
    else:
        assert model.layers[1].activation is keras.activations.get(name)


def test_zbox_behind_average_pooling_conserves():
    """x = [0, 0, 1, 1] → avg-pool(2, same) p = [0, .5, 1, 1] → conv [−1, 1] → sum: f = 1.

    The head's z⁺ gives the conv outputs [0.5, 0.5, 0]. The conv's z^B, with the box [0, 1]
    carried through the pooling, gives p relevance [1/3, 1/3, 1/3, 0]: p_0 = 0 gets
    ``(p_0 − h)·w⁻ / (1 − p_0 + p_1) · 0.5 = 1/3`` (the root at the upper bound). The pooling reads
    the pixels, so it gets z^B too, ``(x_i − l)·w_ij``: p_1 → x_2, p_2 → x_2 and x_3 equally, and
    p_0, whose window [x_0, x_1] sits at the lower bound, has nothing to credit: it spreads its
    1/3 evenly over its window instead of losing it (ΣR was 2/3 before).
    """
    with float64():
        inputs = keras.Input((4, 1))
        conv = L.Conv1D(1, 2, use_bias=False)
        h = conv(L.AveragePooling1D(2, strides=1, padding="same")(inputs))
        head = L.Dense(1, use_bias=False)
        model = keras.Model(inputs, head(L.Flatten()(h)))
        conv.set_weights([np.array([-1.0, 1.0]).reshape(2, 1, 1)])
        head.set_weights([np.ones((3, 1))])
        x = np.array([0.0, 0.0, 1.0, 1.0]).reshape(1, 4, 1)
        relevance = np.asarray(tf_dtd.relevance_model(model, input_range=BOX)(x))
        np.testing.assert_allclose(relevance.reshape(-1), [1 / 6, 1 / 6, 1 / 2, 1 / 6],
                                   rtol=1e-9)
        np.testing.assert_allclose(relevance.sum(), 1.0, rtol=1e-9)


def test_float64_context_restores_float32():
    with pytest.raises(RuntimeError, match="^failed inside$"), float64():
        assert keras.config.floatx() == "float64"
        raise RuntimeError("failed inside")
    assert keras.config.floatx() == "float32"
    assert keras.config.dtype_policy().name == "float32"
