"""The processors of the benchmark site: plain `def`, as Django users write them."""

from __future__ import annotations

from typing import Any

from flowjobs import Job, processor


@processor("bench")
def noop(job: Job) -> Any:
    return None
