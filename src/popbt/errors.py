"""popbt's errors, and the exit status each one means, in one place.

Every error popbt raises on purpose is a ``PopbtError``. The command line turns one into a
single line on stderr and ``exit_code``; ``--debug`` shows the traceback instead. Anything
else that escapes is a bug or the environment's: one line too, exit status 1.

Exit statuses: 0 done; 1 the run failed (or an unexpected error); 2 bad input, nothing
written; 3 this worker cannot work here (device, checkpoint disk, a failing streak), its
members not charged; 128 + signal number when stopped by SIGINT (130) or SIGTERM (143).
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WORKER_FAULT = 3


class PopbtError(Exception):
    """Base of every error popbt raises on purpose: a one-line message, and optionally a
    ``detail`` the command line prints after it (e.g. the traceback of the user's code that
    made a run fail; never popbt's own, which ``--debug`` shows)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str = "", detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class UsageError(PopbtError, ValueError):
    """Bad input: the user can fix it, and nothing was written."""

    exit_code = EXIT_USAGE


class SpecError(UsageError):
    """The spec cannot be found, does not import, or lacks what popbt needs."""


class ConfigError(UsageError):
    """An experiment setting is invalid or conflicts with a stored experiment."""


class SpaceError(UsageError):
    """A search-space domain is invalid."""


class StrategyError(UsageError):
    """An exploit or explore rule cannot be used with these settings."""


class NotFound(UsageError, LookupError):
    """No experiment of that name (or no database where one was expected)."""


class StoreError(PopbtError, RuntimeError):
    """The database cannot be used: unreachable, another schema version, a malformed URL, or
    its file deleted while in use."""

    exit_code = EXIT_USAGE


class CorruptCheckpoint(PopbtError, RuntimeError):
    """A checkpoint is missing, or its bytes do not match the checksum recorded for it."""

    exit_code = EXIT_USAGE


class WorkerFault(PopbtError):
    """This worker cannot train here (its device or checkpoint directory is unusable, or it
    failed several different members in a row): it stops taking work, its members are not
    charged, and other workers carry on."""

    exit_code = EXIT_WORKER_FAULT


class RunFailed(PopbtError):
    """The experiment cannot succeed (every member failed its first interval, or every member
    was given up), or its workers all stopped before it finished."""

    exit_code = EXIT_FAILED


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: running intervals are handed back and the process exits 128 + signal.

    A KeyboardInterrupt, so that user code catching ``Exception`` cannot swallow it."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(error: BaseException) -> int:
    """The exit status for an error that ends a popbt command."""
    if isinstance(error, Interrupted):
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(error, PopbtError):
        return error.exit_code
    return EXIT_FAILED
