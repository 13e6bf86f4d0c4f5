"""Stage 3, reports on a relevance model: layer plans, Deep Taylor diagnosis, conservation, HTML."""

from tf_dtd.report.html import html

__all__ = ["html"]
