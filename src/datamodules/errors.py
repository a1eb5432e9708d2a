"""Data errors."""


class BadRecordError(ValueError):
    """A malformed record; the message names the source and row."""
