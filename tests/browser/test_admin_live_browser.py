"""Issue 18 in a real browser: live updates on the tree, job page and dashboard, the
flow timeline, the charts, the scheduler page, and the changelist at 1280 px."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By

from flowjobs.engine import Flow
from flowjobs.mirror import reconcile
from flowjobs.models import JobRecord
from tests.browser.test_admin_browser import _log_in, _wait
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _overflow(browser: Any) -> dict:
    return browser.execute_script(
        """
        const table = document.getElementById('result_list');
        return {
          page: document.documentElement.scrollWidth, window: window.innerWidth,
          table: table.getBoundingClientRect().right,
          container: document.getElementById('changelist').getBoundingClientRect().right,
          columns: [...table.querySelectorAll('thead th')].map(
            th => [th.textContent.trim(), Math.round(th.getBoundingClientRect().width)]),
        };
        """
    )


def test_changelist_fits_1280_px(
    live_server, browser, django_user_model, flow_producer, flowjobs_settings, make_queue
):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    flow_producer.add(
        Flow(
            "monthly-report-for-the-accounting-department",
            "reports-and-exports",
            job_id="monthly-report-2026-10-" + "x" * 40,
            children=[Flow("extract", "etl", data={"n": n}) for n in range(3)],
        )
    )
    make_queue("emails").add("welcome", {}, attempts=5).update_progress(40)
    reconcile()
    browser.set_window_size(1280, 860)
    _log_in(browser, live_server.url, admin)
    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_changelist"))
    sizes = _overflow(browser)
    print(sizes)
    assert sizes["page"] <= sizes["window"], sizes
    assert sizes["table"] <= sizes["container"] + 1, sizes
    # with the admin's navigation sidebar open too (its default)
    browser.execute_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'true')")
    browser.refresh()
    sizes = _overflow(browser)
    print(sizes)
    assert sizes["page"] <= sizes["window"], sizes
    assert sizes["table"] <= sizes["container"] + 1, sizes


def _node_class(browser: Any, record: JobRecord) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'li[data-job="{record.pk}"]').get_attribute(
        "class"
    )


def test_tree_timeline_and_job_page_update_live(
    live_server,
    browser,
    screenshots,
    django_user_model,
    flow_producer,
    flowjobs_settings,
    make_queue,
    make_worker,
):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    tree = flow_producer.add(
        Flow(
            "order",
            "orders",
            data={"order": 1042},
            children=[
                Flow("validate", "steps", data={"step": "validate"}),
                Flow("charge", "steps", data={"step": "charge"}),
                Flow("reserve", "steps", data={"step": "reserve"}),
            ],
        )
    )
    reconcile()
    root = JobRecord.objects.get(queue="orders")
    charge = JobRecord.objects.get(queue="steps", name="charge")
    validate = JobRecord.objects.get(queue="steps", name="validate")
    charging, halfway, finish = threading.Event(), threading.Event(), threading.Event()

    def step(job: Any) -> Any:
        if job.data["step"] == "charge":
            job.update_progress(30)
            charging.set()
            halfway.wait(20)
            job.update_progress(80)
            finish.wait(20)
        return {"step": job.data["step"], "ok": True}

    _log_in(browser, live_server.url, admin)
    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    assert "fj-node-waiting" in _node_class(browser, validate)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".fj-timeline .fj-tl-row[data-job]")) == 4

    steps = make_queue("steps")
    make_worker("steps", step, concurrency=3)
    assert charging.wait(20)
    wait_for(lambda: steps.get_job_state(validate.job_id) == "completed")
    reconcile()
    # no reload: the page polls and the nodes change state in place
    _wait(browser).until(lambda b: "fj-node-completed" in _node_class(b, validate))
    _wait(browser).until(lambda b: "fj-node-active" in _node_class(b, charge))
    assert "attempt 1" in browser.find_element(By.ID, f"fj-line-{charge.pk}").text
    assert "live" in browser.find_element(By.CSS_SELECTOR, ".fj-live-status").text

    # the running job's page follows its progress
    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_detail", args=[charge.pk]))
    assert "30%" in browser.find_element(By.CSS_SELECTOR, ".fj-fields").text
    halfway.set()
    _wait(browser).until(lambda b: "80%" in b.find_element(By.CSS_SELECTOR, ".fj-fields").text)
    finish.set()
    make_worker("orders", lambda job: {"shipped": True})
    orders = make_queue("orders")
    wait_for(lambda: orders.get_job_state(tree.job.id) == "completed", message="order shipped")
    reconcile()
    _wait(browser).until(
        lambda b: b.find_element(By.CSS_SELECTOR, ".fj-summary .fj-badge").text == "completed"
    )

    # the tree again: every bar finished, the critical path marked
    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_tree", args=[root.pk]))
    bars = browser.find_elements(By.CSS_SELECTOR, ".fj-timeline .fj-tl-run.fj-tl-completed")
    assert len(bars) == 4 and all(bar.size["width"] >= 1 for bar in bars)
    critical = browser.find_elements(By.CSS_SELECTOR, ".fj-tl-row.fj-tl-critical")
    assert {row.get_attribute("data-job") for row in critical} >= {str(root.pk), str(charge.pk)}
    browser.find_element(By.CSS_SELECTOR, f"#fj-line-{charge.pk} a.fj-value-toggle").click()
    value = browser.find_element(By.CSS_SELECTOR, f"#fj-line-{charge.pk} code.fj-value")
    assert value.is_displayed() and '"step": "charge"' in value.text
    other = browser.find_element(By.CSS_SELECTOR, f"#fj-line-{validate.pk} code.fj-value")
    assert not other.is_displayed()  # values open on demand only
    # wide enough for the timeline to sit beside the tree
    browser.set_window_size(1600, 760)
    browser.refresh()
    _wait(browser).until(lambda b: b.find_element(By.ID, "fj-timeline").is_displayed())
    _wait(browser).until(
        lambda b: (
            b.find_element(By.CSS_SELECTOR, ".fj-live-status").get_attribute("data-state") == "ok"
        )
    )
    browser.save_screenshot(str(screenshots / "flow-timeline.png"))

    # dark mode: the admin's theme switch; the flowjobs parts follow its palette
    browser.execute_script("localStorage.setItem('theme', 'dark')")
    browser.refresh()
    track = browser.find_element(By.CSS_SELECTOR, ".fj-tl-wait")
    body = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert body != "rgb(255, 255, 255)"
    assert track.value_of_css_property("background-color") == "rgba(85, 85, 85, 1)"


def test_dashboard_charts_update_live_and_schedulers_page_pauses(
    live_server,
    browser,
    screenshots,
    django_user_model,
    flowjobs_settings,
    make_queue,
    make_worker,
):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw")
    mail = make_queue("mail")
    mail.add_bulk([{"name": "send", "data": {"n": n, "fail": n == 3}} for n in range(12)])

    def send(job: Any) -> Any:
        if job.data["fail"]:
            raise RuntimeError("mailbox full")
        return "sent"

    make_worker("mail", send, metrics_max_data_points=60, concurrency=4)
    wait_for(lambda: mail.get_job_counts("completed", "failed") == {"completed": 11, "failed": 1})
    mail.upsert_job_scheduler(
        "weekly-digest", pattern="0 8 * * 1", tz="Europe/Paris", template={"name": "digest"}
    )
    reconcile()
    _log_in(browser, live_server.url, admin)
    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_dashboard"))
    chart = browser.find_element(By.CSS_SELECTOR, 'figure.fj-chart[data-queue="mail"]')
    assert "11 completed" in chart.text and "1 failed" in chart.text
    assert chart.find_elements(By.CSS_SELECTOR, "rect.fj-bar-completed")
    assert chart.find_elements(By.CSS_SELECTOR, "rect.fj-bar-failed")

    mail.add_bulk([{"name": "later", "data": {}, "opts": {"delay": 3_600_000}} for _ in range(3)])

    def delayed_cell(b: Any) -> str:
        row = b.find_element(By.XPATH, "//table[@class='fj-queues']//tr[th/a[text()='mail']]")
        return row.find_elements(By.CSS_SELECTOR, "td.fj-count")[2].text

    # new delayed jobs show up in the counts without a reload (1 is the digest's next run)
    _wait(browser).until(lambda b: delayed_cell(b) == "4")
    # the mirror lag, recorded as the page updates, drawn next to its value
    spark = _wait(browser).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, 'td.fj-lag[data-queue="mail"] svg polyline')
    )
    assert len(spark[0].get_attribute("points").split()) >= 2
    browser.save_screenshot(str(screenshots / "dashboard.png"))

    browser.get(live_server.url + reverse("admin:flowjobs_jobrecord_schedulers"))
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-scheduler="mail/weekly-digest"]')
    assert "cron 0 8 * * 1 (Europe/Paris)" in row.text and "code" in row.text
    row.find_element(By.CSS_SELECTOR, "a.fj-scheduler-pause").click()
    _wait(browser).until(lambda b: "are you sure" in b.title)
    browser.find_element(By.NAME, "confirm").click()
    message = _wait(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, ".messagelist"))
    assert "paused" in message.text
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-scheduler="mail/weekly-digest"]')
    assert "paused" in row.text and row.find_elements(By.CSS_SELECTOR, "a.fj-scheduler-resume")
    assert mail.get_job_scheduler("weekly-digest").paused is True
    browser.save_screenshot(str(screenshots / "schedulers.png"))
