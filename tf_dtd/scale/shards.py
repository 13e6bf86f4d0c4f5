"""The results folder of :func:`tf_dtd.explain_dataset`: numbered shards and a manifest.

::

    out/
      manifest.json        format, the run's parameters, the finished shards, "complete"
      shard-000000.npz     samples 0 .. shard_size-1 (NumPy arrays, see explain_dataset)
      shard-000001.npz     ...

Every file is written under a temporary name in ``out`` (``.tmp-...``), flushed to disk and
renamed into place (``os.replace``), so a reader never sees half a shard; files get the usual
permissions (``0o666`` less the umask). A shard counts as finished once the manifest lists it:
the manifest is rewritten (atomically too) after each shard. A rerun with the same parameters
continues after the last listed shard; a rerun with other parameters — another model or rules,
other data, another shard or batch size — is refused, so results are never mixed (a run that
stopped before its first shard has nothing to keep and starts over). One run writes to a folder
at a time.
"""

import json
import os

import numpy as np

from tf_dtd.errors import InvalidArgumentError
from tf_dtd.files import TEMPORARY_PREFIX, atomic_write

__all__ = ["MANIFEST", "ShardStore", "load_results"]

MANIFEST = "manifest.json"
_FORMAT = "tf_dtd.explain_dataset"
_VERSION = 1


class ShardStore:
    """Writes the shards and the manifest of one run into ``out``.

    Args:
        out: the results folder; created if missing. An existing folder must be empty or hold
            a run of :func:`tf_dtd.explain_dataset`.
        parameters: a JSON-serialisable dict that identifies the run (model fingerprint, data,
            shard and batch size, ...). A folder holding a run with other parameters is refused.
    """

    def __init__(self, out, parameters):
        self.out = os.fspath(out)
        self.parameters = json.loads(json.dumps(parameters))  # as it will read back
        path = os.path.join(self.out, MANIFEST)
        existing = read_manifest(self.out) if os.path.exists(path) else None
        if existing is None and os.path.isdir(self.out) and any(
                not name.startswith(TEMPORARY_PREFIX) for name in os.listdir(self.out)):
            raise InvalidArgumentError(
                f"out must be a new or empty folder, or hold an explain_dataset run to resume. "
                f"Received: {self.out!r}, which holds other files and no {MANIFEST}")
        if existing is not None and (existing["shards"] or existing["complete"]):
            self.manifest = existing
            _check_same_run(self.out, self.manifest["parameters"], self.parameters)
            for shard in self.manifest["shards"]:
                if not os.path.isfile(os.path.join(self.out, shard["file"])):
                    raise InvalidArgumentError(
                        f"The results folder {self.out!r} lists shard {shard['file']!r}, which "
                        "is missing: the folder was changed outside explain_dataset. Start again "
                        "in a new folder.")
        else:  # a new run, or one that stopped before its first shard: nothing to keep
            os.makedirs(self.out, exist_ok=True)
            self.manifest = {"format": _FORMAT, "version": _VERSION,
                             "parameters": self.parameters, "shards": [], "samples": 0,
                             "complete": False}
        for name in os.listdir(self.out):  # left by a run that was killed mid-write
            if name.startswith(TEMPORARY_PREFIX):
                os.remove(os.path.join(self.out, name))
        self._write_manifest()

    @property
    def samples_done(self):
        """Samples in the finished shards (where a resumed run continues)."""
        return self.manifest["samples"]

    @property
    def complete(self):
        return self.manifest["complete"]

    def write_shard(self, arrays):
        """Write the next shard (a dict of NumPy arrays, one row per sample) and list it."""
        index = len(self.manifest["shards"])
        name = f"shard-{index:06d}.npz"
        count = len(arrays["id"])
        atomic_write(os.path.join(self.out, name), lambda handle: np.savez(handle, **arrays))
        self.manifest["shards"].append({"file": name, "first": self.samples_done,
                                        "samples": count})
        self.manifest["samples"] += count
        self._write_manifest()

    def finish(self):
        """Mark the run complete: every sample of the data is in a listed shard."""
        self.manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self):
        text = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        atomic_write(os.path.join(self.out, MANIFEST), lambda handle: handle.write(text))


def read_manifest(out):
    """The manifest of the results folder ``out`` as a dict (checked to be one of ours)."""
    path = os.path.join(os.fspath(out), MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.fspath(out)!r} holds no {MANIFEST}: it is not a results folder of "
            "tf_dtd.explain_dataset.")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except ValueError as error:
        raise InvalidArgumentError(f"{path!r} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise InvalidArgumentError(
            f"{path!r} is not a manifest of tf_dtd.explain_dataset. Received: format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r}")
    if manifest.get("version") != _VERSION:
        raise InvalidArgumentError(
            f"{path!r} has format version {manifest.get('version')!r}; this tf_dtd reads "
            f"version {_VERSION}.")
    return manifest


def load_results(out, *, allow_incomplete=False):
    """Iterate over the shards of :func:`tf_dtd.explain_dataset` results, in input order.

    Args:
        out: the results folder.
        allow_incomplete: also read an unfinished run (its finished shards); by default an
            unfinished run raises, so that partial results are never taken for all of them.

    Yields:
        One dict of NumPy arrays per shard, one row per sample: ``relevance``, ``logits``,
        ``id``, ``explained_class``, ``predicted_class``, ``relevance_sum`` (and ``label``,
        ``layers/<name>`` when the run had them).

    Raises:
        FileNotFoundError: ``out`` holds no results.
        InvalidArgumentError: the run is unfinished (and ``allow_incomplete`` is False).

    Example:
        >>> for shard in tf_dtd.load_results("results"):
        ...     print(shard["id"][:3], shard["relevance"].shape)
    """
    manifest = read_manifest(out)
    if not manifest["complete"] and not allow_incomplete:
        raise InvalidArgumentError(
            f"The run in {os.fspath(out)!r} is unfinished ({manifest['samples']} samples in "
            f"{len(manifest['shards'])} shards so far): run explain_dataset again with the same "
            "arguments to finish it, or pass allow_incomplete=True.")
    return _shards(os.fspath(out), manifest["shards"])


def _shards(out, shards):
    for shard in shards:
        with np.load(os.path.join(out, shard["file"]), allow_pickle=False) as arrays:
            yield {name: arrays[name] for name in arrays.files}


def _check_same_run(out, old, new):
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    if changed:
        details = "; ".join(f"{key}: {_short(key, old.get(key))} -> {_short(key, new.get(key))}"
                            for key in changed)
        raise InvalidArgumentError(
            f"The results folder {out!r} holds a run with other parameters, which would mix "
            f"results. Use a new folder (or delete this one) to start over, or resume with the "
            f"same model, data and arguments. Received: {details}")


def _short(key, value):
    if key.endswith("sha256") and isinstance(value, str):
        return value[:12] + "..."
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
