"""Helpers of the ``tf-dtd`` command tests (tests/test_cli*.py): no tests here.

``run`` starts the command as a user does, in a subprocess with the user's environment (no
``TF_CPP_MIN_LOG_LEVEL``); ``main`` calls it in-process (the same code, without another
TensorFlow start-up) and returns the exit status and stderr.
"""

import os
import shutil
import subprocess
import sys

import numpy as np

from tf_dtd.app import cli

ENV = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


def command():
    """``tf-dtd`` (the installed console script when present, else ``python -m tf_dtd``)."""
    script = shutil.which("tf-dtd", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "tf_dtd"]


def run(*args, cwd, env=None):
    """Run ``tf-dtd ARGS`` to completion; the ``subprocess.CompletedProcess``."""
    return subprocess.run([*command(), *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


def main(capsys, *args):
    """``cli.main(ARGS)`` in this process: ``(exit status, stderr)``."""
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr().err


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def save(path, array):
    np.save(path, array)
    return path


def leftovers(folder):
    """Staging folders (``.NAME.tf-dtd-*``) and temporary files in ``folder``, recursively."""
    found = []
    for root, folders, files in os.walk(folder):
        found += [os.path.join(root, name) for name in folders + files
                  if ".tf-dtd-" in name or name.startswith((".tmp", "tmp"))]
    return found
