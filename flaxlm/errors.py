"""The errors a user can fix. Each carries one line that names the culprit (a config key, a
file and line, a checkpoint step) and the fix; the entry points print that line and exit 1
without a traceback. Anything else that escapes is a flaxlm bug and keeps its traceback.

They subclass the built-in type a caller would expect (ValueError, FileNotFoundError, ...),
so library users can catch either.
"""

from __future__ import annotations


class FlaxlmError(Exception):
  """Base of every error whose message tells the user what to change."""


class ConfigError(FlaxlmError, ValueError):
  """A config key or value that cannot work (found before any data is read)."""


class DataError(FlaxlmError, ValueError):
  """A dataset that cannot be read or used: a malformed record (file:line), a missing
  column, an empty split, a corpus too small for one batch."""


class DataNotFoundError(FlaxlmError, FileNotFoundError):
  """A data file, glob or workdir that does not exist."""


class CheckpointMismatchError(FlaxlmError, ValueError):
  """The checkpoint in a workdir does not fit the model or config being run, or is damaged."""


class TrainingDivergedError(FlaxlmError, FloatingPointError):
  """The loss or gradient norm became NaN/Inf; the bad update was not applied or saved."""


class WorkdirError(FlaxlmError, OSError):
  """A workdir that cannot be used: a file, read-only, locked by a live run, or a full disk."""
