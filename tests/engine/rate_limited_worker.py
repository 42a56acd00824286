"""A worker process for the rate-limit tests: processes jobs under a limiter until stdin closes.

Usage: python -m tests.engine.rate_limited_worker <url> <prefix> <queue> <name> <max> <duration>
"""

import sys

from flowjobs.engine import Worker


def main() -> None:
    url, prefix, queue_name, name, max_jobs, duration = sys.argv[1:7]
    worker = Worker(
        queue_name,
        lambda job: None,
        connection=url,
        prefix=prefix,
        name=name,
        concurrency=4,
        limiter={"max": int(max_jobs), "duration": int(duration)},
    )
    print("ready", flush=True)
    sys.stdin.read()  # the test closes stdin to stop us
    worker.close(timeout=5)


if __name__ == "__main__":
    main()
