"""The names of the rule presets, and which of them need the input box — without TensorFlow.

The presets themselves (what each one builds) live in :mod:`tf_dtd.composites`, which imports
Keras; these names are what the ``tf-dtd`` command needs to parse its arguments, and it must
answer ``--help`` and argument errors without starting TensorFlow. ``tests/test_composites.py``
checks that both agree.
"""

__all__ = ["BOX_PRESETS", "PRESET_NAMES"]

PRESET_NAMES = (
    "deep_taylor",
    "deep_taylor_bounded",
    "deep_taylor_unbounded",
    "lrp_z",
    "lrp_epsilon",
    "lrp_alpha_1_beta_0",
    "lrp_alpha_2_beta_1",
    "lrp_epsilon_plus",
    "lrp_epsilon_plus_flat",
    "lrp_epsilon_gamma_box",
)

# The presets that put z^B on the first layer: they need input_range=(low, high).
BOX_PRESETS = ("deep_taylor_bounded", "lrp_epsilon_gamma_box")
