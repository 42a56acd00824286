"""A worker process for the stalled-job tests: takes one job and hangs until killed."""

import sys
import threading

from flowjobs.engine import Worker


def main() -> None:
    url, prefix, queue_name = sys.argv[1:4]
    started = threading.Event()

    def process(job):
        print(f"started {job.id}", flush=True)
        started.set()
        threading.Event().wait()

    Worker(
        queue_name,
        process,
        connection=url,
        prefix=prefix,
        lock_duration=500,
        stalled_interval=60_000,
        skip_stalled_check=True,
    )
    started.wait()
    threading.Event().wait()


if __name__ == "__main__":
    main()
