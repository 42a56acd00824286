"""Sentinels and a Redis Cluster on loopback, for the scale-out tests."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from flowjobs.testing.server import pdeathsig_prefix
from tests.helpers import wait_for
from tests.redis_server import RedisServer, free_port


class SentinelProcess:
    """`redis-server <conf> --sentinel` watching `service` on the given primary."""

    def __init__(self, primary_port: int, service: str = "mymaster", quorum: int = 2) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flowjobs-sentinel-"))
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"logfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.proc = subprocess.Popen(
            [
                *pdeathsig_prefix(),
                shutil.which("redis-server") or "redis-server",
                str(conf),
                "--sentinel",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._answers, timeout=10, message=f"sentinel on {self.port} did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def sentinel_setup(
    sentinels: int = 3,
) -> Iterator[tuple[RedisServer, RedisServer, list[SentinelProcess]]]:
    """A primary, a replica of it, and `sentinels` Sentinels that see both."""
    primary = RedisServer()
    replica = RedisServer(["--replicaof", "127.0.0.1", str(primary.port)])
    watchers: list[SentinelProcess] = []
    try:

        def replicating() -> bool:
            with replica.client(decode_responses=True) as client:
                return client.info("replication").get("master_link_status") == "up"

        wait_for(replicating, timeout=15, message="the replica never synced")
        watchers = [SentinelProcess(primary.port) for _ in range(sentinels)]

        def all_see_the_replica() -> bool:
            for watcher in watchers:
                with watcher.client() as client:
                    if not client.sentinel_slaves("mymaster"):
                        return False
            return True

        wait_for(all_see_the_replica, timeout=20, message="sentinels never saw the replica")

        def all_know_each_other() -> bool:
            # hello messages every 2 s; a vote on a down primary needs the others known
            for watcher in watchers:
                with watcher.client() as client:
                    if len(client.sentinel_sentinels("mymaster")) < sentinels - 1:
                        return False
            return True

        wait_for(all_know_each_other, timeout=20, message="sentinels never met each other")
        yield primary, replica, watchers
    finally:
        for watcher in watchers:
            watcher.close()
        replica.close()
        primary.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def redis_cluster(primaries: int = 3) -> Iterator[list[RedisServer]]:
    """`primaries` cluster nodes on loopback, joined with `redis-cli --cluster create`,
    no replicas; yields once every node reports cluster_state:ok."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(primaries):
            nodes.append(
                RedisServer(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "3000",
                    ],
                    port=_cluster_port(),
                )
            )
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]

        def ready() -> bool:
            for node in nodes:
                with node.client(decode_responses=True) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
            return True

        wait_for(ready, timeout=30, interval=0.1, message="the cluster never became ok")
        yield nodes
    finally:
        for node in nodes:
            node.close()


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
