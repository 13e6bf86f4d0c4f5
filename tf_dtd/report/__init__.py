"""Stage 3, reports on a relevance model: layer plans, Deep Taylor diagnosis, conservation."""
