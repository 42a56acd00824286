"""How the admin words a job's stored fields: options under BullMQ's long names, the
attempt a job is on, and stack traces with the user's frames before flowjobs' own."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# BullMQ stores a few options under short keys (Job.optsEncodeMap in its job.ts); the
# admin shows the names its users write.
LONG_OPTION_NAMES: dict[str, str] = {
    "de": "deduplication",
    "fpof": "failParentOnFailure",
    "cpof": "continueParentOnFailure",
    "idof": "ignoreDependencyOnFailure",
    "rdof": "removeDependencyOnFailure",
    "kl": "keepLogs",
    "tm": "telemetry",
}


def readable_options(opts: Any) -> Any:
    """The stored options with BullMQ's short keys spelled out (other values untouched)."""
    if not isinstance(opts, dict):
        return opts
    return {LONG_OPTION_NAMES.get(key, key): value for key, value in opts.items()}


def allowed_attempts(opts: Any) -> int:
    value = opts.get("attempts") if isinstance(opts, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def attempts_text(state: str, attempts_made: int, allowed: int, of: str = "/") -> str:
    """ "attempt 2/3" for a running job (attemptsMade counts finished attempts only, so
    it reads 0 during the first run); "1/3" (made/allowed) otherwise."""
    if state == "active":
        return (
            f"attempt {attempts_made + 1}{of}{allowed}"
            if allowed
            else f"attempt {attempts_made + 1}"
        )
    return f"{attempts_made}{of}{allowed}" if allowed else str(attempts_made)


# --------------------------------------------------------------------------- stack traces

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line \d+')


@dataclass
class FoldedTrace:
    """One stack trace: the user's part (header, their frames, the error) and the
    frames that run inside flowjobs (worker, thread pool, registry), folded away."""

    main: str
    internal: list[str] = field(default_factory=list)

    @property
    def internal_count(self) -> int:
        return len(self.internal)

    @property
    def internal_text(self) -> str:
        return "\n".join(self.internal)


def _is_flowjobs_frame(path: str) -> bool:
    # Installed or source tree: both end in .../flowjobs/<module>.py, never a user's app.
    normalized = path.replace("\\", "/")
    return normalized.startswith(_PACKAGE_DIR) or "/site-packages/flowjobs/" in normalized


def fold_trace(trace: Any) -> FoldedTrace:
    """Splits a Python traceback into the user's part and flowjobs' frames. A frame is its
    `File ...` line and the indented source lines under it. Anything that is not a Python
    traceback (a Node.js stack) stays whole."""
    text = trace if isinstance(trace, str) else str(trace)
    lines = text.split("\n")
    kept: list[str] = []
    folded: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _FRAME.match(line)
        if match is None:
            kept.append(line)
            index += 1
            continue
        frame = [line]
        index += 1
        while index < len(lines) and lines[index].startswith("    "):
            frame.append(lines[index])
            index += 1
        (folded if _is_flowjobs_frame(match["path"]) else kept).extend(frame)
    return FoldedTrace("\n".join(kept).rstrip("\n"), folded)
