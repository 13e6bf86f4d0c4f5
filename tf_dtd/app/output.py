"""The output folder of a ``tf-dtd`` command: the whole set of files appears at once, or nothing.

Files are written into a hidden staging folder next to the output folder, which is then renamed
into place; ``overwrite=True`` swaps an earlier run's folder out and deletes it afterwards, so the
folder never holds a mix of two runs. A failure or an interruption removes the staging folder
(and the parent folders the command created), leaving the output folder as it was. Folders and
files are created like any file write: their permissions follow the umask.
"""

import csv
import os
import secrets
import shutil

import numpy as np

from tf_dtd.app.process import signals_deferred
from tf_dtd.errors import TfDtdError

__all__ = ["SUMMARY_COLUMNS", "OutputError", "OutputFolder", "as_picture", "save_npz",
           "save_summary", "summary_writer"]

# The columns of summary.csv (tf-dtd explain, tf_dtd.scale.explain_files).
SUMMARY_COLUMNS = ("file", "predicted_class", "explained_class", "logit", "relevance_sum")


class OutputError(TfDtdError):
    """The output folder cannot be used or written (taken, a file, no permission, disk full)."""


class OutputFolder:
    """Write a command's output files into ``folder``, all or nothing.

    Args:
        folder: the output folder as the user named it (messages quote it so).
        overwrite: replace a folder that holds files (an earlier run); otherwise that is an
            :class:`OutputError`.
        option: how the command line names the folder, for messages (``--out``, ``OUTDIR``).
        reads: the files and folders the command reads (model, inputs): ``overwrite`` refuses
            to replace a folder that holds one of them, or the current folder.

    Example:
        >>> with OutputFolder("heatmaps", overwrite=True) as out:
        ...     out.write("a.png", lambda path: visualize.save_png(path, heatmap))
    """

    def __init__(self, folder, *, overwrite=False, option="--out", reads=()):
        self.folder = folder
        self.overwrite = overwrite
        self.option = option
        self.reads = tuple(reads)
        self.staging = None
        self.created_parents = []

    @property
    def path(self):
        """The staging folder: where the files go until the ``with`` block ends."""
        return self.staging

    def check(self):
        """Raise :class:`OutputError` if the folder cannot receive this run's output."""
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise OutputError(f"{self.option} {self.folder!r} is a file, not a folder.")
        if not os.path.isdir(self.folder) or not self._listdir(self.folder):
            return
        if not self.overwrite:
            raise OutputError(
                f"{self.option} {self.folder!r} already holds files (an earlier run?). Pass "
                "--overwrite to replace them, or choose another folder.")
        target = os.path.realpath(self.folder)
        for path in (os.getcwd(), *self.reads):
            if os.path.commonpath([target, os.path.realpath(path)]) == target:
                what = ("the current folder" if path == os.getcwd()
                        else f"{path!r}, which this command reads")
                raise OutputError(
                    f"{self.option} {self.folder!r} holds {what}; --overwrite would delete it. "
                    "Choose another folder.")

    def __enter__(self):
        self.check()
        target = os.path.abspath(self.folder)
        with signals_deferred():
            try:
                self._make_parents(os.path.dirname(target))
                while self.staging is None:
                    staging = os.path.join(os.path.dirname(target),
                                           f".{os.path.basename(target)}.tf-dtd-{secrets.token_hex(4)}")
                    try:
                        os.mkdir(staging)
                    except FileExistsError:
                        continue
                    self.staging = staging
            except OSError as error:
                self._discard()
                raise self._error("cannot create", error) from None
        return self

    def write(self, name, save):
        """Call ``save(path)`` to write the file ``name`` of the output set."""
        try:
            save(os.path.join(self.staging, name))
        except OSError as error:
            raise self._error(f"cannot write {name} in", error) from None

    def fill(self, save):
        """Call ``save(folder)`` to write the whole output set at once (e.g. a SavedModel)."""
        try:
            save(self.staging)
        except OSError as error:
            raise self._error("cannot write", error) from None

    def __exit__(self, kind, error, traceback):
        with signals_deferred():
            if kind is None:
                try:
                    self._commit()
                except OSError as failure:
                    self._discard()
                    raise self._error("cannot write", failure) from None
            else:
                self._discard()
        return False

    def _commit(self):
        target = os.path.abspath(self.folder)
        if not os.path.isdir(target):
            os.rename(self.staging, target)
        elif not self._listdir(target):
            os.rmdir(target)
            os.rename(self.staging, target)
        else:
            self.check()  # still --overwrite: the folder was checked on entry
            old = f"{self.staging}.old"
            os.rename(target, old)
            try:
                os.rename(self.staging, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        self.staging = None

    def _discard(self):
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for parent in reversed(self.created_parents):
            try:
                os.rmdir(parent)
            except OSError:
                break
        self.created_parents = []

    def _make_parents(self, parent):
        missing = []
        while parent and not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(missing):
            os.mkdir(folder)
            self.created_parents.append(folder)

    def _listdir(self, folder):
        try:
            return os.listdir(folder)
        except OSError as error:
            raise self._error("cannot read", error) from None

    def _error(self, what, error):
        reason = error.strerror or str(error)
        return OutputError(f"{self.option} {self.folder!r}: {what} the folder: {reason}.")


def summary_writer(text):
    """A ``csv.writer`` for summary.csv on the text stream ``text``, the header written."""
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    return writer


def save_summary(path, rows):
    """Write summary.csv (:data:`SUMMARY_COLUMNS`, then ``rows``) to ``path``."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        summary_writer(handle).writerows(rows)


def save_npz(path, **arrays):
    """``np.savez_compressed`` to ``path`` (no ``.npz`` appended)."""
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def as_picture(sample):
    """A model input without a source image (``.npy``), min-max scaled to RGB uint8."""
    low, high = float(sample.min()), float(sample.max())
    scaled = (sample - low) / (high - low) if high > low else np.zeros_like(sample)
    picture = np.round(scaled * 255).astype("uint8")
    return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture
