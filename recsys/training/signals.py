"""SIGTERM and SIGINT as requests to stop: the training loop stops at a step boundary.

:class:`StopSignals` replaces the handlers of SIGTERM and SIGINT while a run is in
progress. Outside the training loop a signal stops the run at once
(:class:`~recsys.training.errors.TrainingInterrupted` is raised where the program
is). Inside it (:meth:`StopSignals.deferred`) the signal is only recorded; the
training loop checks :attr:`StopSignals.requested` after each step, saves a
checkpoint and raises :class:`~recsys.training.errors.TrainingInterrupted` itself. A
second signal while the first is being handled restores the default action and
delivers the signal again, so a stuck save can always be killed with another Ctrl-C.

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
        ...     load_data()             # a SIGTERM here raises TrainingInterrupted
        ...     with stop.deferred():
        ...         fit()               # here it sets stop.requested; fit stops at a step
    """

    def __init__(self) -> None:
        #: What the run is doing, for the message of a signal outside the training loop.
        self.phase = "starting"
        self.signum: int | None = None
        self._deferred = 0
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

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[StopSignals]:
        """Inside: record a signal and let the training loop stop at a step boundary."""
        self._deferred += 1
        try:
            yield self
        finally:
            self._deferred -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # A second signal: the user insists. Default action, delivered again.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        name = signal.Signals(signum).name
        if self._deferred:
            log.warning(
                "%s received: saving a checkpoint at the end of this step, then stopping "
                "(send it again to stop at once)",
                name,
            )
            return
        raise TrainingInterrupted(
            signum,
            f"stopped while {self.phase}. Checkpoints saved earlier are kept: run the same "
            "command again to continue.",
        )
