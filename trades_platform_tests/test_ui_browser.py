"""The Dagster UI in a real headless Chromium, driven like a user: the README's tour by clicks.

The platform runs as `make run` starts it (launcher, broker, simulator, webserver + daemon). The
test sees the live run on the Runs page, materializes one past day of one pair from the asset
page's Materialize dialog, waits on the run page for success, and reads the partition's record
count on the asset page, which must be exactly the simulator's number of trades in that day.
Then, without a click, the automation sensor archives that day (Parquet file and candles, with
their checks), and the asset graph shows topic -> Parquet -> candles.
Screenshots of every step land in test-artifacts/ui/ (docs/screenshots/ keeps copies for the
README).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import unique_topic
from trades_platform_tests.support.stack import (
    FINISHED,
    PROJECT_ROOT,
    RunningStack,
    running_stack,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.stack]

CHROMIUM = Path("/usr/bin/chromium")
# What this machine's closed network needs: no sandbox as root, no calls home, no QUIC.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = PROJECT_ROOT / "test-artifacts" / "ui"
PAIRS = ("BTC/USD", "ETH/USD")
# Slow enough that one simulated day (4,320 trades per pair) is five REST pages.
TRADES_PER_SECOND = 0.05
DAY, PAIR = "2024-01-02", "BTC/USD"
# The live run must be up within this; the daemon's first sensor tick comes about 30 s in.
LIVE_RUN_SECONDS = 150
BACKFILL_SECONDS = 120
# The automation sensor ticks every 30 s; the run's steps are processes of their own.
ARCHIVE_SECONDS = 300
# The daemon evaluates freshness policies every 30 s.
FRESHNESS_SECONDS = 120


def expected_trades(pair: str, day: str) -> int:
    """Trades the simulator serves for `pair` in the UTC day: ids are a pure function of time."""
    market = SimulatedMarket(PAIRS, TRADES_PER_SECOND)
    window = PartitionWindow.for_day(pair, date.fromisoformat(day))
    return market.first_id_at_or_after(pair, window.end_us) - market.first_id_at_or_after(
        pair, window.start_us
    )


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[RunningStack]:
    """The platform, offline, on a free port, with its own topic and Dagster home."""
    env = {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KAFKA_BROKER_ADDRESS": broker,
        "KAFKA_TOPIC": unique_topic(),
        "KRAKEN_PAIRS": ",".join(PAIRS),
        "SIMULATOR_TRADES_PER_SECOND": str(TRADES_PER_SECOND),
        "KRAKEN_REST_REQUESTS_PER_SECOND": "50",
        "ARCHIVE_URL": str(tmp_path / "archive"),
    }
    with running_stack(env, tmp_path / "launcher.log") as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless (Playwright never downloads a browser here)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get update && apt-get install -y chromium` (.ci/run does this)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _link(page: Page, label: str) -> Locator:
    # By text, not accessible name, which starts with the icon's label ("runs Runs"); a
    # middle-truncated label carries a hidden copy of itself, hence the repetition.
    text = re.compile(f"^({re.escape(label)})+$")
    return page.get_by_role("link").filter(has_text=text).first


# True once finite animations (a toast sliding in) are over; spinners loop forever and don't count.
_SETTLED = """() => document.getAnimations().every(
    (a) => a.playState !== "running" || a.effect?.getComputedTiming().iterations === Infinity)"""


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_function(_SETTLED, timeout=10_000)
    page.screenshot(path=SCREENSHOTS / name)


def test_ui_tour_live_run_and_one_partition_backfill(stack: RunningStack, browser: Browser) -> None:
    expected = expected_trades(PAIR, DAY)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    # A fresh instance greets a first visitor with a newsletter dialog; a user clicks Skip.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    try:
        _tour(page, stack, expected)
    except BaseException:
        _shot(page, "failure.png")
        raise
    finally:
        page.close()


def _tour(page: Page, stack: RunningStack, expected: int) -> None:
    # 1. Runs: the sensor's live run is in progress ("Started" is the UI's word for running).
    page.goto(stack.url)
    _link(page, "Runs").click()
    # Runs are rows of a virtualized table (divs with a data-index), refreshed by the page itself.
    live_row = (
        page.locator("[data-index]").filter(has_text="live_trades_job").filter(has_text="Started")
    )
    expect(live_row).to_have_count(1, timeout=LIVE_RUN_SECONDS * 1000)
    expect(live_row).to_contain_text("live_trades_sensor")
    _shot(page, "01-runs-live-running.png")

    # 2. The asset page, reached from the catalog.
    _link(page, "Catalog").click()
    _link(page, "kraken_trades_history").click()
    materialize = page.get_by_role("button", name="Materialize…")
    expect(materialize).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Kraken trades of one pair on one UTC day")).to_be_visible()
    _shot(page, "02-asset-page.png")

    # 3. Materialize one partition: a date typed into the date picker, one pair ticked.
    materialize.click()
    dialog = page.locator(".dagster-dialog")
    date_input = dialog.get_by_placeholder(re.compile("^ex: "))
    date_input.fill(DAY)
    date_input.press("Enter")
    dialog.get_by_text("Select a partition or create one").click()
    # The pair list is a popover outside the dialog; the first match is the visible label.
    page.get_by_text(PAIR, exact=True).first.click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the popover
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch 1 run").click()
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}"))
    expect(toast).to_be_visible(timeout=30_000)
    _shot(page, "03-backfill-launched.png")

    # 4. The run page, from the toast, until the run succeeds.
    notifications = page.get_by_role("region", name=re.compile("^Notifications"))
    view = notifications.get_by_role("button", name="View", exact=True)
    view.or_(notifications.get_by_role("link", name="View", exact=True)).first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"), timeout=30_000)
    header = page.get_by_text(f"partition: {DAY}|{PAIR}")
    expect(header).to_be_visible(timeout=30_000)
    status = page.get_by_text(re.compile("^(Success|Failure|Canceled)$")).first
    expect(status).to_be_visible(timeout=BACKFILL_SECONDS * 1000)
    expect(status, f"the backfill run ended {status.inner_text()}").to_have_text("Success")
    _shot(page, "04-backfill-succeeded.png")

    # 5. Back on the asset page: the partition's record count.
    _link(page, "kraken_trades_history").click()
    page.get_by_role("tab", name="Partitions", exact=True).click()
    page.get_by_placeholder("Filter by date").fill(DAY)
    page.get_by_text(DAY, exact=True).first.click()
    page.get_by_text(PAIR, exact=True).first.click()
    expect(page.get_by_text(f"{DAY}|{PAIR}", exact=True).first).to_be_visible(timeout=30_000)
    row_count = page.locator("tr").filter(has=page.get_by_text("dagster/row_count", exact=True))
    expect(row_count).to_have_count(1, timeout=30_000)
    shown = row_count.locator("td").nth(1).inner_text().strip()
    _shot(page, "05-asset-row-count.png")
    assert int(shown.replace(",", "")) == expected, (
        f"the UI shows {shown} trades for {DAY}|{PAIR}; the simulator served {expected}"
    )

    # 6. Without a click: the automation sensor archives the day (Parquet file, candles, checks).
    key = f"{DAY}|{PAIR}"
    archived = wait_for(
        f"the automation sensor's archive run of {key}",
        lambda: _finished_archive_run(stack, key),
        ARCHIVE_SECONDS,
        stack,
    )
    assert archived["status"] == "SUCCESS", archived

    # 7. The asset graph around the Parquet day: the topic's day (kraken_trades_history) ->
    # its Parquet file -> its candles, each with its two checks passed.
    page.goto(f"{stack.url}/assets/kraken_trades_parquet?view=lineage")
    for name in ("kraken_trades_history", "kraken_trades_parquet", "kraken_candles_1m"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("2 / 2 Passed")).to_have_count(3, timeout=30_000)
    _shot(page, "06-asset-graph-archive.png")

    # 8. The Parquet asset's page: its freshness policy, as the daemon evaluated it (every 30 s;
    # the page shows a new evaluation when it is loaded again).
    overview = f"{stack.url}/assets/kraken_trades_parquet?view=overview"
    passing = page.get_by_text("Passing", exact=True).first
    deadline = time.monotonic() + FRESHNESS_SECONDS
    while True:
        page.goto(overview)
        expect(
            page.get_by_text("Fails if more than 26 hours since last materialization")
        ).to_be_visible(timeout=30_000)
        try:
            expect(passing).to_be_visible(timeout=10_000)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    _shot(page, "07-archive-freshness.png")


def _finished_archive_run(stack: RunningStack, key: str) -> dict[str, object] | None:
    """The archive run the automation sensor launched for the partition, once it is over."""
    for run in stack.runs("__ASSET_JOB"):
        tags = {tag["key"]: tag["value"] for tag in run["tags"]}
        if (
            tags.get("dagster/sensor_name") == "archive_automation_sensor"
            and tags.get("dagster/partition") == key
            and run["status"] in FINISHED
        ):
            return dict(run)
    return None
