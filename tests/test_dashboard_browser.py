"""The dashboard in a real browser (Debian's headless Chromium, driven by Playwright): start a
run from the form and watch it appear and finish without a reload, travel back in its
history, read a failed attempt's error, cancel a sleeping run, signal a waiting one, see the
live workers and the runs none of them serves, see a run's key, priority and schedule and the
limit that holds it back, and see that user data is shown as text and never runs.

Chromium comes from the system (``apt-get install chromium``), never from a download. Without
it these tests are skipped loudly on a developer's machine and fail under CI (``CI`` set)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import ow_es
from ow_es import Context, RetryPolicy
from ow_es.schedule import tick_key
from tests.test_dashboard_api import running_worker, serve_dashboard

CHROMIUM = os.environ.get("OW_ES_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"
XSS_INPUT = {"name": "<script>alert(1)</script>", "avatar": "<img src=x onerror=alert(1)>"}


def _browser_missing(why: str) -> None:
    message = (
        f"dashboard browser tests need Chromium and Playwright: {why} "
        "(apt-get install chromium chromium-driver; pip install -e '.[dev]')"
    )
    if os.environ.get("CI"):
        pytest.fail("CI: " + message)
    pytest.skip("BROWSER TESTS SKIPPED: " + message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _browser_missing("the playwright package is not installed")
    if not os.path.exists(CHROMIUM):
        _browser_missing(f"no Chromium at {CHROMIUM}")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page whose dialogs and script errors are recorded (confirm() is accepted)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[tuple[str, str]] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append((dialog.type, dialog.message))
        await dialog.accept()

    @property
    def alerts(self) -> list[tuple[str, str]]:
        return [d for d in self.dialogs if d[0] != "confirm"]


async def new_page(browser: Any, **options: Any) -> Watched:
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, **options)
    context.set_default_timeout(15_000)
    return Watched(await context.new_page())


@pytest.fixture
async def ow(pg_db: dict[str, Any]) -> AsyncIterator[ow_es.OpenWorkflow]:
    client = ow_es.OpenWorkflow(pg_db["url"], schema=pg_db["schema"])
    yield client
    await client.close()


def define(ow: ow_es.OpenWorkflow) -> None:
    @ow.workflow(name="greet")
    async def greet(ctx: Context, inp: dict[str, Any]) -> dict[str, Any]:
        hello = await ctx.step.run("hello", lambda: f"hello {inp.get('name')}")
        await ctx.step.sleep("pause", "1s")
        return {"greeting": hello}

    charges: dict[str, int] = {}

    @ow.workflow(name="flaky-charge")
    async def flaky(ctx: Context, inp: dict[str, Any]) -> str:
        def charge() -> str:  # the first attempt fails, the second succeeds
            charges[ctx.run.id] = charges.get(ctx.run.id, 0) + 1
            if charges[ctx.run.id] == 1:
                raise ValueError("card declined <b>once</b>")
            return "receipt-1"

        retry = RetryPolicy(initial_interval="100ms", maximum_attempts=3)
        return await ctx.step.run("charge", charge, retry=retry)

    @ow.workflow(name="nap")
    async def nap(ctx: Context, inp: None) -> None:
        await ctx.step.sleep("long-nap", "1h")

    @ow.workflow(name="approval")
    async def approval(ctx: Context, inp: None) -> Any:
        return await ctx.step.wait_for_signal("approved")


async def test_start_a_run_and_watch_it_live_then_travel_back(
    browser: Any, ow: ow_es.OpenWorkflow
) -> None:
    define(ow)
    await ow.connect()
    async with running_worker(ow), serve_dashboard(ow) as url:
        await (await ow.start("greet", {"name": "seed"})).result(timeout=20)
        await ow.start("nap", None)
        await ow.start("approval", None)
        await ow.start("not-served-here", {"n": 1}, idempotency_key="order-17")
        overview = await new_page(browser)
        await overview.page.goto(f"{url}/#/")
        await overview.page.locator("#count-completed .card-value").filter(has_text="1").wait_for()
        assert await overview.page.locator("#workflow-counts").get_by_text("greet").is_visible()
        assert await overview.page.locator("svg.chart polyline").count() == 3

        runs = await new_page(browser)
        await runs.page.goto(f"{url}/#/runs")
        await runs.page.locator("#live.on").wait_for()
        await runs.page.locator("#runs-table tbody tr").nth(3).wait_for()
        assert await runs.page.locator("#runs-table tbody tr").count() == 4

        form = await new_page(browser)
        await form.page.goto(f"{url}/#/start")
        await form.page.fill("#start-workflow", "greet")
        await form.page.fill("#start-input", '{"name": "not json')
        await form.page.click("#start-submit")
        await form.page.locator("#start-error").filter(has_text="not valid JSON").wait_for()
        await form.page.fill("#start-input", '{"name": "ada"}')
        await form.page.click("#start-submit")
        await form.page.wait_for_url("**/#/run/*")
        run_id = form.page.url.rsplit("/", 1)[1]

        # The list (never reloaded) shows the new run, then sees it complete.
        row = runs.page.locator(f'#runs-table tr[data-run-id="{run_id}"]')
        await row.wait_for()
        await row.locator(".badge", has_text="completed").wait_for(timeout=20_000)
        # The run page (opened while it ran) follows it to the end too.
        header = form.page.locator(".run-header .badge")
        await header.filter(has_text="completed").wait_for(timeout=20_000)
        assert "hello ada" in await form.page.locator("#run-output").inner_text()
        await overview.page.locator("#count-completed .card-value").filter(has_text="2").wait_for()

        # Time travel: the run as of its first event was pending, with no steps.
        await form.page.locator("#seq-slider").fill("1")
        await form.page.locator("#as-of-banner").wait_for()
        state = form.page.locator("#run-state")
        await state.locator("dd .badge", has_text="pending").wait_for()
        assert "No step attempts yet" in await state.inner_text()
        await form.page.click("#back-to-live")
        await state.locator("dd .badge", has_text="completed").wait_for()
        assert await form.page.locator("#as-of-banner").count() == 0
        await form.page.screenshot(path=str(DOCS / "dashboard-run.png"), full_page=True)
        await overview.page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        for watched in (overview, runs, form):
            assert watched.errors == [] and watched.dialogs == []


async def test_failed_attempts_cancel_and_signal(browser: Any, ow: ow_es.OpenWorkflow) -> None:
    define(ow)
    await ow.connect()
    async with running_worker(ow), serve_dashboard(ow) as url:
        flaky = await ow.start("flaky-charge", {})
        assert await flaky.result(timeout=20) == "receipt-1"
        watched = await new_page(browser)
        page = watched.page
        await page.goto(f"{url}/#/run/{flaky.run_id}")
        failures = page.locator("#failed-attempts")
        await failures.wait_for()
        text = await failures.inner_text()
        assert "ValueError" in text and "card declined <b>once</b>" in text
        assert await failures.locator("b").count() == 0  # markup in an error stays text
        await failures.locator("summary", has_text="traceback").first.click()
        assert "Traceback" in await failures.locator("pre.traceback").first.inner_text()
        assert await page.locator("svg.timeline rect.bar.failed").count() == 1

        # Cancel a sleeping run.
        napping = await ow.start("nap", None)
        await page.goto(f"{url}/#/run/{napping.run_id}")
        await page.locator("#why-waits", has_text="sleeping until").wait_for()
        await page.click("#action-cancel")
        await page.locator(".run-header .badge", has_text="canceled").wait_for()
        assert watched.dialogs == [
            ("confirm", f"Cancel run {napping.run_id} (nap) and its children?")
        ]
        assert (await napping.status()).status == "canceled"

        # Send the signal a run waits for, from its page.
        waiting = await ow.start("approval", None)
        await page.goto(f"{url}/#/run/{waiting.run_id}")
        await page.locator("#why-waits", has_text="waiting for signal “approved”").wait_for()
        await page.fill("#run-actions .signal-data", '{"by": "ada"}')
        await page.click("#run-actions .signal-submit")
        await page.locator("#run-actions .signal-result", has_text="Delivered to 1 run").wait_for()
        await page.locator(".run-header .badge", has_text="completed").wait_for(timeout=20_000)
        assert await waiting.result(timeout=5) == {"by": "ada"}
        assert watched.errors == []


async def test_workers_page_shows_live_workers_and_flags_unserved_runs(
    browser: Any, ow: ow_es.OpenWorkflow
) -> None:
    define(ow)
    await ow.connect()
    hostile = "<img src=x onerror=alert(4)>"
    await ow.start("not-served-here", {"n": 1})
    await ow.start("not-served-here", {"n": 2})
    async with running_worker(ow, concurrency=3) as worker, serve_dashboard(ow) as url:
        watched = await new_page(browser)
        page = watched.page
        await page.goto(f"{url}/#/")
        unserved_card = page.locator("#unserved-runs")
        await unserved_card.locator(".card-value", has_text="2").wait_for()
        assert await page.locator("#live-workers-count .card-value").inner_text() == "1"
        await unserved_card.click()
        await page.wait_for_url("**/#/workers")
        assert await page.locator("nav a.active").inner_text() == "Workers"

        row = page.locator(f'#workers-table tr[data-worker-id="{worker.worker_id}"]')
        await row.wait_for()
        text = await row.inner_text()
        assert worker.worker_id in text and str(os.getpid()) in text
        served = await row.locator("td.serves .tag").all_inner_texts()
        assert sorted(served) == ["approval", "flaky-charge", "greet", "nap"]
        assert "0 / 3" in await row.locator("td.busy").inner_text()
        assert "s ago" in await row.locator("td.heartbeat").inner_text()

        section = page.locator("#unserved.flagged")
        flagged = section.locator('tr[data-workflow="not-served-here"]')
        await flagged.wait_for()
        assert (await flagged.locator("td").nth(2).inner_text()) == "2"
        assert await page.locator("#no-stuck").is_visible()  # nothing held for 10 min

        # Live: a new stranded run shows up without a reload, its name as text.
        await ow.start(hostile, None, version="3")
        odd = section.locator("tbody tr", has_text=hostile)
        await odd.wait_for()
        assert await odd.locator("td").nth(1).inner_text() == "3"
        assert await page.locator("img[src=x]").count() == 0

        await flagged.get_by_role("link").click()
        await page.wait_for_url("**/#/runs?workflow=not-served-here")
        await page.locator("#runs-table tbody tr").nth(1).wait_for()
        assert await page.locator("#runs-table tbody tr").count() == 2
        assert watched.errors == [] and watched.dialogs == []

    # With no worker left, the page says so.
    async with serve_dashboard(ow) as url:
        await page.goto(f"{url}/#/workers")
        await page.locator("#no-workers").wait_for()
        assert await page.locator("#workers-table").count() == 0
        await page.locator('#unserved tr[data-workflow="not-served-here"]').wait_for()


async def test_run_pages_show_key_priority_schedule_and_a_run_held_back_by_a_limit(
    browser: Any, ow: ow_es.OpenWorkflow
) -> None:
    await ow.connect()
    await ow.set_limits("sync", ow_es.Limits(concurrency=1))
    held = await ow.start("sync", 1, key="tenant-7", priority=5)
    tick = datetime(2024, 5, 1, 3, tzinfo=UTC)
    waiting = await ow.start("sync", 2, key="tenant-8", idempotency_key=tick_key("nightly", tick))
    (claimed,) = await ow.store.claim("w", [("sync", None)], 10, 30)
    assert claimed.id == held.run_id
    reason = "held back by a limit: concurrency limit 1 reached"
    async with serve_dashboard(ow) as url:
        watched = await new_page(browser)
        page = watched.page
        await page.goto(f"{url}/#/runs")
        row = page.locator(f'#runs-table tr[data-run-id="{waiting.run_id}"]')
        await row.wait_for()
        assert await row.locator("td.key").inner_text() == "tenant-8"
        assert await row.locator("td.priority").inner_text() == "0"
        assert await row.locator("td.why.held-back").inner_text() == reason
        holder = page.locator(f'#runs-table tr[data-run-id="{held.run_id}"]')
        assert await holder.locator("td.priority").inner_text() == "5"
        assert await holder.locator("td.why.held-back").count() == 0

        await page.goto(f"{url}/#/run/{waiting.run_id}")
        notice = page.locator("#why-waits.held-back")
        await notice.wait_for()
        assert await notice.inner_text() == f"Why it waits: {reason}"
        assert await notice.is_visible()
        assert await page.locator("#run-key").inner_text() == "tenant-8"
        assert await page.locator("#run-priority").inner_text() == "0"
        assert await page.locator("#run-schedule").inner_text() == "nightly"

        # A limit raised and the run claimed: the page follows, and the notice goes.
        await ow.set_limits("sync", ow_es.Limits(concurrency=2))
        (taken,) = await ow.store.claim("w", [("sync", None)], 10, 30)
        assert taken.id == waiting.run_id
        await page.locator("#why-waits", has_text="running on worker w").wait_for()
        assert await page.locator("#why-waits.held-back").count() == 0

        await page.goto(f"{url}/#/run/{held.run_id}")
        await page.locator("#run-priority", has_text="5").wait_for()
        assert await page.locator("#run-key").inner_text() == "tenant-7"
        assert await page.locator("#run-schedule").count() == 0
        assert watched.errors == [] and watched.dialogs == []


async def test_user_data_is_rendered_as_text_and_never_runs(
    browser: Any, ow: ow_es.OpenWorkflow
) -> None:
    await ow.connect()
    hostile = "<img src=x onerror=alert(2)>"
    handle = await ow.start("<script>alert(3)</script>", XSS_INPUT, idempotency_key=hostile)
    async with serve_dashboard(ow) as url:
        watched = await new_page(browser)
        page = watched.page
        await page.goto(f"{url}/#/runs")
        row = page.locator(f'#runs-table tr[data-run-id="{handle.run_id}"]')
        await row.wait_for()
        assert "<script>alert(3)</script>" in await row.inner_text()
        await page.goto(f"{url}/#/runs?q={hostile}")
        await page.locator(f'#runs-table tr[data-run-id="{handle.run_id}"]').wait_for()
        await page.goto(f"{url}/#/run/{handle.run_id}")
        run_input = page.locator("#run-input")
        await run_input.wait_for()
        shown = await run_input.inner_text()
        assert XSS_INPUT["name"] in shown and XSS_INPUT["avatar"] in shown
        assert await page.get_by_text(hostile).first.is_visible()
        assert await page.get_by_text("<script>alert(3)</script>").first.is_visible()
        await page.locator("#event-history summary").first.click()
        assert XSS_INPUT["avatar"] in await page.locator("#events-table").inner_text()
        await page.goto(f"{url}/#/")
        await page.locator("#workflow-counts").get_by_text("<script>alert(3)</script>").wait_for()
        await page.wait_for_timeout(300)  # give an injected handler every chance to fire
        assert await page.locator("img[src=x]").count() == 0
        assert await page.locator("script").count() == 1  # only the dashboard's own module
        assert watched.dialogs == [] and watched.errors == []


async def test_the_page_asks_for_the_token_once(browser: Any, ow: ow_es.OpenWorkflow) -> None:
    await ow.connect()
    await ow.start("greet", {"name": "x"})
    async with serve_dashboard(ow, token="tok-123") as url:
        watched = await new_page(browser)
        page = watched.page
        await page.goto(f"{url}/#/runs")
        await page.locator("#token-dialog").wait_for()
        await page.fill("#token-input", "wrong")
        await page.click("#token-submit")
        await page.locator("#token-message", has_text="not accepted").wait_for()
        await page.fill("#token-input", "tok-123")
        await page.click("#token-submit")
        await page.locator("#runs-table tbody tr").wait_for()
        await page.locator("#live.on").wait_for()
        stored = await page.evaluate("sessionStorage.getItem('ow-es-dashboard-token')")
        assert stored == "tok-123"
        await page.reload()
        await page.locator("#runs-table tbody tr").wait_for()
        assert await page.locator("#token-dialog").is_hidden()
