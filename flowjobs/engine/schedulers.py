"""Job schedulers: jobs made on a schedule (`every` ms, or a cron `pattern` in a time zone).

The layout is BullMQ 6's, so Node.js and Python workers continue each other's
schedules: `<prefix>:<queue>:repeat` (zset: scheduler id -> ms of its pending
iteration), `<prefix>:<queue>:repeat:<id>` (hash: the definition) and one job per
run, `repeat:<id>:<ms>`. An iteration's options carry `repeat` (every | pattern,
count, ...), `prevMillis` and `repeatJobKey`.

A scheduler has exactly one pending iteration. When a worker *takes* that
iteration it produces the next one (`advance`); only the current iteration can
advance its scheduler, so any number of workers yields one job per run. Cron times
are computed here (croniter, zoneinfo); `every` arithmetic runs in the scripts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from . import scripts
from .errors import FlowJobsError, InvalidJobOptions
from .options import STORED_NAMES, dumps, encode_job, now_ms

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from .job import Job
    from .queue import Queue

__all__ = [
    "JobScheduler",
    "advance",
    "aadvance",
    "get_job_scheduler",
    "get_job_schedulers",
    "next_cron_millis",
    "owned_job_schedulers",
    "pause_job_scheduler",
    "remove_job_scheduler",
    "resume_job_scheduler",
    "run_job_scheduler_now",
    "sync_job_schedulers",
    "upsert_job_scheduler",
]

# Template options that belong to each iteration, not to the template.
_NOT_IN_TEMPLATE = {"job_id", "delay", "parent", "repeat", "prev_millis", "repeat_job_key"}
_DECLARATION_KEYS = {
    "every",
    "pattern",
    "tz",
    "limit",
    "start_date",
    "end_date",
    "immediately",
    "offset",
    "template",
}


@dataclass(frozen=True)
class JobScheduler:
    """A scheduler as stored in Redis (`get_job_scheduler`)."""

    id: str
    name: str
    next_millis: int | None
    iteration_count: int = 0
    every: int | None = None
    pattern: str | None = None
    tz: str | None = None
    limit: int | None = None
    start_date: int | None = None
    end_date: int | None = None
    offset: int | None = None
    template_data: Any = None
    template_opts: dict[str, Any] = field(default_factory=dict)
    paused: bool = False  # by pause_job_scheduler: no pending run until resumed


class SchedulerError(FlowJobsError, ValueError):
    """A scheduler definition that cannot work (both or neither of every/pattern, ...)."""


# --- cron -------------------------------------------------------------------------------------
def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise SchedulerError(
            f'unknown time zone "{tz}" (use an IANA name like "Europe/Paris")'
        ) from None


def _cron(pattern: str, start: datetime) -> croniter:
    fields = pattern.split()
    # six fields: seconds first, as BullMQ's cron-parser reads them
    return croniter(pattern, start, second_at_beginning=len(fields) == 6)


def _valid_cron(pattern: Any) -> bool:
    return isinstance(pattern, str) and croniter.is_valid(
        pattern, second_at_beginning=len(pattern.split()) == 6
    )


def next_cron_millis(
    pattern: str, after_ms: int, tz: str | None = None, start_date: int | None = None
) -> int:
    """The first time matching `pattern` (in zone `tz`) strictly after `after_ms`, or
    after `start_date` when that is later."""
    zone = _zone(tz)
    start = max(after_ms, start_date or 0)
    moment = datetime.fromtimestamp(start / 1000, zone)
    try:
        return int(round(_cron(pattern, moment).get_next(float) * 1000))
    except CroniterBadDateError:
        raise SchedulerError(
            f"pattern {pattern!r} never matches a date (e.g. the 30th of February)"
        ) from None


# --- validation ---------------------------------------------------------------------------------
def _millis(what: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SchedulerError(f"{what} must be timezone-aware, got {value!r}")
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise SchedulerError(f"{what} must be ms since the epoch or an aware datetime, got {value!r}")


def _positive(what: str, value: Any, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SchedulerError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass
class _Definition:
    scheduler_id: str
    every: int | None
    pattern: str | None
    tz: str | None
    limit: int | None
    start_date: int | None
    end_date: int | None
    immediately: bool
    offset: int | None
    name: str
    data_json: str
    template_opts: dict[str, Any]

    def stored(self) -> dict[str, Any]:
        """The scheduler hash fields this definition writes (offset only if given)."""
        values: dict[str, Any] = {"name": self.name}
        for key, value in (
            ("tz", self.tz),
            ("limit", self.limit),
            ("pattern", self.pattern),
            ("startDate", self.start_date),
            ("endDate", self.end_date),
            ("every", self.every),
            ("offset", self.offset),
        ):
            if value is not None:
                values[key] = value
        return values

    def repeat_options(self) -> dict[str, Any]:
        """`opts.repeat` of the first iteration (without count)."""
        options: dict[str, Any] = {}
        for key, value in (
            ("every", self.every),
            ("pattern", self.pattern),
            ("tz", self.tz),
            ("limit", self.limit),
            ("startDate", self.start_date),
            ("endDate", self.end_date),
        ):
            if value is not None:
                options[key] = value
        if self.every and self.offset:
            options["offset"] = self.offset
        return options


def _define(queue: Queue, scheduler_id: Any, **spec: Any) -> _Definition:
    if not isinstance(scheduler_id, str) or not scheduler_id:
        raise SchedulerError(f"a scheduler id must be a non-empty string, got {scheduler_id!r}")
    where = f'scheduler "{scheduler_id}" of queue "{queue.name}"'
    every, pattern = spec.get("every"), spec.get("pattern")
    if (every is None) == (pattern is None):
        raise SchedulerError(f"{where}: give exactly one of every (ms) or pattern (cron)")
    try:
        every = _positive("every", every)
        limit = _positive("limit", spec.get("limit"))
        offset = _positive("offset", spec.get("offset"), 0)
        start_date = _millis("start_date", spec.get("start_date"))
        end_date = _millis("end_date", spec.get("end_date"))
        tz = spec.get("tz")
        if tz is not None:
            _zone(tz)
        if pattern is not None and not _valid_cron(pattern):
            raise SchedulerError(f"pattern {pattern!r} is not a valid cron expression")
        if pattern is not None:
            next_cron_millis(pattern, now_ms(), tz)  # raises if it never fires
    except SchedulerError as error:
        raise SchedulerError(f"{where}: {error}") from None
    immediately = bool(spec.get("immediately"))
    if immediately and start_date is not None:
        raise SchedulerError(f"{where}: immediately and start_date exclude each other")

    template = spec.get("template") or {}
    if not isinstance(template, Mapping) or set(template) - {"name", "data", "opts"}:
        raise SchedulerError(f'{where}: template must be {{"name", "data", "opts"}}')
    name = template.get("name") or scheduler_id
    options = dict(template.get("opts") or {})
    bad = sorted(set(options) & _NOT_IN_TEMPLATE)
    if bad:
        raise InvalidJobOptions(f"{where}: {', '.join(bad)} cannot be template options")
    encoded = encode_job(
        queue.keys.qualified, queue.prefix, name, template.get("data"), options, None
    )
    if "attempts" not in options:
        encoded.opts.pop("attempts", None)
    return _Definition(
        scheduler_id,
        every,
        pattern,
        tz,
        limit,
        start_date,
        end_date,
        immediately,
        offset,
        name,
        encoded.data_json,
        encoded.opts,
    )


# --- writing ------------------------------------------------------------------------------------
def refuse_past_end_date(queue: Queue, scheduler_id: str, end_date: Any) -> None:
    """Node's Queue.upsertJobScheduler refuses an end date already past (its JobScheduler,
    like `upsert_job_scheduler` here, returns nothing); so do Queue and declarations."""
    try:
        end = _millis("end_date", end_date)
    except SchedulerError:
        return  # upsert_job_scheduler reports it, with the scheduler's name
    if end is not None and end < now_ms():
        raise SchedulerError(
            f'scheduler "{scheduler_id}" of queue "{queue.name}": end_date is in the past'
        )


def upsert_job_scheduler(
    queue: Queue,
    scheduler_id: str,
    every: int | None = None,
    pattern: str | None = None,
    *,
    tz: str | None = None,
    limit: int | None = None,
    start_date: int | datetime | None = None,
    end_date: int | datetime | None = None,
    immediately: bool = False,
    offset: int | None = None,
    template: Mapping[str, Any] | None = None,
    count: int | None = None,
) -> Job | None:
    """Creates the scheduler, or replaces its definition and pending iteration (no
    duplicate runs). Returns the pending iteration, or None, as Node does, when the
    schedule has no run left: past its end date, or `count` (the iterations already
    made) has reached `limit`; the scheduler is then left as it was."""
    try:
        made = _positive("count", count, 0) or 0
    except SchedulerError as error:
        raise SchedulerError(
            f'scheduler "{scheduler_id}" of queue "{queue.name}": {error}'
        ) from None

    definition = _define(
        queue,
        scheduler_id,
        every=every,
        pattern=pattern,
        tz=tz,
        limit=limit,
        start_date=start_date,
        end_date=end_date,
        immediately=immediately,
        offset=offset,
        template=template,
    )
    return _store(queue, definition, made)


def _store(queue: Queue, definition: _Definition, made: int = 0) -> Job | None:
    """Writes the definition and its pending iteration (add_job_scheduler); `made` is
    the number of iterations already made (the repeat option `count`)."""
    from .job import Job

    scheduler_id = definition.scheduler_id
    now = now_ms()
    if definition.limit is not None and made + 1 > definition.limit:
        return None
    if definition.end_date is not None and now > definition.end_date:
        return None
    next_millis: int | str = ""
    if definition.pattern is not None:
        if definition.immediately:
            next_millis = now
        else:
            next_millis = max(
                now,
                next_cron_millis(definition.pattern, now, definition.tz, definition.start_date),
            )
        if definition.end_date is not None and next_millis > definition.end_date:
            return None
    opts: dict[str, Any] = {
        **definition.template_opts,
        "repeat": {**definition.repeat_options(), "count": made + 1},
        "timestamp": now,
        "repeatJobKey": scheduler_id,
    }
    if definition.pattern is not None:
        opts["prevMillis"] = next_millis
    result = _run(
        queue,
        "add_job_scheduler",
        [
            queue.keys.qualified,
            now_ms(),
            scheduler_id,
            next_millis,
            dumps(definition.stored(), "scheduler"),
            definition.data_json,
            dumps(definition.template_opts, "template options") if definition.template_opts else "",
            dumps(opts, "iteration options"),
        ],
    )
    if result == -10:
        raise SchedulerError(
            f'scheduler "{scheduler_id}" of queue "{queue.name}": the job for its next run '
            f"(at {next_millis}) already exists"
        )
    if result == -11:
        raise SchedulerError(
            f'scheduler "{scheduler_id}" of queue "{queue.name}": the next 32 runs are taken '
            "by existing jobs"
        )
    job_id, delay = result
    return queue.get_job(job_id) or Job(
        queue,
        job_id,
        {"name": definition.name, "data": definition.data_json, "delay": str(delay)},
    )


def remove_job_scheduler(queue: Queue, scheduler_id: str) -> bool:
    """Removes the scheduler and its pending iteration if that has not started; True if
    the scheduler existed."""
    result = _run(queue, "remove_job_scheduler", [queue.keys.qualified, scheduler_id])
    return result == 0


def pause_job_scheduler(queue: Queue, scheduler_id: str) -> bool:
    """Stops the scheduler producing runs: its pending iteration (if not started) is
    removed and the definition kept, marked paused. True if the scheduler exists."""
    result = _run(queue, "pause_job_scheduler", [queue.keys.qualified, now_ms(), scheduler_id])
    return result == 0


def resume_job_scheduler(queue: Queue, scheduler_id: str) -> Job | None:
    """Gives a paused scheduler its pending iteration back (its stored definition,
    upserted: the next run is the next slot from now). Returns that iteration."""
    current = get_job_scheduler(queue, scheduler_id)
    if current is None:
        raise SchedulerError(f'queue "{queue.name}" has no job scheduler "{scheduler_id}"')
    definition = _Definition(
        scheduler_id,
        current.every,
        current.pattern,
        current.tz,
        current.limit,
        current.start_date,
        current.end_date,
        False,
        current.offset,
        current.name,
        dumps({} if current.template_data is None else current.template_data, "template data"),
        current.template_opts,
    )
    # The new pending iteration replaces the one the pause removed, which `ic` counted.
    return _store(queue, definition, max(0, current.iteration_count - 1))


def run_job_scheduler_now(queue: Queue, scheduler_id: str) -> Job:
    """One extra run now, from the scheduler's template; the schedule is left as it is
    (its pending run keeps its time)."""
    current = get_job_scheduler(queue, scheduler_id)
    if current is None:
        raise SchedulerError(f'queue "{queue.name}" has no job scheduler "{scheduler_id}"')
    python_names = {stored: name for name, stored in STORED_NAMES.items()}
    options = {python_names.get(key, key): value for key, value in current.template_opts.items()}
    return queue.add(current.name or scheduler_id, current.template_data, **options)


# --- reading ------------------------------------------------------------------------------------
def _int(value: str | None) -> int | None:
    return int(float(value)) if value not in (None, "") else None


def _scheduler(scheduler_id: str, fields: dict[str, str], score: Any) -> JobScheduler | None:
    if not fields:
        return None
    data = json.loads(fields["data"]) if fields.get("data") else None
    opts = json.loads(fields["opts"]) if fields.get("opts") else {}
    return JobScheduler(
        id=scheduler_id,
        name=fields.get("name", ""),
        next_millis=_int(score) if score is not None else None,
        iteration_count=_int(fields.get("ic")) or 0,
        every=_int(fields.get("every")),
        pattern=fields.get("pattern"),
        tz=fields.get("tz"),
        limit=_int(fields.get("limit")),
        start_date=_int(fields.get("startDate")),
        end_date=_int(fields.get("endDate")),
        offset=_int(fields.get("offset")),
        template_data=data,
        template_opts=opts if isinstance(opts, dict) else {},
        paused=bool(fields.get("fjPaused")),
    )


def get_job_scheduler(queue: Queue, scheduler_id: str) -> JobScheduler | None:
    pipe = queue.client.pipeline(transaction=False)
    pipe.hgetall(queue.keys.key(f"repeat:{scheduler_id}"))
    pipe.zscore(queue.keys.key("repeat"), scheduler_id)
    fields, score = pipe.execute()
    return _scheduler(scheduler_id, fields, score)


def get_job_schedulers(
    queue: Queue, start: int = 0, end: int = -1, asc: bool = False
) -> list[JobScheduler]:
    """Schedulers ordered by their next run (latest first unless `asc`)."""
    key = queue.keys.key("repeat")
    if asc:
        entries = queue.client.zrange(key, start, end, withscores=True)
    else:
        entries = queue.client.zrevrange(key, start, end, withscores=True)
    pipe = queue.client.pipeline(transaction=False)
    for scheduler_id, _ in entries:
        pipe.hgetall(queue.keys.key(f"repeat:{scheduler_id}"))
    found = []
    for (scheduler_id, score), fields in zip(entries, pipe.execute(), strict=True):
        scheduler = _scheduler(scheduler_id, fields, score)
        if scheduler is not None:
            found.append(scheduler)
    return found


def get_job_schedulers_count(queue: Queue) -> int:
    return queue.client.zcard(queue.keys.key("repeat"))


# --- the next iteration (called by workers when they take an iteration) --------------------------
def _next_iteration_args(queue: Queue, job: Job) -> list[Any] | None:
    """The update_job_scheduler arguments for the run after `job`, or None when the
    schedule is over (limit or end date reached)."""
    repeat = job.opts.get("repeat")
    if not isinstance(repeat, dict) or not job.repeat_job_key:
        return None
    count = int(repeat.get("count") or 0) + 1
    limit = repeat.get("limit")
    if isinstance(limit, int | float) and count > limit:
        return None
    now = now_ms()
    end_date = repeat.get("endDate")
    if isinstance(end_date, int | float) and now > end_date:
        return None
    opts = {k: v for k, v in job.opts.items() if k not in ("prevMillis", "jobId", "delay")}
    next_millis: int | str = ""
    pattern = repeat.get("pattern")
    if pattern:
        after = max(now, int(job.opts.get("prevMillis") or 0))
        try:
            next_millis = next_cron_millis(
                pattern, after, repeat.get("tz"), repeat.get("startDate")
            )
        except (CroniterBadCronError, SchedulerError, ValueError):
            return None
        if isinstance(end_date, int | float) and next_millis > end_date:
            return None
        next_millis = max(next_millis, after)
        opts["prevMillis"] = next_millis
    opts["repeat"] = {**repeat, "count": count}
    opts["timestamp"] = now
    opts["repeatJobKey"] = job.repeat_job_key
    return [
        queue.keys.qualified,
        now_ms(),
        job.repeat_job_key,
        next_millis,
        dumps(opts, "iteration options"),
        job.id,
    ]


def advance(queue: Queue, job: Job, client: redis.Redis | None = None) -> str | None:
    """Produces the iteration after `job` (a scheduler's current iteration); returns its
    id, or None when there is none (not current, schedule over, scheduler removed)."""
    args = _next_iteration_args(queue, job)
    if args is None:
        return None
    result = _run(queue, "update_job_scheduler", args, client)
    return result or None


async def aadvance(queue: Queue, job: Job, client: redis.asyncio.Redis) -> str | None:
    args = _next_iteration_args(queue, job)
    if args is None:
        return None
    result = await scripts.arun_for_queue(
        client, queue.client, queue.keys.qualified, "update_job_scheduler", [queue.keys.meta], args
    )
    return result or None


def _run(queue: Queue, script: str, args: list[Any], client: redis.Redis | None = None) -> Any:
    """A scheduler script on `queue` (`scripts.run_for_queue`: nothing was written when
    another client's value refused it)."""
    return scripts.run_for_queue(
        client or queue.client, queue.keys.qualified, script, [queue.keys.meta], args
    )


# --- declared schedulers ------------------------------------------------------------------------
def _matches(current: JobScheduler, wanted: _Definition) -> bool:
    stored = wanted.stored()
    same = (
        current.name == wanted.name
        and current.every == wanted.every
        and current.pattern == wanted.pattern
        and current.tz == wanted.tz
        and current.limit == wanted.limit
        and current.start_date == wanted.start_date
        and current.end_date == wanted.end_date
        and ("offset" not in stored or current.offset == wanted.offset)
        and current.template_opts == wanted.template_opts
    )
    data = json.loads(wanted.data_json)
    return same and current.template_data == (data if data != {} else None)


def _plan(
    queue: Queue, declarations: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
) -> list[tuple[Any, dict[str, Any], _Definition]]:
    """Validates declarations (nothing is written); raises SchedulerError naming the problem."""
    if isinstance(declarations, Mapping):
        items = [(key, dict(value)) for key, value in declarations.items()]
    else:
        items = []
        for entry in declarations:
            entry = dict(entry)
            items.append((entry.pop("id", None), entry))
    plans = []
    for scheduler_id, spec in items:
        unknown = set(spec) - _DECLARATION_KEYS
        if unknown:
            raise SchedulerError(
                f'scheduler "{scheduler_id}" of queue "{queue.name}": unknown keys '
                f"{sorted(unknown)} (known: {sorted(_DECLARATION_KEYS)})"
            )
        definition = _define(queue, scheduler_id, **spec)
        # a declaration that expired is a settings mistake: say so, as Queue does
        refuse_past_end_date(queue, scheduler_id, spec.get("end_date"))
        plans.append((scheduler_id, spec, definition))
    return plans


def check_job_schedulers(
    queue: Queue, declarations: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
) -> None:
    """Raises SchedulerError when a declaration for `sync_job_schedulers` is invalid."""
    _plan(queue, declarations)


def sync_job_schedulers(
    queue: Queue,
    declarations: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    remove_undeclared: bool = False,
    owner: str | None = None,
) -> dict[str, list[str]]:
    """Makes the queue's schedulers match `declarations`.

    `declarations` maps each scheduler id to the keyword arguments of
    `upsert_job_scheduler` (`every` or `pattern`, `tz`, `limit`, `start_date`,
    `end_date`, `immediately`, `offset`, `template`); a list of such dicts with an
    `"id"` key works too. A scheduler whose stored definition already matches is
    left alone (its pending run keeps its place); a changed one is upserted. With
    `remove_undeclared`, schedulers of the queue that are not declared are removed.
    With `owner` (a name, e.g. "settings"), the declared ids are remembered in the
    queue's meta hash as that owner's, and the ones it declared last time and no
    longer does are removed; schedulers made elsewhere (code, Node.js) are left alone.
    Every declaration is validated before anything is written. Returns the ids
    `created`, `updated`, `unchanged` and `removed`. A paused scheduler whose
    definition is unchanged stays paused.
    """
    plans = _plan(queue, declarations)
    report: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": [], "removed": []}
    for scheduler_id, spec, definition in plans:
        current = get_job_scheduler(queue, scheduler_id)
        if current is not None and _matches(current, definition):
            report["unchanged"].append(scheduler_id)
            continue
        upsert_job_scheduler(queue, scheduler_id, **spec)
        report["created" if current is None else "updated"].append(scheduler_id)
    declared = {scheduler_id for scheduler_id, _, _ in plans}
    undeclared: list[str] = []
    if remove_undeclared:
        undeclared = queue.client.zrange(queue.keys.key("repeat"), 0, -1)
    elif owner is not None:
        undeclared = owned_job_schedulers(queue, owner)
    for scheduler_id in undeclared:
        if scheduler_id not in declared and remove_job_scheduler(queue, scheduler_id):
            report["removed"].append(scheduler_id)
    if owner is not None:
        field = _owner_field(owner)
        if declared:
            queue.client.hset(queue.keys.meta, field, dumps(sorted(declared), "scheduler ids"))
        else:
            queue.client.hdel(queue.keys.meta, field)
    return report


def _owner_field(owner: str) -> str:
    # a meta hash field BullMQ does not read
    return f"fjSchedulers:{owner}"


def owned_job_schedulers(queue: Queue, owner: str) -> list[str]:
    """The scheduler ids `owner` declared at its last `sync_job_schedulers`."""
    stored = queue.client.hget(queue.keys.meta, _owner_field(owner))
    try:
        ids = json.loads(stored) if stored else []
    except ValueError:
        return []
    return [item for item in ids if isinstance(item, str)] if isinstance(ids, list) else []
