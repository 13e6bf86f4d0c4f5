"""Peers measured like tf_dtd: iNNvestigate and Zennit, each in its own virtualenv (README.md)."""
