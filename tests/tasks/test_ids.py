"""Task result ids: UUID4s from a pool of kernel random bytes, never shared with a fork."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from flowjobs.tasks.backend import RandomIds


def test_ids_are_uuid4s_and_distinct_across_pool_refills():
    ids = RandomIds()
    made = [ids.new() for _ in range(3 * RandomIds.POOL_BYTES // 16 + 5)]
    assert len(set(made)) == len(made)
    for value in made:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_threads_never_get_the_same_id():
    ids = RandomIds()
    made: list[list[str]] = [[] for _ in range(8)]

    def make(into: list[str]) -> None:
        for _ in range(500):
            into.append(ids.new())

    threads = [threading.Thread(target=make, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [value for into in made for value in into]
    assert len(set(everything)) == len(everything) == 4000


# the test process has threads of its own (pytest-xdist's); the child only makes ids
@pytest.mark.filterwarnings("ignore:This process .* fork:DeprecationWarning")
def test_a_forked_child_does_not_reuse_its_parents_pool():
    ids = RandomIds()
    ids.new()  # the pool is filled before the fork
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(writer, " ".join(ids.new() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {ids.new() for _ in range(10)}
    assert len(child) == 10 and not child & parent
