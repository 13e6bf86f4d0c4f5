"""Zennit 0.5.1 (PyTorch) against its own torch gradient×input, measured like tf_dtd.

    /work/peers/zennit/bin/python -m benchmarks.peers.bench_zennit \\
        [--models VGG16 ResNet50 MobileNetV2] [--batch 1 8 32] [--methods deep_taylor_bounded]
        [--size 224] [--repeats 15] [--min-seconds 20] [--threads N]
        [--json benchmarks/results/zennit.json]

Run from the repository root in the virtualenv of README.md. The models are those of
:mod:`benchmarks.peers.torch_models` (untrained, BatchNorm statistics from one random batch,
pixels in ``[0, 255]``). Methods, named after the tf_dtd preset they stand in for:

- ``deep_taylor_bounded``: ZBox(0, 255) on the first convolution, ZPlus on every other
  convolution and linear layer (Zennit's ``SpecialFirstLayerMapComposite``);
- ``lrp_epsilon_plus``: Zennit's ``EpsilonPlus``; ``lrp_epsilon_gamma_box``: ``EpsilonGammaBox``
  (γ on every convolution, ε on linear layers); ``lrp_epsilon``: Epsilon on every layer;

all with ``SequentialMergeBatchNorm`` and Zennit's base layer map (Pass through activations,
Norm for ``Sum`` and average pooling). What is timed, the same target on both sides (the top
logit of each sample, the same input tensor, a numpy array out):

- relevance: ``attributor(x, top_logit)`` of a ``zennit.attribution.Gradient`` whose composite
  stays registered (the ``with`` block a user keeps open across batches), eager PyTorch;
- baseline: eager ``torch.autograd.grad`` of the summed top logits times the input, on its own
  instance of the model (no hooks).

Denormals are flushed (``torch.set_flush_denormal(True)``), as TensorFlow does on CPU. No
``--jit``: Zennit works through module hooks, which ``torch.compile`` does not keep.
"""

import os

from benchmarks import harness, protocol

__all__ = ["ADAPTER", "main"]

PIXEL_RANGE = (0.0, 255.0)
DEFAULT_JSON = os.path.join(protocol.REPO_ROOT, "benchmarks", "results", "zennit.json")
METHODS = ("deep_taylor_bounded", "lrp_epsilon_plus", "lrp_epsilon_gamma_box", "lrp_epsilon")


class _Subject:
    def __init__(self, model, inputs, input_shape):
        self.model, self.inputs, self.input_shape = model, inputs, input_shape


class _Relevance:
    """``x -> relevance`` (numpy) with the composite registered until ``close()``."""

    def __init__(self, model, composite, info):
        from zennit.attribution import Gradient

        self.attributor = Gradient(model=model, composite=composite)
        self.attributor.__enter__()
        self.info = info

    def __call__(self, x):
        import torch

        def top_logit(output):  # relevance starts at the top logit's value
            top = output.argmax(1, keepdim=True)
            return torch.zeros_like(output).scatter_(1, top, output.gather(1, top))

        _, relevance = self.attributor(x, top_logit)
        return relevance.detach().numpy()

    def close(self):
        self.attributor.__exit__(None, None, None)


def composite(name):
    """The Zennit composite standing in for the tf_dtd preset ``name`` (see the module doc)."""
    import torch
    from zennit import composites, rules, types
    from zennit.canonizers import SequentialMergeBatchNorm

    low, high = PIXEL_RANGE
    canonizers = [SequentialMergeBatchNorm()]
    if name == "deep_taylor_bounded":
        return composites.SpecialFirstLayerMapComposite(
            layer_map=composites.layer_map_base() + [
                (types.Convolution, rules.ZPlus()), (torch.nn.Linear, rules.ZPlus())],
            first_map=[(types.Convolution, rules.ZBox(low=low, high=high))],
            canonizers=canonizers)
    if name == "lrp_epsilon_plus":
        return composites.EpsilonPlus(canonizers=canonizers)
    if name == "lrp_epsilon_gamma_box":
        return composites.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    if name == "lrp_epsilon":
        return composites.LayerMapComposite(
            layer_map=composites.layer_map_base() + [(types.Linear, rules.Epsilon())],
            canonizers=canonizers)
    raise ValueError(f"Expected a method in {METHODS}. Received: {name!r}")


class ZennitAdapter:
    """Zennit for :mod:`benchmarks.harness` (torch is imported in the workers only)."""

    framework = "zennit"
    baseline_name = "gradient_x_input (torch.autograd, eager)"
    models = default_models = ("VGG16", "ResNet50", "MobileNetV2")
    methods = METHODS
    default_methods = ("deep_taylor_bounded",)
    supports_jit = False  # eager PyTorch on the CPU

    def configure(self, settings):
        import torch

        if settings.get("threads"):
            torch.set_num_threads(settings["threads"])
            torch.set_num_interop_threads(settings["threads"])
        torch.set_flush_denormal(True)

    def environment(self):
        from importlib.metadata import version

        import numpy as np
        import torch

        return {
            "versions": {"torch": torch.__version__, "zennit": version("zennit"),
                         "numpy": np.__version__},
            "onednn": torch.backends.mkldnn.is_available(),
            "devices": ["cpu"], "gpus": [],
            "threads": {"intra_op": torch.get_num_threads(),
                        "inter_op": torch.get_num_interop_threads()},
            "flush_denormal": True,
            "methods": list(METHODS),
        }

    def build(self, name, settings):
        import numpy as np
        import torch

        from benchmarks.peers import torch_models

        size, seed = settings["size"], settings["seed"]
        model = torch_models.build(name, size=size, seed=seed)
        cached = os.path.join(settings["cache_dir"], f"{name}_{size}_{seed}.pt")
        if os.path.exists(cached):
            model.load_state_dict(torch.load(cached))
        else:
            calibration = np.random.default_rng(seed + 1).uniform(0, 255, (8, 3, size, size))
            torch_models.calibrate_batch_norm(model, torch.from_numpy(calibration).float())
            torch.save(model.state_dict(), cached)

        def inputs(batch):
            x = np.random.default_rng(seed + 2).uniform(0, 255, (batch, 3, size, size))
            return torch.from_numpy(x.astype("float32"))
        return _Subject(model, inputs, (3, size, size))

    def input_shape(self, subject):
        return subject.input_shape

    def inputs(self, subject, batch):
        return subject.inputs(batch)

    def method(self, subject, name, settings):
        return _Relevance(subject.model, composite(name),
                          {"composite": name, "attributor": "zennit.attribution.Gradient"})

    def baseline(self, subject, settings):
        import torch

        model = subject.model

        def gradient_x_input(x):
            x = x.detach().requires_grad_(True)
            top = model(x).max(dim=1).values.sum()
            (gradient,) = torch.autograd.grad(top, x)
            return (gradient * x).detach().numpy()
        return harness.Call(gradient_x_input, {"baseline": "torch.autograd.grad, eager"})

    def device_memory(self):
        return None


ADAPTER = ZennitAdapter()


def main(argv=None):
    """Run the benchmark (see the module doc); returns the result document."""
    return harness.main(ADAPTER, "benchmarks.peers.bench_zennit", __doc__, DEFAULT_JSON, argv)


if __name__ == "__main__":
    main()
