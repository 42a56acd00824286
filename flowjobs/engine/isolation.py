"""Process isolation: processors run in child processes, so CPU-bound or crashing code
cannot stall the worker (`Worker(..., isolation="process")`).

Each of the worker's `concurrency` slots owns one child, started with the `spawn`
method. A child runs `process_initializer` (a dotted path, e.g. a function calling
`django.setup()`) once, imports the processor by its dotted path (`"package.module:function"`),
runs one job at a time and answers over a pipe; jobs and results cross as JSON. A
child that dies (segfault, `os._exit`, out of memory) fails its job with
`processor process died (exit code N)` and is replaced; one that runs past the job's
timeout, or whose job is cancelled, is killed and replaced.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import multiprocessing
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .connection import Connection
from .errors import (
    DelayedError,
    FlowJobsError,
    RateLimitError,
    UnrecoverableError,
    WaitingChildrenError,
    WaitingError,
)

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "ProcessPool",
    "ProcessorDied",
    "ProcessorError",
    "ProcessorTimedOut",
    "processor_path",
    "resolve_processor",
]

# Errors a processor raises to steer the worker; they keep their meaning across the pipe.
_SIGNALS: dict[str, type[FlowJobsError]] = {
    cls.__name__: cls
    for cls in (
        UnrecoverableError,
        DelayedError,
        WaitingChildrenError,
        WaitingError,
        RateLimitError,
    )
}
_POLL_S = 0.05


class ProcessorDied(FlowJobsError):
    """The child process running a job exited (crash, os._exit, killed by the OS)."""


class ProcessorTimedOut(FlowJobsError):
    """The job ran past its timeout; its child process was killed."""


class ProcessorError(FlowJobsError):
    """An exception raised by a processor in a child process (its traceback is attached
    as a note, so it shows in the job's stacktrace)."""

    def __init__(self, message: str, type_name: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        self.add_note(f"in the processor's process:\n{remote_traceback}")


def processor_path(processor: Callable[..., Any]) -> str:
    """`"module:qualname"` of an importable function; refuses what a child cannot import."""
    module = getattr(processor, "__module__", None)
    qualname = getattr(processor, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise FlowJobsError(
            f"isolation='process' needs a processor importable by its dotted path "
            f"(a module-level function, or a 'module:function' string); got {processor!r}"
        )
    return f"{module}:{qualname}"


def import_processor(path: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise FlowJobsError(f'cannot import processor "{path}": {error}') from None
    if not callable(target):
        raise FlowJobsError(f'processor "{path}" is not callable')
    return target


def resolve_processor(processor: Any) -> tuple[Callable[..., Any] | None, str | None]:
    """The processor as a callable, and its dotted path when it has one."""
    if processor is None:
        return None, None
    if isinstance(processor, str):
        return import_processor(processor), processor
    try:
        return processor, processor_path(processor)
    except FlowJobsError:
        return processor, None


def child_connection(connection: Connection) -> str | None:
    """A URL a child process can open for `connection` (a URL, None or a client)."""
    if connection is None or isinstance(connection, str):
        return connection
    kwargs = connection.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = (
        "rediss"
        if connection.connection_pool.connection_class.__name__ == "SSLConnection"
        else "redis"
    )
    auth = ""
    if kwargs.get("password"):
        auth = f"{quote(kwargs.get('username') or '')}:{quote(kwargs['password'])}@"
    return f"{scheme}://{auth}{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


# --- the child --------------------------------------------------------------------------------
def _child_main(
    conn: Any, path: str, url: str | None, prefix: str, queue_name: str, initializer: str | None
) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when children stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer:
        # e.g. django.setup(), before the processor's module (and its models) is imported
        import_processor(initializer)()
    from .connection import async_client
    from .job import Job
    from .options import dumps
    from .queue import Queue
    from .worker import _processor_args, _wants_signal, _wants_token

    processor = import_processor(path)
    queue = Queue(queue_name, url, prefix)
    is_async = inspect.iscoroutinefunction(processor)
    pass_token = _wants_token(processor)
    # a signal that never fires: a cancelled job's child is killed instead
    pass_signal = _wants_signal(processor)

    async def run_async(args: tuple) -> Any:
        queue._aclient = async_client(url)
        try:
            return await processor(*args)
        finally:
            await queue._aclient.aclose()
            queue._aclient = None

    while True:
        try:
            task = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if task is None:
            return
        job = Job(queue, task["id"], task["fields"])
        job.token = task["token"]
        args = _processor_args(job, pass_token, pass_signal)
        try:
            result = asyncio.run(run_async(args)) if is_async else processor(*args)
            answer = {"ok": dumps(result, f'return value of job "{job.id}"')}
        except BaseException as error:  # noqa: BLE001 - report anything to the parent
            answer = {
                "error": str(error) or type(error).__name__,
                "type": type(error).__name__,
                "traceback": "".join(
                    traceback.format_exception(type(error), error, error.__traceback__)
                ),
            }
        conn.send_bytes(json.dumps(answer).encode())


# --- the parent -------------------------------------------------------------------------------
class _Child:
    def __init__(
        self, path: str, url: str | None, prefix: str, queue_name: str, initializer: str | None
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=_child_main,
            args=(child_end, path, url, prefix, queue_name, initializer),
            name=f"flowjobs-{queue_name}-processor",
            daemon=True,
        )
        self.process.start()
        child_end.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send_bytes(b"null")
        except OSError:
            pass
        self.process.join(2)
        self.kill()

    def _died(self) -> None:
        self.process.join(1)
        self.conn.close()
        raise ProcessorDied(f"processor process died (exit code {self.process.exitcode})")

    def run(self, job: Job, timeout_ms: int | None) -> Any:
        """Runs `job` in this child (blocking); returns the decoded result or raises."""
        self.conn.send_bytes(
            json.dumps({"id": job.id, "fields": job.raw, "token": job.token}).encode()
        )
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        while True:
            try:
                if self.conn.poll(_POLL_S):
                    answer = json.loads(self.conn.recv_bytes())
                    break
            except (EOFError, OSError):
                self._died()
            if not self.process.is_alive() and not self.conn.poll(0):
                self._died()
            if job.is_cancelled():
                self.kill()
                raise job.cancelled_error()
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                raise ProcessorTimedOut(
                    f"processor timed out after {timeout_ms} ms (its process was killed)"
                )
        if "ok" in answer:
            return json.loads(answer["ok"])
        signal_class = _SIGNALS.get(answer["type"])
        if signal_class is not None:
            raise signal_class(answer["error"])
        raise ProcessorError(answer["error"], answer["type"], answer["traceback"])


class ProcessPool:
    """One child process per worker slot."""

    def __init__(
        self,
        path: str,
        size: int,
        connection: Connection,
        prefix: str,
        queue_name: str,
        initializer: str | None = None,
    ) -> None:
        self.path = path
        self.size = size
        self.spec = (path, child_connection(connection), prefix, queue_name, initializer)
        self._idle: asyncio.Queue[_Child] | None = None
        self._children: list[_Child] = []
        self._lock = threading.Lock()

    def _spawn(self) -> _Child:
        child = _Child(*self.spec)
        with self._lock:
            self._children.append(child)
        return child

    async def start(self, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        children = await asyncio.gather(
            *(loop.run_in_executor(executor, self._spawn) for _ in range(self.size))
        )
        for child in children:
            self._idle.put_nowait(child)

    async def run(self, job: Job, timeout_ms: int | None, executor: Executor) -> Any:
        assert self._idle is not None, "the pool is not started"
        loop = asyncio.get_running_loop()
        child = await self._idle.get()
        try:
            return await loop.run_in_executor(executor, child.run, job, timeout_ms)
        finally:
            if not child.alive() or child.conn.closed:
                child.kill()
                with self._lock:
                    self._children.remove(child)
                child = await loop.run_in_executor(executor, self._spawn)
            self._idle.put_nowait(child)

    def close(self, force: bool = False) -> None:
        with self._lock:
            children, self._children = list(self._children), []
        for child in children:
            if force:
                child.kill()
            else:
                child.stop()
