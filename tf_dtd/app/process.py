"""How the ``tf-dtd`` command runs as a process: signals, TensorFlow's start-up noise, crashes.

- SIGINT (Ctrl-C) and SIGTERM become :class:`Interrupted`, an exception that unwinds the command
  through its clean-up code (so no temporary or partial file stays behind); the command then
  exits with status 128 + the signal number (130, 143). Inside :func:`signals_deferred` a signal
  waits until the section ends, and once the command is unwinding further signals are ignored,
  so that clean-up always completes. A signal that lands inside a ``__del__`` (where Python
  drops exceptions) is sent again a moment later.
- :func:`import_tensorflow` starts TensorFlow without the lines its native start-up writes to
  stderr (CUDA probing, oneDNN notices, absl's "All log messages before absl::InitializeLog()"),
  which look like errors on a healthy machine. ``--verbose`` shows them.
- :func:`save_traceback` keeps the traceback of an unexpected exception (a bug) in a file.
"""

import contextlib
import os
import signal
import sys
import tempfile
import threading
import traceback

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_BUG", "EXIT_ERROR", "Interrupted", "SignalsToExceptions",
           "import_tensorflow", "save_traceback", "signals_deferred"]

EXIT_ERROR = 1  # the user's mistake: a bad file, argument or model (2: a malformed command line)
EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h): an unexpected exception, a bug in tf_dtd
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # stdout closed by its reader (`| head`), as shells do

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_active = []  # the SignalsToExceptions in force (at most one: the running command's)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, so ``except Exception`` does not stop it."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self):
        return 128 + self.signum


class SignalsToExceptions:
    """Within ``with``: SIGINT and SIGTERM raise :class:`Interrupted` (see the module doc).

    The previous handlers are restored on exit. Use it in the main thread only.
    """

    def __enter__(self):
        self.pending, self.unwinding, self.deferring = None, False, 0
        self.previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}
        _active.append(self)
        return self

    def __exit__(self, *exc_info):
        _active.remove(self)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        if self.unwinding:
            return  # the clean-up of the first signal is running: let it finish
        if self.deferring:
            self.pending = self.pending or signum
            return
        if _in_finalizer(frame):
            # An exception raised inside a __del__ is printed ("Exception ignored in ...") and
            # dropped, and the command would run on: the signal comes again a moment later.
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        self.unwinding = True
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self):
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1
            if not self.deferring and self.pending and not self.unwinding:
                self.unwinding = True
                raise Interrupted(self.pending)


def _in_finalizer(frame):
    """Whether ``frame`` runs inside a ``__del__`` (the garbage collector calls them anywhere)."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def signals_deferred():
    """A section that a signal does not cut short (file creation, swaps, clean-up)."""
    if not _active:
        yield
        return
    with _active[-1].deferred():
        yield


def import_tensorflow(verbose=False):
    """Import TensorFlow and Keras (and tf_dtd's layers), quietly unless ``verbose``.

    TensorFlow's native start-up writes to file descriptor 2 before its log settings apply, so
    the descriptor is pointed at an unnamed temporary file for the import and the device probe;
    what was written there is shown only if the import fails. Later native log lines are
    filtered by ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user set it): ERROR lines included, since
    TensorFlow logs notices there that are no failures (oneDNN's "supports DT_INT32 only on
    platforms with AVX-512" on CPUs without AVX-512); a real failure reaches the user as an
    exception.
    """
    if verbose:
        import keras
        import tensorflow as tf
        return tf, keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                import keras
                import tensorflow as tf

                tf.config.list_physical_devices()  # the device probe (CUDA) logs here
            except Exception:  # not an Interrupted: the user asked for that
                os.dup2(saved, 2)
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    import tf_dtd

    tf_dtd.relevance_model  # noqa: B018  (registers tf_dtd's layers for loading saved models)
    return tf, keras


def save_traceback(error, argv):
    """Write the traceback of ``error`` to a new file in the temporary folder; its path."""
    import tf_dtd

    handle, path = tempfile.mkstemp(prefix="tf-dtd-traceback-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(f"tf-dtd {tf_dtd.__version__}, Python {sys.version.split()[0]}\n")
        file.write(f"command: tf-dtd {' '.join(argv)}\n\n")
        file.write("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    return path
