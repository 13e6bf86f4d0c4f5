"""Stage 5, applications: the ``tf-dtd`` command, image inputs and the shipped digits model."""
