"""Benchmarks of tf_dtd: speed, first call and peak memory against gradient×input.

``python -m benchmarks --help`` runs :mod:`benchmarks.run`. This package imports nothing
heavy: :mod:`benchmarks.protocol`, :mod:`benchmarks.harness` and :mod:`benchmarks.report` need
only the standard library and NumPy, so the peer scripts in ``benchmarks/peers`` share them from
their own virtualenvs (TF 2.14 for iNNvestigate, PyTorch for Zennit).
"""
