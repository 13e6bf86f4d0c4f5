"""A relevance layer's own copy of the forward layer it explains (:class:`ForwardCopy`).

Layers without a kernel of their own (``Add``, pooling, reshaping, …) are explained by running
the forward layer again on the relevance pass's inputs: the relevance layer holds a copy, built
in the relevance dtype (never float16), with the original's weights (their buffers shared until
either side writes: :func:`tf_dtd.model.canonize.weight_tensors`).
"""

import keras

from tf_dtd.model import canonize

__all__ = ["ForwardCopy"]


def _copy(layer, dtype):
    """A copy of ``layer`` (or of its serialised dict) computing in ``dtype``, with its weights."""
    if isinstance(layer, dict):
        return keras.layers.deserialize(layer), None
    config = keras.layers.serialize(layer)
    config["config"]["dtype"] = dtype
    return keras.layers.deserialize(config), canonize.weight_tensors(layer)


class ForwardCopy:
    """Mixin for a Keras layer: holds a copy of the forward layer and calls it on a list or a
    single tensor. ``_wrap(layer)`` in ``__init__``, ``_build_wrapped(shapes)`` in ``build``."""

    def _wrap(self, layer):
        self.forward_layer, self._initial_weights = _copy(layer, self.dtype_policy.name)

    def _build_wrapped(self, shapes):
        if not self.forward_layer.built:
            self.forward_layer.build(shapes if len(shapes) > 1 else shapes[0])
        if self._initial_weights:
            self.forward_layer.set_weights(self._initial_weights)
        self._initial_weights = None

    def _apply(self, *xs):
        return self.forward_layer(list(xs) if len(xs) > 1 else xs[0])
