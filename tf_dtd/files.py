"""Atomic file writes: a file appears whole under its name, or not at all.

The one home for writing a file through a temporary name: heatmap PNGs
(:mod:`tf_dtd.visualize`), result shards and manifests (:mod:`tf_dtd.scale`), summaries.
"""

import os
import secrets

__all__ = ["TEMPORARY_PREFIX", "atomic_write"]

TEMPORARY_PREFIX = ".tmp-"  # names of files still being written (a killed run may leave some)


def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then rename it to ``path``.

    The file is flushed and fsynced before the rename; on failure (an exception, Ctrl-C) the
    temporary file is removed and ``path`` is left as it was. Permissions follow the umask, like
    ``open(path, "wb")``.

    Returns:
        ``path`` as a string (``os.fspath``).

    Example:
        >>> atomic_write("numbers.bin", lambda handle: handle.write(b"\\x00\\x01"))
        'numbers.bin'
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    temporary = os.path.join(
        folder, f"{TEMPORARY_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return os.fspath(path)
