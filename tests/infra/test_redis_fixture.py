"""The test infrastructure itself: private redis-servers, per-test prefixes, wait_for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import delete_prefixed_keys, free_port, new_prefix, wait_for
from tests.redis_server import RedisServer, RedisServerError

REPO_ROOT = Path(__file__).resolve().parents[2]


def process_gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def refuses_connections(server: RedisServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=1):
            return False
    except OSError:
        return True


@pytest.fixture
def own_server():
    """A server of this test's own, which it may stop, kill and pause."""
    with RedisServer() as server:
        yield server


def test_session_server_answers_without_persistence(redis_server, redis_client):
    assert redis_client.ping() is True
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.config_get("save") == {"save": ""}
    assert redis_client.config_get("appendonly") == {"appendonly": "no"}
    assert redis_client.config_get("bind")["bind"] == "127.0.0.1"
    assert redis_client.config_get("dir")["dir"] == str(redis_server.dir)


def test_raw_client_decodes_and_server_client_returns_bytes(redis_server, redis_client, prefix):
    redis_client.set(f"{prefix}:k", "v")
    assert redis_client.get(f"{prefix}:k") == "v"
    with redis_server.client() as raw:
        assert raw.get(f"{prefix}:k") == b"v"


def test_prefixes_are_unique_and_cleanup_only_touches_its_own(redis_client, prefix):
    other = new_prefix()
    assert other != prefix and prefix.startswith("fj") and len(prefix) == 12
    # `<prefix>x:...` shares the leading characters but is another prefix.
    mine = [f"{prefix}:q:1", f"{prefix}:q:wait", f"{prefix}:other:meta"]
    theirs = [f"{other}:q:1", f"{prefix}x:q:1", prefix]
    for key in mine + theirs:
        redis_client.set(key, "1")
    many = [f"{prefix}:bulk:{i}" for i in range(1200)]  # more than one SCAN page and batch
    redis_client.mset(dict.fromkeys(many, "1"))

    assert delete_prefixed_keys(redis_client, prefix) == len(mine) + len(many)
    assert redis_client.keys(f"{prefix}:*") == []
    assert sorted(redis_client.keys("*" + prefix[2:] + "*")) == sorted([f"{prefix}x:q:1", prefix])
    assert redis_client.exists(*theirs) == len(theirs)
    redis_client.delete(*theirs)


def test_prefix_fixture_deletes_the_tests_keys_afterwards(tmp_path):
    """Run a small suite on the real fixtures in a child pytest, and look at what it left."""
    report = tmp_path / "report.json"
    (tmp_path / "test_child.py").write_text(
        textwrap.dedent(
            f"""
            import json
            from pathlib import Path

            REPORT = Path({str(report)!r})

            def test_writes(redis_client, prefix, redis_url):
                redis_client.set(prefix + ":q:1", "x")
                redis_client.hset(prefix + ":q:meta", "k", "v")
                REPORT.write_text(json.dumps({{"first": prefix, "url": redis_url}}))

            def test_sees_nothing_of_the_first(redis_client, prefix):
                seen = json.loads(REPORT.read_text())
                assert seen["first"] != prefix
                assert redis_client.keys(seen["first"] + ":*") == []
                assert redis_client.dbsize() == 0
                seen["second"] = prefix
                REPORT.write_text(json.dumps(seen))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:django"]
        + ["-p", "no:cacheprovider", "-p", "no:xdist", "-q", "test_child.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    seen = json.loads(report.read_text())
    assert seen["first"] != seen["second"]


def test_stop_then_start_keeps_port_and_directory(own_server):
    port, directory, first_pid = own_server.port, own_server.dir, own_server.pid
    with own_server.client() as client:
        client.set("k", "v")
    own_server.stop()
    assert own_server.pid is None and not own_server.running
    assert process_gone(first_pid)
    assert refuses_connections(own_server)
    own_server.stop()  # stopping a stopped server is a no-op

    own_server.start()
    assert (own_server.port, own_server.dir) == (port, directory)
    assert own_server.pid not in (None, first_pid)
    with own_server.client() as client:
        assert client.ping() is True
        assert client.get("k") is None  # persistence is off by default
    with pytest.raises(RedisServerError, match="already running"):
        own_server.start()


def test_appendonly_server_keeps_data_across_stop_and_start():
    with RedisServer(["--appendonly", "yes", "--appendfsync", "always"]) as server:
        assert server.persistent
        with server.client() as client:
            client.set("k", "kept")
        server.stop()
        assert (server.dir / "appendonlydir").is_dir()
        server.start()
        with server.client() as client:
            assert client.get("k") == b"kept"


def test_kill_then_start(own_server):
    pid = own_server.pid
    own_server.kill()
    assert own_server.pid is None
    assert process_gone(pid)
    assert refuses_connections(own_server)
    own_server.start()
    with own_server.client() as client:
        assert client.ping() is True
    assert own_server.pid != pid


def test_pause_and_unpause(own_server):
    with own_server.client(socket_timeout=0.3, retry=Retry(NoBackoff(), 0)) as client:
        client.set("k", "v")
        own_server.pause()
        assert own_server.paused and own_server.running
        wait_for(lambda: process_state(own_server.pid) == "T", message="SIGSTOP not delivered")
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.get("k")
        assert time.monotonic() - started < 5
        own_server.unpause()
        assert not own_server.paused
    with own_server.client(socket_timeout=5) as client:
        assert client.get("k") == b"v"


def test_stop_while_paused_still_stops(own_server):
    own_server.pause()
    own_server.stop()
    assert not own_server.running and not own_server.paused


def test_shared_server_comes_back_for_the_next_test(redis_server, redis_url):
    """redis_url repairs a session server that an earlier test left stopped or paused."""
    port = redis_server.port
    redis_server.stop()
    redis_server.ensure_running()
    assert redis_server.port == port
    redis_server.pause()
    redis_server.ensure_running()
    with redis_server.client(socket_timeout=5) as client:
        assert client.ping() is True


def test_password_is_required_and_in_the_url():
    with RedisServer(password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with server.client() as client:
            assert client.ping() is True
        with (
            redis.Redis(
                host=server.host, port=server.port, retry=Retry(NoBackoff(), 0)
            ) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()


def test_tls_server_serves_only_tls():
    with RedisServer(tls=True) as server:
        assert server.url.startswith(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs=")
        with server.client() as client:
            assert client.ping() is True
            assert client.config_get("port") == {"port": "0"}
        plain = redis.Redis(
            host=server.host, port=server.port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        with plain, pytest.raises(redis.ConnectionError):
            plain.ping()


def test_missing_binary_is_an_error_not_a_skip():
    with pytest.raises(RedisServerError, match="not found.*apt-get install -y redis-server"):
        RedisServer(binary="/nonexistent/redis-server")


def test_bad_arguments_fail_with_the_servers_log():
    with pytest.raises(RedisServerError, match=r"exited with code \d+(.|\n)*no-such-directive"):
        RedisServer(["--no-such-directive", "1"])


def test_taken_port_is_reported():
    with RedisServer() as first, pytest.raises(RedisServerError, match="exited|did not answer"):
        RedisServer(port=first.port)


def _run_child(code: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _child_pid(child: subprocess.Popen[str]) -> int:
    line = child.stdout.readline()
    if not line.strip():
        child.kill()
        raise AssertionError(f"child printed no pid: {child.communicate(timeout=30)[1]}")
    return int(line)


def test_servers_die_with_a_crashing_process(tmp_path):
    child = _run_child(
        """
        from tests.redis_server import RedisServer
        server = RedisServer()
        print(server.pid, flush=True)
        raise SystemExit("a test run that crashes")
        """,
        tmp_path,
    )
    pid = _child_pid(child)
    child.wait(30)
    wait_for(lambda: process_gone(pid), message=f"redis-server {pid} outlived its parent")


def test_servers_die_with_a_sigkilled_process(tmp_path):
    child = _run_child(
        """
        import threading
        from tests.redis_server import RedisServer
        server = RedisServer()
        print(server.pid, flush=True)
        print(server.dir, flush=True)
        threading.Event().wait()
        """,
        tmp_path,
    )
    pid = _child_pid(child)
    assert not process_gone(pid)
    server_dir = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    wait_for(lambda: process_gone(pid), message=f"redis-server {pid} outlived a SIGKILL")
    # Nothing ran in the child to remove its directory (that is the point of SIGKILL).
    assert server_dir.name.startswith("flowjobs-redis-")
    shutil.rmtree(server_dir, ignore_errors=True)


def test_wait_for_returns_the_value_or_fails_with_the_message():
    calls = []

    def third_time() -> str | None:
        calls.append(1)
        return "done" if len(calls) >= 3 else None

    assert wait_for(third_time, timeout=5) == "done"
    started = time.monotonic()
    with pytest.raises(AssertionError, match="never happens"):
        wait_for(lambda: 0, timeout=0.1, message="never happens")
    assert 0.1 <= time.monotonic() - started < 2


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
