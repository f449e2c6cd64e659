"""SIGTERM and SIGINT as requests to stop: the training loop stops at a step boundary.

:class:`StopSignals` replaces the handlers of SIGTERM and SIGINT while a run is in
progress. A signal is recorded, and the run stops at the next safe point: the
training loop checks :attr:`StopSignals.requested` after each step, saves a
checkpoint and raises :class:`~recsys.training.errors.TrainingInterrupted`; between
phases :meth:`StopSignals.check` raises it. Inside :meth:`StopSignals.immediate`
(phases that are pure Python with their own cleanup: loading data, evaluating,
exporting) the handler raises at once instead. Never while TensorFlow is being
imported or started: an exception raised in the middle of that can crash the
interpreter at exit. A second signal restores the default action and delivers the
signal again, so a stuck save can always be ended with another Ctrl-C.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from recsys.training.errors import TrainingInterrupted

__all__ = ["StopSignals"]

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Handle SIGTERM and SIGINT as stop requests while the context is open.

    Only the main thread can install handlers; elsewhere (a test runner's worker
    thread) the context does nothing and signals keep their default action.

    Example:
        >>> with StopSignals() as stop:  # doctest: +SKIP
        ...     with stop.immediate("loading data"):
        ...         load_data()         # a SIGTERM here raises TrainingInterrupted at once
        ...     start_tensorflow()      # here it is recorded...
        ...     stop.check()            # ...and raised here
        ...     fit(stop)               # the loop saves and stops at a step boundary
    """

    def __init__(self) -> None:
        #: What the run is doing, for the message of a signal outside the training loop.
        self.phase = "starting"
        self.signum: int | None = None
        self._immediate = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reinstall(self) -> None:
        """Install the handlers again (inside the context; a no-op outside it).

        Creating a MultiWorkerMirroredStrategy replaces the SIGTERM handler at the C
        level (most likely the preemption notifier of the coordination service it
        starts; seen: a SIGTERM no longer reached this one), so call this after it.
        """
        for signum in self._previous:
            signal.signal(signum, self._handle)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def immediate(self, phase: str) -> Iterator[StopSignals]:
        """Inside: a signal raises :class:`TrainingInterrupted` at once.

        Args:
            phase: What the run does inside, for the message (``"loading data"``).
        """
        self.phase = phase
        self.check()
        self._immediate += 1
        try:
            yield self
        finally:
            self._immediate -= 1

    def check(self) -> None:
        """Raise :class:`TrainingInterrupted` when a stop signal has arrived."""
        if self.signum is not None:
            raise self._interrupted()

    def _interrupted(self) -> TrainingInterrupted:
        assert self.signum is not None
        return TrainingInterrupted(
            self.signum,
            f"stopped while {self.phase}. Checkpoints saved earlier are kept: run the same "
            "command again to continue.",
        )

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # A second signal: the user insists. Default action, delivered again.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        if self._immediate:
            raise self._interrupted()
        log.warning(
            "%s received while %s: stopping at the next safe point (a training step saves "
            "a checkpoint first); send it again to stop at once",
            signal.Signals(signum).name,
            self.phase,
        )
