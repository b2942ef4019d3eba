"""Airflow's UI and the operator view in a real browser: Debian's chromium, headless, driven by Playwright.

A person's path: log in on Airflow's login page, open Browse -> Volume
migrations during a throttled copy, see the bar move, pause (the array says
``paused`` and the rate drops to 0), resume, change the speed (the rate
measured on the array follows); and the Connections form shows the
provider's fields for both connection types. Each screenshot is saved under
the test's temporary folder (the path is printed) and checked: its size is
the viewport's and every element the step is about lies inside it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from include.backends.base import GiB, MigrationState, Volume
from include.migration.steps import MIGRATION_DAG
from lab.procutil import wait_until
from plugins.operator_view import OperatorViewPlugin
from plugins.provider_info import CINDER_HOOK_NAME, get_provider_info
from tests.integration.migration_runs import RUN_TIMEOUT, assert_migrated
from tests.integration.test_operator_view import measured_rate, start_copy

pytestmark = pytest.mark.integration

VIEWPORT = {"width": 1600, "height": 1000}
VIEW_ROUTE = "/plugin/" + OperatorViewPlugin.external_views[0]["url_route"]


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: scripts/bootstrap.sh installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def shot(page, folder, name, *locators):
    """Save a screenshot; check that it has the viewport's size and each locator is visible inside it."""
    for locator in locators:
        expect(locator).to_be_visible()
    path = folder / f"{name}.png"
    page.screenshot(path=path)
    width, height = png_size(path)
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"]), (width, height)
    for locator in locators:
        box = locator.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, f"{locator} has no box in {path}"
        inside = box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] >= 0 and box["y"] < height
        assert inside, f"{locator} at {box} is outside the screenshot {path}"
    print(f"screenshot {path}")
    return path


def log_in(page, airflow, next_path):
    """Through Airflow's own login page, as a person does; ends on ``next_path``."""
    page.goto(f"{airflow.url}{next_path}")
    page.wait_for_url(re.compile(r".*/login.*"))
    page.fill('input[name="username"]', "admin")
    page.fill('input[name="password"]', airflow.config["admin_password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(next_path)))


def test_operator_view_in_the_browser_during_a_throttled_copy(lab, admin, services, api, airflow, volume, page,
                                                              tmp_path):  # fmt: skip
    copying = start_copy(lab, api, volume, speed_mib=8)
    vid, lun, dest, model, run_id = copying.volume["id"], copying.lun, copying.dest, copying.model, copying.run_id
    alpha, copied = lab.backend("alpha"), Volume(lun, GiB)

    log_in(page, airflow, VIEW_ROUTE)  # the view inside Airflow's UI (Browse -> Volume migrations)
    frame = page.frame_locator("iframe")
    row = frame.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_have_attribute("data-copy-state", "copying")
    bar = row.locator("td[data-field=progress] .bar > div")

    def width():
        return float(bar.evaluate("e => parseFloat(e.style.width)"))

    before = width()
    assert wait_until(lambda: width() > before, 20, 0.5), f"the bar stayed at {before}%"  # it moves
    shot(page, tmp_path, "1-copying", row, row.locator("button[data-control=pause]"), bar)

    row.locator("button[data-control=pause]").click()
    assert wait_until(lambda: alpha.complete_migration_target(copied).state is MigrationState.PAUSED, 10, 0.2)
    rate, _ = measured_rate(alpha, copied, 3.0)
    assert rate == 0, rate
    expect(row).to_have_attribute("data-copy-state", "paused")
    rate_cell = row.locator("td[data-field=rate]")
    expect(rate_cell).to_have_attribute("data-rate", "0", timeout=30_000)  # the view's rate drops to 0
    paused = row.locator('td[data-field=trail] div[data-trail="pause"]')  # the trail: who, what, the result
    expect(paused).to_contain_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC admin: pause, done: paused$"))
    shot(page, tmp_path, "2-paused", row, row.locator("button[data-control=resume]"), rate_cell, paused)

    row.locator("button[data-control=resume]").click()
    assert wait_until(lambda: alpha.complete_migration_target(copied).state is MigrationState.COPYING, 10, 0.2)
    expect(row).to_have_attribute("data-copy-state", "copying")
    speed = row.locator("input[data-speed]")
    speed.fill("32")
    row.locator("button[data-control=speed]").click()
    expect(frame.locator("#status")).to_contain_text("speed sent")
    time.sleep(2)  # the array's throttle settles
    rate, _ = measured_rate(alpha, copied)
    assert 20 <= rate <= 40, rate  # 32 MiB/s asked, 4x the first
    expect(rate_cell).not_to_have_attribute("data-rate", "0")
    shot(page, tmp_path, "3-faster", row, rate_cell)

    # every control is in Airflow's own audit log, with who and the result, and in the row's trail
    logged = api.event_logs(MIGRATION_DAG, run_id, "volume_migration.operator_view.")
    assert [(e["event"].rsplit(".", 1)[1], e["owner"]) for e in logged] == [
        ("pause", "admin"), ("resume", "admin"), ("speed", "admin")], logged  # fmt: skip
    assert json.loads(logged[2]["extra"]) == {"what": "speed to 32 MiB/s", "result": "done: copying"}
    expect(row.locator("td[data-field=trail] div")).to_have_count(3)

    # the filters: by a part of the volume id, by pool, by state; and the links to the run and its step
    filters = frame.locator("#filters")
    filters.locator("input[name=volume]").fill(vid[:8])
    expect(frame.locator("#migrations tbody tr")).to_have_count(1)
    expect(row).to_be_visible()
    filters.locator("input[name=volume]").fill("")
    filters.locator("input[name=pool]").fill("@gamma#")  # neither its source (beta) nor its destination
    expect(row).to_have_count(0)
    filters.locator("input[name=pool]").fill("@beta#")
    filters.locator("select[name=state]").select_option("failed")
    expect(row).to_have_count(0)
    filters.locator("select[name=state]").select_option("running")
    expect(row).to_be_visible()
    run_link = row.locator("td a").first
    expect(run_link).to_have_attribute("href", re.compile(re.escape(f"/dags/{MIGRATION_DAG}/runs/")))
    shot(page, tmp_path, "4-filtered", filters, row, run_link)
    filters.locator("select[name=state]").select_option("")
    filters.locator("input[name=pool]").fill("")

    row.locator("input[data-speed]").fill("0")
    row.locator("button[data-control=speed]").click()
    assert api.wait_run(MIGRATION_DAG, run_id, RUN_TIMEOUT)["state"] == "success"
    expect(row).to_have_attribute("data-state", "success", timeout=30_000)
    expect(row.locator("button")).to_have_count(0)
    shot(page, tmp_path, "5-done", row)
    assert_migrated(lab, admin, services, vid, dest, model, "beta")


TYPES = {t["hook-name"]: t for t in get_provider_info()["connection-types"]}


@pytest.mark.parametrize("hook_name", [CINDER_HOOK_NAME], ids=["openstack_cinder"])
def test_the_connections_form_shows_the_providers_fields(airflow, page, tmp_path, hook_name):
    """Admin -> Connections -> Add: the type's standard fields relabelled with their placeholders, then its extra
    fields (folded at first), as plugins/provider_info.py declares them."""
    behaviour, fields = TYPES[hook_name]["ui-field-behaviour"], TYPES[hook_name]["conn-fields"]
    log_in(page, airflow, "/connections")
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("combobox").first.fill(hook_name)  # the type's select: type, then pick the one offered
    page.get_by_role("option", name=hook_name).click()
    name = hook_name.split()[0].lower()
    host = dialog.get_by_placeholder(behaviour["placeholders"]["host"])
    shot(page, tmp_path, f"{name}-host", host)
    sections = (("Standard Fields", list(behaviour["relabeling"].values())),
                ("Extra Fields", [f["label"] for f in fields.values()]))  # fmt: skip
    for section, labels in sections:
        if section == "Extra Fields":
            dialog.get_by_text(section, exact=True).click()  # one section open at a time
        for n, label in enumerate(labels):
            field = dialog.get_by_text(label, exact=True).first
            field.scroll_into_view_if_needed()
            shot(page, tmp_path, f"{name}-{section.split()[0].lower()}-{n}", field)
