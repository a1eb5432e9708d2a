"""Errors a user fixes in the command line, the config or the data: one line and exit status 2, no traceback.

``train.py`` and ``eval.py`` pass every exception through :func:`user_error`. A :class:`ConfigError`, a
:class:`DataError` (also when Hydra's ``instantiate`` wrapped it in an ``InstantiationException``) or a busy run
folder becomes ``config error: ...`` / ``data error: ...`` / ``error: ...`` on stderr, and the folder this start
created is removed when it holds nothing but Hydra's record (no folder that looks like a run). With
``HYDRA_FULL_ERROR=1`` the traceback is shown as well.
"""

from __future__ import annotations

import os
import sys

from src.datamodules.errors import DataError
from src.utils.config_checks import ConfigError
from src.utils.run_lock import RunFolderBusy, remove_failed_start

KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ConfigError, "config error"),
    (DataError, "data error"),
    (RunFolderBusy, "error"),
)


def user_error(exc: BaseException) -> tuple[str, BaseException] | None:
    """``(label, the error)`` when ``exc`` or an exception it was raised from is a user's error, else None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for kind, label in KINDS:
            if isinstance(e, kind):
                return label, e
        e = e.__cause__ or e.__context__
    return None


def exit_on_user_error(exc: BaseException, output_dir: str | None, log_name: str | None) -> None:
    """Print a user's error as one line and exit 2. Returns, for the caller to re-raise, on any other error and
    under ``HYDRA_FULL_ERROR=1``."""
    found = user_error(exc)
    if found is None:
        return
    label, err = found
    if not isinstance(err, RunFolderBusy):  # never touch a folder another run holds
        remove_failed_start(output_dir, log_name)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    print(f"{label}: {str(err).strip().replace(chr(10), ' ')}", file=sys.stderr)
    sys.exit(2)
