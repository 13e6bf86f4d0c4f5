"""Stage 1, the forward model: read the user's Keras graph, canonise a copy, analyse it.

The only stage that reads Keras internals (:mod:`tf_dtd.model.graph`).
"""
