"""FLOWJOBS settings (dict, environment, defaults) and the system checks."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from flowjobs import conf
from flowjobs.checks import check_redis, check_settings
from tests.helpers import free_port


@pytest.fixture
def no_flowjobs_dict(settings, monkeypatch):
    """No FLOWJOBS dict at all: everything comes from the environment or defaults."""
    del settings.FLOWJOBS
    for name in conf.DEFAULTS:
        monkeypatch.delenv(f"FLOWJOBS_{name}", raising=False)
    conf.reset()
    return monkeypatch


def _ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_defaults(no_flowjobs_dict):
    current = conf.settings()
    assert current.REDIS_URL == "redis://127.0.0.1:6379/0"
    assert current.PREFIX == "bull"
    assert (current.CONCURRENCY, current.LOCK_DURATION, current.STALLED_INTERVAL) == (
        1,
        30_000,
        30_000,
    )
    assert current.MAX_STALLED_COUNT == 1
    assert current.ENQUEUE_ON_COMMIT is False and current.MIRROR is True
    assert current.DEFAULT_JOB_OPTIONS["remove_on_complete"] == {"age": 86400, "count": 1000}
    assert current.EVENTS_MAX_LENGTH == 100_000
    assert current.queue("q").events_max_length == 100_000
    assert current.FETCH_AHEAD is True and current.queue("q").fetch_ahead is True


def test_settings_from_the_environment(no_flowjobs_dict):
    env = no_flowjobs_dict
    env.setenv("FLOWJOBS_REDIS_URL", "rediss://user:pw@redis.example:6380/2")
    env.setenv("FLOWJOBS_PREFIX", "{jobs}")
    env.setenv("FLOWJOBS_CONCURRENCY", "8")
    env.setenv("FLOWJOBS_LOCK_DURATION", "60000")
    env.setenv("FLOWJOBS_ENQUEUE_ON_COMMIT", "true")
    env.setenv("FLOWJOBS_MIRROR", "off")
    env.setenv("FLOWJOBS_DEFAULT_JOB_OPTIONS", '{"attempts": 3}')
    env.setenv(
        "FLOWJOBS_QUEUES",
        '{"emails": {"CONCURRENCY": 20, "EVENTS_MAX_LENGTH": 500, "FETCH_AHEAD": true}}',
    )
    env.setenv("FLOWJOBS_EVENTS_MAX_LENGTH", "20000")
    env.setenv("FLOWJOBS_FETCH_AHEAD", "false")
    env.setenv("FLOWJOBS_SHUTDOWN_TIMEOUT", "25")
    current = conf.settings()
    assert current.REDIS_URL == "rediss://user:pw@redis.example:6380/2"
    assert current.redis_url_masked == "rediss://user:***@redis.example:6380/2"
    assert current.PREFIX == "{jobs}"
    assert current.CONCURRENCY == 8 and current.LOCK_DURATION == 60_000
    assert current.ENQUEUE_ON_COMMIT is True and current.MIRROR is False
    assert current.DEFAULT_JOB_OPTIONS == {"attempts": 3}
    assert current.SHUTDOWN_TIMEOUT == 25.0
    emails = current.queue("emails")
    assert emails.concurrency == 20 and emails.lock_duration == 60_000
    assert current.queue("other").concurrency == 8
    assert emails.events_max_length == 500
    assert current.queue("other").events_max_length == 20_000
    assert emails.fetch_ahead is True and current.queue("other").fetch_ahead is False
    # The URL (password included) is handed to the engine as it is.
    queue = conf.get_queue("emails")
    assert queue.connection == "rediss://user:pw@redis.example:6380/2"
    assert queue.prefix == "{jobs}"


def test_the_dict_wins_over_the_environment(settings, monkeypatch):
    monkeypatch.setenv("FLOWJOBS_CONCURRENCY", "8")
    settings.FLOWJOBS = {**settings.FLOWJOBS, "CONCURRENCY": 3}
    assert conf.settings().CONCURRENCY == 3


def test_override_settings_is_picked_up(settings, prefix):
    assert prefix == conf.settings().PREFIX
    first = conf.get_queue("q")
    settings.FLOWJOBS = {**settings.FLOWJOBS, "PREFIX": "other"}
    assert conf.settings().PREFIX == "other"
    assert conf.get_queue("q") is not first and conf.get_queue("q").prefix == "other"
    assert conf.get_queue("q") is conf.get_queue("q")


def test_bad_environment_value_is_reported(no_flowjobs_dict):
    no_flowjobs_dict.setenv("FLOWJOBS_CONCURRENCY", "lots")
    assert _ids(check_settings()) == ["flowjobs.E004"]
    with pytest.raises(ImproperlyConfigured, match="FLOWJOBS_CONCURRENCY='lots' is not an integer"):
        conf.settings()


@pytest.mark.parametrize(
    ("overrides", "check_id", "text"),
    [
        ({"REDIS_URL": "http://localhost:6379"}, "flowjobs.E002", "has scheme 'http'"),
        ({"REDIS_URL": "redis://:pw@/0"}, "flowjobs.E002", "names no host"),
        ({"REDIS_URL": "redis://h:notaport/0"}, "flowjobs.E002", "not a valid URL"),
        ({"PREFIX": "my:app"}, "flowjobs.E003", "contains ':'"),
        ({"PREFIX": ""}, "flowjobs.E003", "non-empty"),
        ({"CONCURRENCY": 0}, "flowjobs.E004", "positive integer"),
        ({"LOCK_DURATION": -5}, "flowjobs.E005", "positive number of milliseconds"),
        ({"STALLED_INTERVAL": "30s"}, "flowjobs.E005", "milliseconds"),
        ({"MAX_STALLED_COUNT": -1}, "flowjobs.E005", ">= 0"),
        ({"DEFAULT_JOB_OPTIONS": {"retries": 3}}, "flowjobs.E006", "unknown option"),
        ({"DEFAULT_JOB_OPTIONS": {"priority": -1}}, "flowjobs.E006", "priority"),
        ({"ENQUEUE_ON_COMMIT": "yes"}, "flowjobs.E007", "True or False"),
        ({"QUEUES": {"q": {"CONCURENCY": 2}}}, "flowjobs.E008", "unknown key(s) CONCURENCY"),
        ({"QUEUES": {"q": {"CONCURRENCY": -2}}}, "flowjobs.E004", "positive integer"),
        ({"QUEUES": {"q": {"LIMITER": {"max": 1}}}}, "flowjobs.E008", "LIMITER"),
        ({"EVENTS_MAX_LENGTH": 0}, "flowjobs.E004", "positive integer"),
        ({"QUEUES": {"q": {"FETCH_AHEAD": "no"}}}, "flowjobs.E007", "True or False"),
        ({"QUEUES": {"q": {"EVENTS_MAX_LENGTH": "many"}}}, "flowjobs.E004", "positive integer"),
        ({"WORKERS": 3}, "flowjobs.E001", "unknown FLOWJOBS setting(s): WORKERS"),
    ],
)
def test_bad_settings_are_errors(settings, overrides, check_id, text):
    settings.FLOWJOBS = {**settings.FLOWJOBS, **overrides}
    messages = check_settings()
    assert _ids(messages) == [check_id], messages
    assert text in messages[0].msg
    with pytest.raises(ImproperlyConfigured):
        conf.settings()


def test_passwords_are_masked_in_messages(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": "http://user:hunter2@host/0"}
    (message,) = check_settings()
    assert "hunter2" not in message.msg and "user:***@host" in message.msg


def test_mirror_keys_are_not_unknown(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "MIRROR_BATCH_SIZE": 10}
    assert check_settings() == []


@pytest.mark.django_db
def test_check_command_reports_a_bad_redis_url(settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": "mysql://localhost/0"}
    with pytest.raises(SystemCheckError, match=r"flowjobs.E002.*scheme 'mysql'"):
        call_command("check")


@pytest.mark.django_db
def test_unreachable_redis_is_a_warning_with_the_password_masked(settings, capsys):
    url = f"redis://:topsecret@127.0.0.1:{free_port()}/0"
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": url}
    (warning,) = check_redis()
    assert warning.id == "flowjobs.W001"
    assert "redis://:***@127.0.0.1:" in warning.msg and "topsecret" not in warning.msg
    call_command("check")  # a warning does not stop the command
    assert "flowjobs.W001" in capsys.readouterr().err


def test_reachable_redis_passes_and_the_check_can_be_turned_off(settings):
    assert check_redis() == []
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    settings.FLOWJOBS = {**settings.FLOWJOBS, "CHECK_REDIS": False}
    assert check_redis() == []


def test_eviction_policy_is_a_warning(redis_server):
    client = redis_server.client()
    client.config_set("maxmemory-policy", "volatile-lru")
    try:
        assert _ids(check_redis()) == ["flowjobs.W002"]
    finally:
        client.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize(
    ("name", "value"), [("MIRROR_BATCH_SIZE", 0), ("MIRROR_IDLE_PRIORITY", "sometimes")]
)
def test_bad_mirror_settings_are_errors(settings, name, value):
    settings.FLOWJOBS = {**settings.FLOWJOBS, name: value}
    messages = check_settings()
    assert _ids(messages) == ["flowjobs.E020"]
    assert name in messages[0].msg


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
        "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        "rediss://user:pw@example.com:6380/1",
    ],
)
def test_sentinel_cluster_and_tls_urls_are_valid_settings(settings, url):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "REDIS_URL": url, "CHECK_REDIS": False}
    assert check_settings() == []


def test_multi_host_and_query_passwords_are_masked():
    assert conf.mask_url("redis+sentinel://u:pw@h1:26379,h2:26379/mymaster/0") == (
        "redis+sentinel://u:***@h1:26379,h2:26379/mymaster/0"
    )
    assert "secret" not in conf.mask_url("redis://h:6379/0?password=secret")
