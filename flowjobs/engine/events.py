"""QueueEvents: listening to a queue's events stream (`<prefix>:<queue>:events`);
QueueEventsProducer: adding custom events to it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import redis

from .connection import Connection, OutageLog, check_cluster_prefix, describe, sync_client
from .errors import InvalidArgument, InvalidEvent
from .keys import QueueKeys
from .options import whole_argument

logger = logging.getLogger("flowjobs.events")

Listener = Callable[[dict[str, Any]], Any]


class QueueEvents:
    """Calls listeners for each entry of a queue's events stream, in order.

    Each event is a dict of the entry's fields (`event`, `jobId`, ...) plus `id`,
    the stream entry id. Like BullMQ, `completed.returnvalue` and `progress.data`
    stay JSON text in Redis; here they are decoded. Listeners run in the reading
    thread. `on("completed:<jobId>", fn)` listens to one job.
    """

    def __init__(
        self,
        queue_name: str,
        connection: Connection = None,
        prefix: str = "bull",
        last_event_id: str = "$",
        blocking_timeout_ms: int = 10_000,
        autorun: bool = True,
    ) -> None:
        self.keys = QueueKeys(prefix, queue_name)
        blocking_timeout_ms = whole_argument("blocking_timeout_ms", blocking_timeout_ms, 1)
        if not isinstance(last_event_id, str) or not last_event_id:
            raise InvalidArgument(
                f'last_event_id must be a stream id or "$", got {last_event_id!r}'
            )
        self.client = sync_client(connection)
        check_cluster_prefix(self.client, prefix)
        self.last_event_id = last_event_id
        self.blocking_timeout_ms = blocking_timeout_ms
        self._listeners: dict[str, list[Listener]] = {}
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._outage = OutageLog(logger, describe(connection))
        if autorun:
            self.start()

    def on(self, event: str, listener: Listener) -> QueueEvents:
        self._listeners.setdefault(event, []).append(listener)
        return self

    def off(self, event: str, listener: Listener) -> None:
        self._listeners.get(event, []).remove(listener)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.run, daemon=True, name=f"flowjobs-events-{self.keys.name}"
            )
            self._thread.start()
            self._ready.wait(5)

    def wait_until_ready(self, timeout: float = 5.0) -> bool:
        return self._ready.wait(timeout)

    def run(self) -> None:
        while not self._closing.is_set():
            try:
                if self.last_event_id == "$":
                    # pin "$" to a real id so nothing between start and the first read
                    # is missed
                    info = (
                        self.client.xinfo_stream(self.keys.events)
                        if self.client.exists(self.keys.events)
                        else None
                    )
                    self.last_event_id = info["last-generated-id"] if info else "0-0"
                self._ready.set()
                # the block stays well under the socket timeout: a silent connection
                # (a half-open cut) times out and is replaced
                answer = self.client.xread(
                    {self.keys.events: self.last_event_id},
                    block=min(self.blocking_timeout_ms, 1000),
                    count=1000,
                )
                self._outage.back()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self._outage.lost(error)
                self._closing.wait(1)
                continue
            for _, entries in answer or []:
                for entry_id, fields in entries:
                    self.last_event_id = entry_id
                    self._dispatch(entry_id, fields)

    def _dispatch(self, entry_id: str, fields: dict[str, str]) -> None:
        event = decode_event(entry_id, fields)
        name = event.get("event", "")
        targets = list(self._listeners.get(name, ())) + list(self._listeners.get("*", ()))
        if "jobId" in event:
            targets += self._listeners.get(f"{name}:{event['jobId']}", ())
        for listener in targets:
            try:
                listener(event)
            except Exception:
                logger.exception("listener for %r failed", name)

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)


class QueueEventsProducer:
    """Publishes custom events on a queue's events stream, as Node's QueueEventsProducer:
    QueueEvents listeners (Python and Node) receive them like the queue's own events."""

    def __init__(
        self, queue_name: str, connection: Connection = None, prefix: str = "bull"
    ) -> None:
        self.keys = QueueKeys(prefix, queue_name)
        self.connection = connection
        self.client = sync_client(connection)
        check_cluster_prefix(self.client, prefix)

    def publish_event(
        self,
        event_name: str,
        fields: Mapping[str, str | int | float] | None = None,
        max_events: int = 1000,
    ) -> str:
        """Adds `{event: event_name, **fields}` to the stream, trimmed to about
        `max_events` entries; returns the entry id. Values are stored as text."""
        where = f'custom event for queue "{self.keys.name}"'
        if not isinstance(event_name, str) or not event_name:
            raise InvalidEvent(f"{where}: the event name must be a non-empty string")
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
            raise InvalidEvent(f"{where}: max_events must be a positive integer")
        entry: dict[str, str | int | float] = {"event": event_name}
        for name, value in (fields or {}).items():
            if not isinstance(name, str) or name in ("", "event"):
                raise InvalidEvent(f'{where} "{event_name}": bad field name {name!r}')
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise InvalidEvent(
                    f'{where} "{event_name}": field {name!r} must be text or a number, '
                    f"got {type(value).__name__} (serialise it first, e.g. json.dumps)"
                )
            entry[name] = value
        return self.client.xadd(self.keys.events, entry, maxlen=max_events, approximate=True)

    def close(self) -> None:
        if self.connection is None or isinstance(self.connection, str):
            self.client.close()


def decode_event(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    import json

    event: dict[str, Any] = dict(fields)
    event["id"] = entry_id
    for name, field in (("completed", "returnvalue"), ("progress", "data")):
        if event.get("event") == name and field in event:
            try:
                event[field] = json.loads(event[field])
            except ValueError:
                pass
    if event.get("event") == "delayed" and "delay" in event:
        try:
            event["delay"] = int(float(event["delay"]))
        except ValueError:
            pass
    return event
