"""Stage 2, the relevance model: decide each node's rule and handler, then build the mirror."""
