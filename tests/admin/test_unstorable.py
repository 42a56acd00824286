"""Jobs the mirror cannot store are listed in the admin (issue 14, finding 4)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from flowjobs.mirror import reconcile

pytestmark = pytest.mark.django_db


def test_unstorable_jobs_are_listed_for_users_who_may_see_them(
    flowjobs_settings, rclient, prefix, login
):
    rclient.hset(f"{prefix}:q:bad\x00id", mapping={"name": "n", "data": "{}", "opts": "{}"})
    rclient.lpush(f"{prefix}:q:wait", "bad\x00id")
    rclient.hset(f"{prefix}:q:meta", "opts.maxLenEvents", "10000")
    reconcile(rclient, prefix)
    url = reverse("admin:flowjobs_unstorablejob_changelist")

    assert login().get(url).status_code == 403  # staff without the view permission
    page = login("view_unstorablejob").get(url)
    assert page.status_code == 200
    assert b"bad\\x00id" in page.content
    assert b"NUL" in page.content
    assert b"addlink" not in page.content  # read-only
