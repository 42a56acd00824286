"""Who may see and do what: every view and every action, for every kind of user."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db

LOGIN = reverse("admin:login")


def _view_urls(jobs) -> list[str]:
    pk = jobs.failed.pk
    return [
        reverse("admin:flowjobs_jobrecord_changelist"),
        reverse("admin:flowjobs_jobrecord_dashboard"),
        reverse("admin:flowjobs_jobrecord_detail", args=[pk]),
        reverse("admin:flowjobs_jobrecord_tree", args=[pk]),
        reverse("admin:flowjobs_jobrecord_children", args=[jobs.root.pk]),
        reverse("admin:flowjobs_jobrecord_children", args=[jobs.root.pk]) + "?fragment=1",
        reverse("admin:flowjobs_jobrecord_change", args=[pk]),
    ]


def _action_urls(jobs) -> list[str]:
    prefix = jobs.queue.prefix
    return [
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.failed.pk, "retry"]),
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.waiting.pk, "remove"]),
        reverse("admin:flowjobs_jobrecord_job_action", args=[jobs.delayed.pk, "promote"]),
        reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "other", "pause"]),
        reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "other", "resume"]),
    ]


def _bulk_posts(jobs) -> list[dict]:
    return [
        {"action": action, "_selected_action": [pk], "post": "yes"}
        for action, pk in (
            ("retry_selected", jobs.failed.pk),
            ("remove_selected", jobs.waiting.pk),
            ("promote_selected", jobs.delayed.pk),
        )
    ]


def _redis_unchanged(jobs) -> None:
    other = jobs.queue.client
    prefix = jobs.queue.prefix
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "failed"
    assert other.exists(jobs.waiting.key)
    assert other.zscore(f"{prefix}:other:delayed", jobs.delayed.job_id) is not None
    assert not other.hexists(f"{prefix}:other:meta", "paused")


@pytest.mark.parametrize("who", ["anonymous", "non-staff"])
def test_anonymous_and_non_staff_are_sent_to_login_everywhere(who, jobs, login):
    client = Client() if who == "anonymous" else login(*_ALL, staff=False)
    for url in _view_urls(jobs) + _action_urls(jobs):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(LOGIN), url
    for url in _action_urls(jobs):
        response = client.post(url, {"confirm": "yes"})
        assert response.status_code == 302 and response["Location"].startswith(LOGIN), url
    changelist = reverse("admin:flowjobs_jobrecord_changelist")
    for data in _bulk_posts(jobs):
        response = client.post(changelist, data)
        assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    _redis_unchanged(jobs)


_ALL = ("view_jobrecord", "retry_job", "remove_job", "promote_job", "pause_queue")


def _assert_no_action_goes_through(client, jobs) -> None:
    """No confirmation page, no action (single or bulk), nothing changed in Redis."""
    for url in _action_urls(jobs):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"confirm": "yes"}).status_code == 403, url
    changelist = reverse("admin:flowjobs_jobrecord_changelist")
    for data in _bulk_posts(jobs):
        assert client.post(changelist, data).status_code == 403
    _redis_unchanged(jobs)


def test_staff_without_permission_is_refused_everywhere(jobs, login):
    client = login()
    for url in _view_urls(jobs):
        assert client.get(url).status_code == 403, url
    _assert_no_action_goes_through(client, jobs)


def test_action_permissions_do_not_grant_viewing(jobs, login):
    client = login("retry_job", "remove_job", "promote_job", "pause_queue")
    for url in _view_urls(jobs):
        assert client.get(url).status_code == 403, url


def test_view_permission_shows_pages_but_no_action(jobs, login):
    client = login("view_jobrecord")
    for url in _view_urls(jobs):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
    for url in _action_urls(jobs):
        assert client.get(url).status_code == 403, url
        assert client.post(url, {"confirm": "yes"}).status_code == 403, url
    changelist = reverse("admin:flowjobs_jobrecord_changelist")
    for data in _bulk_posts(jobs):
        client.post(changelist, data)  # not an available action: ignored
    _redis_unchanged(jobs)
    detail = client.get(reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk]))
    assert b"fj-action-retry" not in detail.content
    listing = client.get(changelist)
    assert b"retry_selected" not in listing.content


@pytest.mark.parametrize(
    "codename, index",
    [("retry_job", 0), ("remove_job", 1), ("promote_job", 2), ("pause_queue", 3)],
)
def test_each_action_needs_its_own_permission(codename, index, jobs, login):
    others = [name for name in ("retry_job", "remove_job", "promote_job", "pause_queue")]
    others.remove(codename)
    client = login("view_jobrecord", *others)
    url = _action_urls(jobs)[index]
    assert client.get(url).status_code == 403
    assert client.post(url, {"confirm": "yes"}).status_code == 403
    _redis_unchanged(jobs)


def test_actions_enforce_csrf(jobs, login):
    client = login(*_ALL, csrf=True)
    for url in _action_urls(jobs):
        assert client.post(url, {"confirm": "yes"}).status_code == 403, url
    changelist = reverse("admin:flowjobs_jobrecord_changelist")
    for data in _bulk_posts(jobs):
        assert client.post(changelist, data).status_code == 403
    _redis_unchanged(jobs)

    # With the token from the confirmation page, the same request goes through.
    url = _action_urls(jobs)[0]
    page = client.get(url)
    token = page.context["csrf_token"]
    response = client.post(url, {"confirm": "yes", "csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert jobs.queue.get_job_state(jobs.failed.job_id) == "waiting"


def test_change_view_redirects_to_the_detail(jobs, login):
    client = login("view_jobrecord")
    response = client.get(reverse("admin:flowjobs_jobrecord_change", args=[jobs.failed.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:flowjobs_jobrecord_detail", args=[jobs.failed.pk])
    assert client.get(reverse("admin:flowjobs_jobrecord_add")).status_code == 403
    assert (
        client.post(reverse("admin:flowjobs_jobrecord_delete", args=[jobs.failed.pk])).status_code
        == 403
    )


def test_an_action_permission_without_the_view_permission_grants_nothing(jobs, login):
    _assert_no_action_goes_through(
        login("retry_job", "remove_job", "promote_job", "pause_queue"), jobs
    )


def test_queue_actions_only_reach_queues_the_project_knows(jobs, login):
    client = login(*_ALL)
    redis = jobs.queue.client
    prefix = jobs.queue.prefix
    before = set(redis.scan_iter(match="*"))
    refused = [
        ("elsewhere", "other"),  # a prefix written into the URL
        (prefix, "no-such-queue"),  # under the right prefix, but no such queue
        (f"{prefix}:other", "x"),
    ]
    for url_prefix, queue in refused:
        for action in ("pause", "resume"):
            url = reverse("admin:flowjobs_jobrecord_queue_action", args=[url_prefix, queue, action])
            assert client.get(url).status_code == 404, url
            assert client.post(url, {"confirm": "yes"}).status_code == 404, url
    assert set(redis.scan_iter(match="*")) == before  # no stray meta keys
    _redis_unchanged(jobs)

    # A queue discovered under the configured prefix can be paused.
    url = reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "other", "pause"])
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert redis.hexists(f"{prefix}:other:meta", "paused")


def test_a_queue_registered_in_the_project_can_be_paused_before_it_has_keys(jobs, login, settings):
    settings.FLOWJOBS = {**settings.FLOWJOBS, "QUEUES": {"planned": {}}}
    client = login(*_ALL)
    prefix = jobs.queue.prefix
    url = reverse("admin:flowjobs_jobrecord_queue_action", args=[prefix, "planned", "pause"])
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert jobs.queue.client.hexists(f"{prefix}:planned:meta", "paused")


@pytest.mark.parametrize("page", ["99999999999999999999999", "1e400", "-5", "abc", "3"])
def test_a_bad_or_huge_children_page_is_never_a_server_error(page, jobs, login):
    client = login("view_jobrecord")
    url = reverse("admin:flowjobs_jobrecord_children", args=[jobs.root.pk])
    for query in (f"?page={page}", f"?page={page}&fragment=1"):
        response = client.get(url + query)
        assert response.status_code in (200, 404), query
        if response.status_code == 200:  # the last page (the root has one child)
            assert jobs.middle.job_id.encode() in response.content, query
