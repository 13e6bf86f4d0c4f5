"""Explaining data sets at scale: streaming into shards (:func:`explain_dataset`), reading them
back (:func:`load_results`), and the files ``tf-dtd explain`` writes for large inputs
(:func:`explain_files`). Apache Beam lives in :mod:`tf_dtd.beam`; see docs/scaling.md.
"""

from tf_dtd.scale.dataset import explain_dataset
from tf_dtd.scale.files import explain_files
from tf_dtd.scale.shards import load_results

__all__ = ["explain_dataset", "explain_files", "load_results"]
