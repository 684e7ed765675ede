"""The dashboard in a real browser (issue 14 §4): Debian's chromium, headless, driven by playwright
with ``executable_path`` (never ``playwright install``: no browser download).

With a bot running: the page loads with the token and is refused without; a new fill appears in the
fills table and the equity chart gains points within 5 s, through the stream; the halt button,
confirmed, makes ``status`` HALTED. Screenshots go to the test's tmp dir, and one copy to docs/.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from harness import REPO, poll

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run"]
FAST = """
[sim]
speed = 120.0
[strategy]
fast = 2
slow = 4
"""

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")


@pytest.fixture
def browser() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _count(page: Any, selector: str) -> int:
    return int(page.eval_on_selector_all(selector, "els => els.length"))


def _curve_points(page: Any) -> int:
    return int(page.evaluate("() => { const c = document.getElementById('equity-chart');"
                             " return c && c.data ? c.data[0].x.length : -1; }"))


def _newest_fill(data_dir: Path, shown: set[str]) -> str | None:
    """The newest journaled fill the page does not show yet (read-only, as the dashboard reads)."""
    from steadyhand.state import store

    db = store.open_readonly(data_dir)
    assert db is not None
    try:
        row = db.execute("SELECT fill_id FROM fills ORDER BY rowid DESC LIMIT 1").fetchone()
    finally:
        db.close()
    return row[0] if row and row[0] not in shown else None


def test_dashboard_in_chromium_live_fills_chart_and_halt(make_bot: Any, browser: Any, tmp_path: Path) -> None:
    bot = make_bot(FAST).start()
    url = poll(lambda: bot.status().get("dashboard_url"), timeout=30, what="dashboard_url")
    base = url.partition("/?token=")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    refused = page.goto(base + "/")
    assert refused is not None and refused.status == 401
    assert page.goto(base + "/api/state").status == 401  # type: ignore[union-attr]
    loaded = page.goto(url)
    assert loaded is not None and loaded.status == 200
    page.wait_for_function("() => document.getElementById('equity-chart').data !== undefined", timeout=15_000)
    assert page.goto(base + "/").status == 200  # type: ignore[union-attr]  # the cookie from the first visit
    page.wait_for_function("() => document.getElementById('equity-chart').data !== undefined", timeout=15_000)

    # a new fill reaches the table and the chart grows within 5 s of its journaling, with no reload
    poll(lambda: _count(page, "#fills tr[data-fill-id]") > 0, timeout=60, what="fills on the page")
    shown = set(page.eval_on_selector_all("#fills tr[data-fill-id]", "els => els.map(e => e.dataset.fillId)"))
    new = poll(lambda: _newest_fill(bot.data_dir, shown), timeout=60, interval=0.05, what="a fill not on the page yet")
    points = _curve_points(page)
    page.wait_for_selector(f'#fills tr[data-fill-id="{new}"]', timeout=5_000)
    page.wait_for_function("n => document.getElementById('equity-chart').data[0].x.length > n", arg=points,
                           timeout=5_000)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    docs = REPO / "docs" / "dashboard.png"
    shutil.copyfile(tmp_path / "dashboard.png", docs)

    # halt: refused without the confirmation, done with it
    messages: list[str] = []
    page.once("dialog", lambda d: (messages.append(d.message), d.dismiss()))
    page.click("#btn-halt")
    poll(lambda: messages, timeout=5, what="the confirmation dialog")
    assert bot.status()["trading_state"] == "active"
    page.once("dialog", lambda d: d.accept())
    page.click("#btn-halt")
    status = poll(lambda: (s := bot.status())["trading_state"] == "halted" and s, timeout=30,
                  what="HALTED after the confirmed halt")
    assert "operator" in status["halt_reason"]
    page.wait_for_function("() => document.getElementById('trading-state').textContent.startsWith('HALTED')",
                           timeout=10_000)
    page.screenshot(path=str(tmp_path / "dashboard-halted.png"), full_page=True)
    page.close()
    bot.stop()
