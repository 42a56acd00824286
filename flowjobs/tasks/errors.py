"""Errors of the django.tasks backend (their class paths end up in ``TaskError``)."""

from __future__ import annotations

from ..engine import UnrecoverableError

__all__ = ["TaskAborted", "UnknownTask"]


class UnknownTask(UnrecoverableError):
    """A task job names something that is not an importable ``@task``, or its data is not
    ``{"args": [...], "kwargs": {...}}``. The job fails at once: retrying cannot help."""


class TaskAborted(Exception):
    """Stands for a failure that happened outside the task function (never raised): the
    job stalled too often, its process died, it was cancelled or ran past its timeout.
    ``TaskError.traceback`` then holds the engine's reason and stack trace."""
