"""How faithful is an explanation: tf_dtd measures its own heatmaps.

- :mod:`~tf_dtd.report.conservation`: Σ relevance in vs out per layer, with leak reasons.
- :mod:`~tf_dtd.evaluate.perturbation`: region perturbation / pixel flipping and AOPC.
- :mod:`~tf_dtd.evaluate.baselines`: random, gradient, gradient×input, occlusion, integrated
  gradients and tf_dtd's rules behind one ``explainer(model, x, targets)`` signature.
- :mod:`~tf_dtd.evaluate.sanity`: cascading model-parameter randomisation (Adebayo et al.).
- :mod:`~tf_dtd.evaluate.quantus`: the ``explain_func`` the Quantus library expects.
"""

from tf_dtd.evaluate import baselines, perturbation, sanity
from tf_dtd.evaluate.perturbation import PerturbationResult, region_perturbation
from tf_dtd.evaluate.quantus import quantus_explain_func
from tf_dtd.evaluate.sanity import randomization_check, spearman, ssim
from tf_dtd.report.conservation import conservation_report, format_report

__all__ = [
    "PerturbationResult",
    "baselines",
    "conservation_report",
    "format_report",
    "perturbation",
    "quantus_explain_func",
    "randomization_check",
    "region_perturbation",
    "sanity",
    "spearman",
    "ssim",
]
