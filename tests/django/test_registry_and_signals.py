"""@processor registration and dispatch, and the job signals, with an in-process worker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flowjobs import (
    InvalidQueueName,
    UnrecoverableError,
    conf,
    database,
    processor,
    registry,
    signals,
)
from flowjobs.runner import EXIT_OK, RunOptions, WorkerProcess
from tests.helpers import (
    MISSING_ROLE,
    close_and_say_if_open,
    current_user_under_a_missing_role,
    skip_unless_postgresql,
)


@pytest.fixture
def scratch_queue(prefix):
    """A queue name of this test's own; its registrations are removed afterwards."""
    name = f"scratch-{prefix}"
    yield name
    for key in (None, "a", "b", "c"):
        registry.unregister(name, key)


def test_autodiscovery_registered_the_test_app_processors():
    assert {"fj-echo", "fj-named", "fj-slow", "fj-orm"} <= set(registry.queue_names())
    info = registry.get_processor("fj-named", "add")
    assert info.label == "tests.testapp.jobs.add" and info.token_mode == "positional"
    assert registry.get_processor("fj-named", "missing") is None
    assert registry.get_processor("fj-echo", "anything").name is None


def test_named_processors_and_the_default(scratch_queue):
    @processor(scratch_queue, name="a")
    def handle_a(job):
        return "a"

    @processor(scratch_queue)
    def handle_rest(job, token):
        return f"default:{job.name}"

    assert registry.get_processor(scratch_queue, "a").function is handle_a
    assert registry.get_processor(scratch_queue, "zzz").function is handle_rest
    assert handle_a(None) == "a"  # the decorator returns the function unchanged


def test_token_modes(scratch_queue):
    @processor(scratch_queue, name="a")
    def plain(job):
        return None

    @processor(scratch_queue, name="b")
    def keyword(job, *, token):
        return token

    @processor(scratch_queue, name="c")
    async def positional(job, token):
        return token

    assert registry.get_processor(scratch_queue, "a").token_mode == ""
    assert registry.get_processor(scratch_queue, "b").token_mode == "keyword"
    info = registry.get_processor(scratch_queue, "c")
    assert info.token_mode == "positional" and info.is_async
    assert registry.get_processor(scratch_queue, "b").call(None, "tok") == "tok"


def test_a_processor_with_a_third_parameter_gets_the_cancellation_signal(scratch_queue):
    from flowjobs.engine import Job, Queue

    @processor(scratch_queue, name="c")
    def with_signal(job, token, signal):
        return signal

    info = registry.get_processor(scratch_queue, "c")
    assert info.token_mode == "signal"
    job = Job(Queue(scratch_queue), "1", {"name": "c"})
    signal = info.call(job, "tok")
    assert not signal.aborted
    job.mark_cancelled("stop")
    assert signal.aborted and signal.reason == "stop"


def test_conflicting_registration_is_an_error(scratch_queue):
    @processor(scratch_queue, name="a")
    def first(job):
        return 1

    with pytest.raises(ValueError, match='already has job "a"'):

        @processor(scratch_queue, name="a")
        def second(job):
            return 2


def test_bad_queue_names_are_refused():
    with pytest.raises(InvalidQueueName, match="without ':'"):
        processor("a:b")


def test_dispatcher_kinds(scratch_queue):
    @processor(scratch_queue, name="a")
    def sync_one(job):
        return 1

    assert not registry.get_dispatcher(scratch_queue).is_async

    @processor(scratch_queue, name="b")
    async def async_one(job):
        return 2

    dispatcher = registry.get_dispatcher(scratch_queue)
    assert dispatcher.is_async
    assert asyncio.iscoroutinefunction(dispatcher.as_processor())


def test_dispatcher_fails_unknown_names_as_unrecoverable(scratch_queue):
    @processor(scratch_queue, name="a")
    def only_a(job):
        return 1

    job = conf.get_queue(scratch_queue).add("b")
    with pytest.raises(UnrecoverableError) as raised:
        registry.get_dispatcher(scratch_queue).sync_call(job, "token")
    assert str(raised.value) == f'no processor registered for job "b" in queue "{scratch_queue}"'


def test_signals_and_an_in_process_burst_worker():
    received: list[tuple[str, str, object]] = []
    lock = threading.Lock()

    def on_started(sender, job, **kwargs):
        with lock:
            received.append(("started", job.name, None))

    def on_completed(sender, job, result, **kwargs):
        with lock:
            received.append(("completed", job.name, result))

    def on_failed(sender, job, exception, **kwargs):
        with lock:
            received.append(("failed", job.name, str(exception)))

    signals.job_started.connect(on_started)
    signals.job_completed.connect(on_completed)
    signals.job_failed.connect(on_failed)
    try:
        conf.get_queue("fj-named").add("add", {"a": 20, "b": 22})
        conf.get_queue("fj-named").add("mystery", {})
        code = WorkerProcess(RunOptions(queues=["fj-named"], burst=True)).run()
    finally:
        signals.job_started.disconnect(on_started)
        signals.job_completed.disconnect(on_completed)
        signals.job_failed.disconnect(on_failed)
    assert code == EXIT_OK
    assert sorted(received, key=repr) == sorted(
        [
            ("started", "add", None),
            ("completed", "add", 42),
            ("started", "mystery", None),
            (
                "failed",
                "mystery",
                'no processor registered for job "mystery" in queue "fj-named"',
            ),
        ],
        key=repr,
    )


def test_cancel_of_a_sync_processor_in_an_async_queue_only_signals_it(
    scratch_queue, make_queue, make_worker
):
    """A sync processor beside async ones runs in the dispatcher's thread: a cancel must
    not report it stopped, nor leave its thread running unseen."""
    started = threading.Event()
    seen = []

    @processor(scratch_queue, name="a")
    async def async_one(job):
        return "async"

    @processor(scratch_queue, name="b")
    def sync_one(job, token, signal):
        started.set()
        signal.wait(30)
        seen.append(signal.reason)
        signal.throw_if_aborted()

    queue = make_queue(scratch_queue)
    job = queue.add("b")
    make_worker(scratch_queue, registry.get_dispatcher(scratch_queue).as_processor())
    assert started.wait(5)
    assert queue.cancel_and_confirm(job.id, "stop") == "signalled"
    from tests.helpers import wait_for

    wait_for(lambda: queue.get_job_state(job.id) == "failed")
    assert queue.get_job(job.id).failed_reason == "cancelled: stop"
    assert seen == ["stop"]


def _run_in_a_thread(target) -> None:
    """Runs ``target`` in a thread of its own, as a worker runs a job, then puts back the
    CONN_MAX_AGE it may change: every thread's connection shares that settings dict."""
    from django.db import connection

    original_max_age = connection.settings_dict["CONN_MAX_AGE"]
    thread = threading.Thread(target=target)
    try:
        thread.start()
        thread.join(30)
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = original_max_age


@pytest.mark.django_db(transaction=True)
def test_a_worker_thread_keeps_no_query_log_across_jobs_with_debug_on(scratch_queue, settings):
    """With DEBUG on, Django logs every query of a connection, SQL included, until a
    request starts (up to 9,000 a connection); a long-running worker thread would hold its
    jobs' statements. Its log is cleared around each job, as around a request."""
    from django.db import connection

    from tests.testapp.models import Note

    settings.DEBUG = True

    @processor(scratch_queue, name="three")
    def three_queries(job):
        for _ in range(3):
            Note.objects.count()
        return sum("testapp_note" in query["sql"] for query in connection.queries_log)

    dispatcher = registry.get_dispatcher(scratch_queue)
    job = conf.get_queue(scratch_queue).add("three")
    logged: list[int] = []

    def worker_thread() -> None:
        connection.settings_dict["CONN_MAX_AGE"] = None  # persistent, as in production
        for _ in range(5):
            logged.append(dispatcher.sync_call(job))
        logged.append(len(connection.queries_log))
        connection.close()

    _run_in_a_thread(worker_thread)
    assert logged == [3, 3, 3, 3, 3, 0]


@pytest.mark.django_db(transaction=True)
def test_connection_hygiene_around_jobs_in_a_worker_thread(scratch_queue):
    """Around each job the dispatcher closes the thread's connections that are broken or
    past their age, as Django does around a request; a thread that holds no open
    connection skips that (it has nothing to close)."""
    import time

    from django.db import connection

    from tests.testapp.models import Note

    max_age: list[float | None] = [0]

    @processor(scratch_queue, name="orm")
    def uses_the_orm(job):
        connection.settings_dict["CONN_MAX_AGE"] = max_age[0]
        return Note.objects.count()

    @processor(scratch_queue, name="plain")
    def plain(job):
        return "no database"

    dispatcher = registry.get_dispatcher(scratch_queue)
    queue = conf.get_queue(scratch_queue)
    orm_job, plain_job = queue.add("orm"), queue.add("plain")
    seen: dict[str, object] = {}

    def worker_thread() -> None:
        here = threading.get_ident()
        assert dispatcher.sync_call(plain_job) == "no database"
        seen["after plain"] = here in database._threads_with_connections
        # CONN_MAX_AGE 0: closed after the job, as at the end of a request
        assert dispatcher.sync_call(orm_job) == 0
        seen["closed at age 0"] = connection.connection is None
        seen["after age 0"] = here in database._threads_with_connections
        # persistent: kept open, and looked at around the next job, even one that does
        # not use the database
        max_age[0] = None
        dispatcher.sync_call(orm_job)
        seen["kept when persistent"] = connection.connection is not None
        connection.close_at = time.monotonic() - 1  # as if CONN_MAX_AGE had passed
        dispatcher.sync_call(plain_job)
        seen["closed past its age"] = connection.connection is None
        seen["after the close"] = here in database._threads_with_connections
        connection.close()

    _run_in_a_thread(worker_thread)
    assert seen == {
        "after plain": False,
        "closed at age 0": True,
        "after age 0": False,
        "kept when persistent": True,
        "closed past its age": True,
        "after the close": False,
    }


@pytest.mark.django_db(transaction=True)
def test_a_service_loop_tidies_a_connection_it_has_no_record_of():
    """``tidy_connections(always=True)`` (the outbox reaper's, the relay's and the mirror's
    loops) closes a connection left out of autocommit even in a thread with no record of
    opening it, where the quick test of job threads skips it (CI showed the reaper's
    thread in that state once, with its deletes left uncommitted)."""
    from django.db import connection

    seen: dict[str, object] = {}

    def service_thread() -> None:
        connection.set_autocommit(False)
        database._threads_with_connections.discard(threading.get_ident())  # no record
        database.tidy_connections()
        seen["quick test skips it"] = connection.connection is not None
        database.tidy_connections(always=True)
        seen["always: closed"] = connection.connection is None
        seen["always: autocommit again"] = connection.get_autocommit()
        connection.close()

    _run_in_a_thread(service_thread)
    assert seen == {
        "quick test skips it": True,
        "always: closed": True,
        "always: autocommit again": True,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["def", "async def"])
def test_a_job_thread_drops_a_connection_whose_connect_failed_halfway(
    scratch_queue, kind, missing_role_threads
):
    """Django's ``connect()`` opens the connection, then sets it up (autocommit, then on
    PostgreSQL the session's time zone and ``SET ROLE`` for ``OPTIONS["assume_role"]``);
    when the set-up fails it keeps the connection and sends no ``connection_created``, so
    the thread has no record of it. The next job in that thread (for an ``async def``
    processor, asgiref's thread for the ORM) must not run on it: here it would run as the
    login role instead of the assumed one (it did before the fix)."""
    from asgiref.sync import sync_to_async
    from django.db import DatabaseError

    skip_unless_postgresql()
    threads = missing_role_threads
    if kind == "def":
        processor(scratch_queue, name="whoami")(
            lambda job: current_user_under_a_missing_role(threads)
        )
    else:

        @processor(scratch_queue, name="whoami")
        async def current_user_async(job):
            return await sync_to_async(current_user_under_a_missing_role)(threads)

    dispatcher = registry.get_dispatcher(scratch_queue)
    job = conf.get_queue(scratch_queue).add("whoami")
    outcomes: list[tuple[str, object]] = []

    def worker_thread() -> None:
        for _ in range(2):
            try:
                if kind == "def":
                    outcomes.append(("ran as", dispatcher.sync_call(job)))
                else:
                    outcomes.append(("ran as", asyncio.run(dispatcher.async_call(job))))
            except DatabaseError as error:
                outcomes.append(("failed", MISSING_ROLE in str(error)))
        if kind == "def":
            outcomes.append(("left open", close_and_say_if_open()))
        else:
            outcomes.append(("left open", asyncio.run(sync_to_async(close_and_say_if_open)())))

    _run_in_a_thread(worker_thread)
    assert len(threads) == 1
    assert outcomes == [("failed", True), ("failed", True), ("left open", False)]


@pytest.mark.django_db(transaction=True)
def test_the_signal_thread_drops_a_connection_whose_connect_failed_halfway(
    scratch_queue, missing_role_threads
):
    """The same for the thread that sends the job signals: a receiver that raised is
    logged and the thread goes on, so the next receiver must not run on a connection
    whose ``connect()`` failed halfway (it ran as the login role before the fix)."""
    from django.db import DatabaseError

    skip_unless_postgresql()
    threads = missing_role_threads
    outcomes: list[tuple[str, object]] = []

    def whoami(sender, job, **kwargs):
        if job is None:  # the last one: is the connection left open?
            outcomes.append(("left open", close_and_say_if_open()))
            return
        try:
            outcomes.append(("ran as", current_user_under_a_missing_role(threads)))
        except DatabaseError as error:
            outcomes.append(("failed", MISSING_ROLE in str(error)))
            raise

    signals.job_completed.connect(whoami, sender=scratch_queue)
    try:
        job = conf.get_queue(scratch_queue).add("x")
        for each in (job, job, None):
            signals._sender.put(signals.job_completed, scratch_queue, job=each, result=None)
        assert signals.flush(10)
    finally:
        signals.job_completed.disconnect(whoami, sender=scratch_queue)
    assert len(threads) == 1
    assert outcomes == [("failed", True), ("failed", True), ("left open", False)]
