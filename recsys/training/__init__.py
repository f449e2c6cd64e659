"""Training: the :class:`Trainer` (fit with resume, evaluate, export), its checkpoints
and callbacks. ``conf/trainer`` builds the Trainer; :func:`recsys.train.train` drives it.
"""

from recsys.training.callbacks import EpochCheckpoint, HistoryRecorder
from recsys.training.checkpoints import TrainingState
from recsys.training.trainer import FitResult, Trainer

__all__ = ["EpochCheckpoint", "FitResult", "HistoryRecorder", "Trainer", "TrainingState"]
