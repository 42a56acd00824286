"""A worker process for the rate-limit tests: processes jobs under a limiter until stdin closes.

Usage: python -m tests.engine.rate_limited_worker <url> <prefix> <queue> <name> <max> <duration>
"""

import sys
import time

from flowjobs.engine import Worker


def main() -> None:
    url, prefix, queue_name, name, max_jobs, duration = sys.argv[1:7]
    worker = Worker(
        queue_name,
        # one job at a time, 0.1 s each: alone a worker can take at most a job per 0.1 s,
        # so each takes a share of every window it is running for, however quick the
        # other is to wake when the window opens; two of them could do 20 a second, so
        # the limiter is what holds them back
        lambda job: time.sleep(0.1),
        connection=url,
        prefix=prefix,
        name=name,
        concurrency=1,
        limiter={"max": int(max_jobs), "duration": int(duration)},
    )
    print("ready", flush=True)
    sys.stdin.read()  # the test closes stdin to stop us
    worker.close(timeout=5)


if __name__ == "__main__":
    main()
