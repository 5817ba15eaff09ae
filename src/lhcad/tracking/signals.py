"""SIGTERM as an interrupt: while a run or sweep is active, SIGTERM (``kill``, SLURM, ``docker
stop``) raises :class:`Terminated` in the main thread, a KeyboardInterrupt, so everything that
cleans up after Ctrl-C does so after SIGTERM too (:class:`~lhcad.tracking.run.RunTracker`: the run
ends KILLED; the multirun parent; Optuna: the trial FAILs). While a run's status is being written
the signal is held back (:func:`sigterm_deferred`) and delivered afterwards (:func:`deliver_pending`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

__all__ = [
    "Terminated",
    "deliver_pending",
    "install_sigterm_handler",
    "keep_dropped_interrupts",
    "restore_sigterm_handler",
    "sigterm_deferred",
    "take_pending",
]

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives during a run (:func:`install_sigterm_handler`).

    A KeyboardInterrupt, so everything that cleans up after Ctrl-C (RunTracker: run KILLED,
    Optuna: trial FAIL, joblib: workers stopped) does so after ``kill`` / SLURM / ``docker stop``.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = int(signum)
        super().__init__(f"terminated by {self.signal_name}")

    def __reduce__(self) -> tuple[type[Terminated], tuple[int]]:  # pickled across joblib workers
        return type(self), (self.signum,)

    @property
    def signal_name(self) -> str:
        """``"SIGTERM"``."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def exit(self) -> NoReturn:
        """End the process with the conventional status of this signal, 128 + signum (143)."""
        raise SystemExit(128 + self.signum)


# pid: the process that installed the handler; raised: Terminated was raised (repeats are ignored
# while the runs close); defer: a run is being opened or closed (the signal waits in `pending`)
# previous_hook: sys.unraisablehook before the handler was installed
_sigterm_state: dict[str, Any] = {
    "pid": None, "raised": False, "defer": False, "pending": None, "previous_hook": None
}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Raise :class:`Terminated` once; held back while a run is opened or closed."""
    if os.getpid() != _sigterm_state["pid"]:  # a forked child inherited the handler: default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _sigterm_state["raised"]:
        return
    if _sigterm_state["defer"]:
        _sigterm_state["pending"] = signum
        return
    _sigterm_state["raised"] = True
    raise Terminated(signum)


def _unraisable_hook(unraisable: Any) -> None:
    """``sys.unraisablehook`` while the handler is installed: a :class:`Terminated` raised inside a
    finalizer or weakref callback (where Python drops exceptions) is signalled again shortly, to
    land in the code the run executes; anything else goes to the previous hook."""
    if isinstance(unraisable.exc_value, Terminated) and os.getpid() == _sigterm_state["pid"]:
        _sigterm_state["raised"] = False
        signum = unraisable.exc_value.signum
        timer = threading.Timer(0.05, lambda: os.kill(os.getpid(), signum))
        timer.daemon = True
        timer.start()
        return
    (_sigterm_state["previous_hook"] or sys.__unraisablehook__)(unraisable)


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """SIGTERM within the block is held back (a run's status is being written); see
    :func:`take_pending` for its delivery."""
    outer = _sigterm_state["defer"]
    _sigterm_state["defer"] = True
    try:
        yield
    finally:
        _sigterm_state["defer"] = outer


def take_pending() -> Terminated | None:
    """The SIGTERM held back by :func:`sigterm_deferred`, once outside every deferred block."""
    signum = _sigterm_state["pending"]
    if signum is None or _sigterm_state["defer"]:
        return None
    _sigterm_state["pending"] = None
    if _sigterm_state["raised"]:
        return None
    _sigterm_state["raised"] = True
    return Terminated(signum)


def deliver_pending(exc: BaseException | None) -> None:
    """After a run was closed (and the handler restored): act on a SIGTERM held back meanwhile.

    An outer run or sweep still has the handler: raise :class:`Terminated` to stop it too.
    Otherwise hand the signal to the restored handler (the default ends the process).
    """
    stop = take_pending()
    if stop is None or isinstance(exc, KeyboardInterrupt):  # already stopping
        return
    if signal.getsignal(stop.signum) is _on_sigterm:
        raise stop
    os.kill(os.getpid(), stop.signum)


def install_sigterm_handler() -> Any:
    """Make SIGTERM raise :class:`Terminated`; returns the token for :func:`restore_sigterm_handler`.

    Only in the main thread, and only over the default action: an ignored SIGTERM (``SIG_IGN``)
    and other handlers (e.g. a cluster launcher's) are left alone. Nested calls share one handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _on_sigterm:
        return None  # an outer run or sweep installed it and restores it
    if previous is not signal.SIG_DFL:
        log.debug("SIGTERM has a handler (%r): not installing lhcad's", previous)
        return None
    _sigterm_state.update(pid=os.getpid(), raised=False, pending=None, previous_hook=sys.unraisablehook)
    sys.unraisablehook = _unraisable_hook
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def restore_sigterm_handler(token: Any) -> None:
    """Put back the handler replaced by :func:`install_sigterm_handler` (``token``: its return)."""
    if token is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, token)
    if sys.unraisablehook is _unraisable_hook:
        sys.unraisablehook = _sigterm_state["previous_hook"] or sys.__unraisablehook__


_interrupt_hook_state: dict[str, Any] = {"previous": None}


def _redeliver_interrupt(unraisable: Any) -> None:
    """``sys.unraisablehook``: a Ctrl-C (KeyboardInterrupt) that landed in a finalizer or weakref
    callback, where Python prints and drops it, is sent again shortly instead, to stop the code
    the process runs; anything else goes to the previous hook."""
    exc = unraisable.exc_value
    if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Terminated):
        timer = threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    (_interrupt_hook_state["previous"] or sys.__unraisablehook__)(unraisable)


def keep_dropped_interrupts() -> None:
    """Process-wide: never lose a Ctrl-C to a finalizer (a sweep would run on as if nothing
    happened). Idempotent."""
    if sys.unraisablehook is not _redeliver_interrupt:
        _interrupt_hook_state["previous"] = sys.unraisablehook
        sys.unraisablehook = _redeliver_interrupt
