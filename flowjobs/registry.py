"""Processor registry: ``@processor("queue")`` / ``@processor("queue", name="job-name")``.

Processors live in each installed app's ``jobs.py`` and are registered when that
module is imported (``autodiscover()``, run by the app's ``ready()``). For every queue
the registry builds one dispatch function for the engine Worker: it picks the
processor registered for the job's name, else the queue's default processor, and
fails the job (without retrying) when there is neither.

Around every job the dispatch function does what Django does around a request, in the
thread that runs the job (``flowjobs.database.tidy_connections``), so a worker recovers
from a database restart and never holds a connection past its age.

Per-job log lines are the engine worker's (``flowjobs.engine.joblog``): it writes them
once Redis recorded the outcome, for every pool, and knows a retry from a final failure.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .database import (
    some_thread_holds_a_connection,
    tidy_connections,
    tidy_orm_thread,
    tidy_orm_thread_always,
)
from .engine import CancellationSignal, InvalidQueueName, Job, UnrecoverableError

__all__ = [
    "Dispatcher",
    "ProcessorInfo",
    "autodiscover",
    "clear",
    "get_dispatcher",
    "get_processor",
    "processor",
    "queue_names",
    "register",
    "unregister",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ProcessorInfo:
    """A registered processor: what it handles and how to call it."""

    function: Callable[..., Any]
    queue: str
    name: str | None  # None: the queue's default processor
    # "": job only, "positional": (job, token), "keyword": (job, token=),
    # "signal": (job, token, cancellation signal)
    token_mode: str
    is_async: bool

    def call(self, job: Job, token: str | None) -> Any:
        if self.token_mode == "signal":
            return self.function(job, token, CancellationSignal(job))
        if self.token_mode == "positional":
            return self.function(job, token)
        if self.token_mode == "keyword":
            return self.function(job, token=token)
        return self.function(job)

    @property
    def label(self) -> str:
        module = getattr(self.function, "__module__", "?")
        qualname = getattr(self.function, "__qualname__", repr(self.function))
        return f"{module}.{qualname}"


_registry: dict[str, dict[str | None, ProcessorInfo]] = {}
_lock = threading.Lock()
_discovered = False


def _token_mode(function: Callable[..., Any]) -> str:
    """How ``function`` takes the lock token: second positional, ``token=``, or not at all."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return ""
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3:
        return "signal"
    if len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return "positional"
    if any(p.name == "token" and p.kind == p.KEYWORD_ONLY for p in parameters):
        return "keyword"
    return ""


def _check_queue_name(queue: Any) -> None:
    if not isinstance(queue, str) or not queue or ":" in queue:
        raise InvalidQueueName(
            f"@processor needs a queue name without ':' (BullMQ key layout), got {queue!r}"
        )


def register(
    function: Callable[..., Any],
    queue: str,
    name: str | None = None,
    replace: bool = False,
) -> ProcessorInfo:
    """Registers ``function`` for ``queue`` (and job ``name``, or as the default).

    Registering a second, different function for the same queue and name raises
    ValueError unless ``replace``; re-registering the same function (a module
    imported twice) is harmless.
    """
    _check_queue_name(queue)
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"@processor name must be a non-empty string, got {name!r}")
    if not callable(function):
        raise TypeError(f"@processor needs a callable, got {function!r}")
    info = ProcessorInfo(
        function=function,
        queue=queue,
        name=name,
        token_mode=_token_mode(function),
        is_async=inspect.iscoroutinefunction(function),
    )
    with _lock:
        handlers = _registry.setdefault(queue, {})
        existing = handlers.get(name)
        if existing is not None and not replace and existing.label != info.label:
            what = f'job "{name}"' if name else "the default processor"
            raise ValueError(
                f'queue "{queue}" already has {what} ({existing.label}); '
                f"cannot also register {info.label}"
            )
        handlers[name] = info
    return info


def processor(queue: str, name: str | None = None) -> Callable[[F], F]:
    """Decorator: ``@processor("emails")`` handles every job of the queue that has no
    specific processor; ``@processor("emails", name="welcome")`` handles one job name.

    The function takes ``job`` (and optionally ``token``), may be ``async def``, and
    returns the job's JSON return value. It is returned unchanged.
    """

    _check_queue_name(queue)

    def decorate(function: F) -> F:
        register(function, queue, name)
        return function

    return decorate


def unregister(queue: str, name: str | None = None) -> None:
    with _lock:
        handlers = _registry.get(queue, {})
        handlers.pop(name, None)
        if not handlers:
            _registry.pop(queue, None)


def clear() -> None:
    """Forgets every registration (tests)."""
    with _lock:
        _registry.clear()


def queue_names() -> list[str]:
    """Queues with at least one registered processor, sorted."""
    autodiscover()
    with _lock:
        return sorted(q for q, handlers in _registry.items() if handlers)


def get_processor(queue: str, name: str) -> ProcessorInfo | None:
    """The processor for job ``name`` in ``queue``: the specific one, else the default."""
    with _lock:
        handlers = _registry.get(queue, {})
        return handlers.get(name) or handlers.get(None)


def autodiscover() -> None:
    """Imports ``jobs`` from every installed app (once per process)."""
    global _discovered
    if _discovered:
        return
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("jobs")
    _discovered = True


# --------------------------------------------------------------------------- dispatch


def _missing(queue: str, job: Job) -> UnrecoverableError:
    return UnrecoverableError(f'no processor registered for job "{job.name}" in queue "{queue}"')


class Dispatcher:
    """The one processor function a queue's engine Worker calls for every job.

    Its ``__call__`` is a plain function when every processor of the queue is
    synchronous (the engine runs it in its thread pool) and a coroutine function
    when any is ``async def`` (the engine awaits it on its loop; synchronous
    processors of that queue then run in a pool of ``concurrency`` threads).
    """

    def __init__(self, queue: str, concurrency: int = 1) -> None:
        self.queue = queue
        self.concurrency = concurrency
        # The processors as registered now (runworker makes its dispatchers after
        # autodiscovery): a job picks its processor without taking the registry's lock.
        with _lock:
            self._handlers = dict(_registry.get(queue, {}))
        self._default = self._handlers.get(None)
        self.is_async = any(info.is_async for info in self._handlers.values())
        self._executor: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _select(self, job: Job) -> ProcessorInfo:
        info = self._handlers.get(job.name) or self._default
        if info is None:
            raise _missing(self.queue, job)
        return info

    def run_sync(self, info: ProcessorInfo, job: Job, token: str | None) -> Any:
        """Runs a synchronous processor with Django's connection hygiene around it."""
        return _with_connection_hygiene(ProcessorInfo.call, info, job, token)

    def sync_call(self, job: Job, token: str | None = None) -> Any:
        return self.run_sync(self._select(job), job, token)

    def call_here(self, job: Job, token: str | None = None) -> Any:
        """Runs the job's processor in the calling thread (an ``async def`` one through
        asgiref's ``async_to_sync``) and leaves database connections alone: the test kit
        runs jobs in the test's own thread, inside the test's transaction, which
        ``tidy_connections()`` would end."""
        info = self._select(job)
        if not info.is_async:
            return info.call(job, token)
        from asgiref.sync import async_to_sync

        return async_to_sync(_on_own_loop)(info, job, token)

    async def async_call(self, job: Job, token: str | None = None) -> Any:
        info = self._select(job)
        if info.is_async:
            return await self._run_async(info, job, token)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.concurrency,
                thread_name_prefix=f"flowjobs-{self.queue}-sync",
            )
        loop = asyncio.get_running_loop()
        # a cancel must not abandon the thread (it would run on unseen): the job ends
        # when the processor does, after it saw its signal
        job.runs_in_thread = True
        return await loop.run_in_executor(self._executor, self.run_sync, info, job, token)

    async def _run_async(self, info: ProcessorInfo, job: Job, token: str | None) -> Any:
        # as the sync path tidies its own thread (no hop while no thread holds a connection)
        if some_thread_holds_a_connection():
            await tidy_orm_thread()
        try:
            result = await info.call(job, token)
        except BaseException:
            await tidy_orm_thread_always()  # (a failed connect() in the ORM's thread)
            raise
        if some_thread_holds_a_connection():
            await tidy_orm_thread()
        return result

    def as_processor(self) -> Callable[..., Any]:
        """The function to pass to ``Worker(queue, processor)``."""
        return self.async_call if self.is_async else self.sync_call


def get_dispatcher(queue: str, concurrency: int = 1) -> Dispatcher:
    """A dispatcher for ``queue`` (processors discovered first)."""
    autodiscover()
    return Dispatcher(queue, concurrency)


# --- process isolation (runworker --pool=process) -------------------------------------------


def setup_isolated_child() -> None:
    """Initializer of an isolated worker child (a fresh interpreter): Django and the
    processors of every app's jobs.py."""
    import django

    django.setup()
    autodiscover()


def isolated_dispatch(job: Job, token: str | None = None) -> Any:
    """The processor an isolated child imports by path: picks the registered processor
    of the job's queue and name and runs it (with connection hygiene)."""
    info = get_processor(job.queue_name, job.name)
    if info is None:
        raise _missing(job.queue_name, job)
    return _with_connection_hygiene(_call_to_the_end, info, job, token)


def _with_connection_hygiene(
    call: Callable[..., Any], info: ProcessorInfo, job: Job, token: str | None
) -> Any:
    """``call(info, job, token)`` in a job's thread, with what Django does around a
    request before and after it; after a call that raised, a connection whose
    ``connect()`` failed halfway is closed too (``tidy_connections(always=True)``).
    (Arguments spelled out, not ``*args``: this is every sync job's path.)"""
    tidy_connections()
    try:
        result = call(info, job, token)
    except BaseException:
        tidy_connections(always=True)
        raise
    tidy_connections()
    return result


def _call_to_the_end(info: ProcessorInfo, job: Job, token: str | None) -> Any:
    result = info.call(job, token)
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _on_own_loop(info: ProcessorInfo, job: Job, token: str | None) -> Any:
    """Runs an async processor on the running loop, which is not its worker's: the job it
    gets uses an asyncio Redis client of this loop for its a* methods."""
    import copy

    queue = job.queue.on_event_loop()
    own = copy.copy(job)
    own.queue = queue
    try:
        return await info.call(own, token)
    finally:
        await queue.aclient().aclose()
