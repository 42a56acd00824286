"""The admin in a real browser: flow tree, failed job detail, retry, dashboard.

Screenshots go to pytest's tmp dir; with FLOWJOBS_SCREENSHOTS=1 they are written to
docs/img/ (flow-tree.png, job-detail.png, dashboard.png) for the documentation.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def fetch(job: Any) -> dict:
    job.log(f"GET {job.data['url']}")
    if job.data.get("flaky") and job.attempts_made == 0:
        raise RuntimeError(f"GET {job.data['url']} answered 503 Service Unavailable")
    job.update_progress(100)
    return {"url": job.data["url"], "bytes": 1000 + len(job.data["url"])}


def extract(job: Any) -> dict:
    pages = job.get_children_values()
    return {"pages": len(pages), "bytes": sum(value["bytes"] for value in pages.values())}


def report(job: Any) -> dict:
    return {"sections": len(job.get_children_values()), "status": "published"}


def _wait(browser: Any, timeout: float = 15) -> WebDriverWait:
    """Polls a condition. The live pages re-render their parts while it polls: an element
    found just before a re-render is stale when read, and the next poll finds the new one
    (a CI run failed on that once)."""
    return WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))


def _log_in(browser: Any, base: str, user: Any) -> None:
    browser.get(base + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(browser).until(expected_conditions.presence_of_element_located((By.ID, "user-tools")))
    # Close the admin's app sidebar: more room for the pages (and the screenshots).
    browser.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")


def test_flow_tree_failed_detail_retry_and_dashboard(
    live_server,
    browser,
    screenshots,
    django_user_model,
    flowjobs_settings,
    flow_producer,
    make_queue,
    make_worker,
):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    urls = [f"https://example.com/page/{n}" for n in range(4)]
    tree = flow_producer.add(
        Flow(
            "monthly-report",
            "reports",
            data={"month": "2026-10"},
            children=[
                Flow(
                    "extract",
                    "etl",
                    data={"source": "shop"},
                    children=[Flow("fetch", "fetchers", data={"url": u}) for u in urls[:2]],
                ),
                Flow(
                    "extract",
                    "etl",
                    data={"source": "blog"},
                    children=[
                        Flow("fetch", "fetchers", data={"url": urls[2]}),
                        Flow("fetch", "fetchers", data={"url": urls[3], "flaky": True}),
                    ],
                ),
            ],
        )
    )
    emails = make_queue("emails")
    emails.add_bulk([{"name": "welcome", "data": {"to": f"u{i}@example.com"}} for i in range(7)])
    emails.add("digest", {"week": 44}, delay=3_600_000)
    emails.pause()
    make_worker("fetchers", fetch, concurrency=2, name="fetch-1")
    make_worker("etl", extract, name="etl-1")
    make_worker("reports", report, name="reports-1")
    fetchers = make_queue("fetchers")
    flaky_id = tree.children[1].children[1].job.id
    wait_for(lambda: fetchers.get_job_state(flaky_id) == "failed", message="flaky fetch failed")
    wait_for(lambda: fetchers.get_job_counts("completed")["completed"] == 3)
    reconcile()

    base = live_server.url
    _log_in(browser, base, admin)

    # The tree: root open, each extract closed; opening one loads its fetches.
    root = JobRecord.objects.get(queue="reports", job_id=tree.job.id)
    browser.get(base + reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    blog = JobRecord.objects.get(queue="etl", job_id=tree.children[1].job.id)
    node = browser.find_element(By.CSS_SELECTOR, f'li[data-job="{blog.pk}"] > details')
    assert node.get_attribute("open") is None
    assert "1 failed" in node.find_element(By.TAG_NAME, "summary").text
    node.find_element(By.TAG_NAME, "summary").click()
    flaky = JobRecord.objects.get(queue="fetchers", job_id=flaky_id)
    failed_node = _wait(browser).until(
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, f'li[data-job="{flaky.pk}"]')
        )
    )
    assert "fj-node-failed" in failed_node.get_attribute("class")
    assert "503 Service Unavailable" in failed_node.text
    browser.save_screenshot(str(screenshots / "flow-tree.png"))

    # The failed job's detail, with its stack trace, then retry it.
    failed_node.find_element(By.CSS_SELECTOR, "a.fj-job").click()
    trace = _wait(browser).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, "pre.fj-stacktrace"))
    )
    assert "RuntimeError: GET https://example.com/page/3 answered 503" in trace.text
    assert "Traceback" in trace.text
    browser.save_screenshot(str(screenshots / "job-detail.png"))

    browser.find_element(By.CSS_SELECTOR, "a.fj-action-retry").click()
    _wait(browser).until(expected_conditions.title_contains("are you sure"))
    browser.find_element(By.NAME, "confirm").click()
    message = _wait(browser).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".messagelist"))
    )
    assert "queued again" in message.text

    reports = make_queue("reports")
    wait_for(
        lambda: reports.get_job_state(tree.job.id) == "completed",
        timeout=20,
        message="the whole flow completed after the retry",
    )

    def shows_completed() -> bool:
        browser.refresh()
        badge = browser.find_element(By.CSS_SELECTOR, ".fj-summary .fj-badge")
        return badge.text == "completed"

    wait_for(shows_completed, timeout=10, message="detail page shows the job completed")
    assert "fj-action-retry" not in browser.page_source

    # The dashboard: live counts per queue, the paused one, workers seen.
    reconcile()
    browser.get(base + reverse("admin:flowjobs_jobrecord_dashboard"))
    table = browser.find_element(By.CSS_SELECTOR, "table.fj-queues")
    text = table.text
    for name in ("emails", "etl", "fetchers", "reports"):
        assert name in text
    emails_row = table.find_element(By.XPATH, ".//tr[th/a[text()='emails']]")
    assert "paused" in emails_row.text and "Resume" in emails_row.text
    fetchers_row = table.find_element(By.XPATH, ".//tr[th/a[text()='fetchers']]")
    assert "fetch-1" in fetchers_row.text
    # docs/img/dashboard.png comes from test_admin_live_browser (with the charts)
