"""Apache Beam for tf_dtd: explain images on a cluster with ``RunInference``.

:class:`RelevanceModelHandler` is a Beam ``ModelHandler``: each worker loads the user's model
once, builds its relevance model and explains batches of images. ``python -m tf_dtd.beam`` is a
ready pipeline (images or TFRecords in; heatmaps, a summary table and a dead-letter file out).
Needs the optional extra: ``pip install "tf_dtd[beam]"``. See docs/scaling.md.

Example:
    >>> import apache_beam as beam
    >>> from apache_beam.ml.inference.base import RunInference
    >>> from tf_dtd.beam import RelevanceModelHandler
    >>> handler = RelevanceModelHandler("classifier.keras", input_range=(0.0, 1.0))
    >>> with beam.Pipeline() as pipeline:
    ...     results = pipeline | beam.Create(list(images)) | RunInference(handler)
"""

from tf_dtd.errors import MissingDependencyError

try:
    import apache_beam  # noqa: F401
except ImportError as error:
    raise MissingDependencyError(
        'tf_dtd.beam needs Apache Beam, an optional dependency: pip install "tf_dtd[beam]" '
        f"(or pip install apache-beam). Received: {type(error).__name__}: {error}"
    ) from error

from tf_dtd.beam.handler import RelevanceModelHandler  # noqa: E402

__all__ = ["RelevanceModelHandler"]
