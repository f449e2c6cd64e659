"""Your own interaction logs: Parquet/CSV/TSV files of any size, streamed into tf.data.

- :class:`InteractionsDataModule` (``data=interactions``): the model-data contract for a
  log declared in config (columns, side features per tower, split, vocabularies).
- :func:`synthesize` / :class:`SynthSpec`: a synthetic log with known structure
  (``python -m recsys.data synth``).
- :class:`LogError`: a log that cannot be used as declared (one line: file, column, fix).

One job per module: :mod:`~.config` (what the keys declare), :mod:`~.files` (which
files, their headers), :mod:`~.normalize` (typed, checked columns), :mod:`~.hashing`
(stable id hashes, the hash split), :mod:`~.splitter` (labels, time cutoffs),
:mod:`~.layout` (blocks), :mod:`~.counting` (per-id counts), :mod:`~.index` (the
counting pass and its cache), :mod:`~.vocabularies` (id spaces), :mod:`~.encode` (the
contract's containers), :mod:`~.epochs` (epoch order, no TensorFlow),
:mod:`~.pipelines` (tf.data; the only module that imports TensorFlow), :mod:`~.synth`.

Importing this package does not import TensorFlow.
"""

from recsys.data.interactions.config import IdSpaceSpec, LogColumns, SplitSpec
from recsys.data.interactions.errors import LogError, LogNotFoundError
from recsys.data.interactions.module import InteractionsDataModule
from recsys.data.interactions.synth import SynthSpec, synthesize

__all__ = [
    "IdSpaceSpec",
    "InteractionsDataModule",
    "LogColumns",
    "LogError",
    "LogNotFoundError",
    "SplitSpec",
    "SynthSpec",
    "synthesize",
]
