"""Data errors: one line a user can act on (the file, the line, the fix), printed without a traceback.

``train.py`` and ``eval.py`` print a :class:`DataError` as ``data error: <message>`` and exit with status 2,
like a config error (the traceback only with ``HYDRA_FULL_ERROR=1``).
"""


class DataError(ValueError):
    """A problem with the data or how it is mapped: a missing file, an empty one, fields that are not there."""


class BadRecordError(DataError):
    """A malformed record; the message names the source and row."""
