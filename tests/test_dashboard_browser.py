"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium).

The server runs on 127.0.0.1 on a populated PostgreSQL schema. Every view must load without console errors
and draw its charts from the data; filters, sorting and range switches must work; a label containing HTML
must show as text. A screenshot of each view is saved under ``screenshots/`` (its path is printed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_history import HOSTILE_ACTOR, FleetHistory, make_actors, populate
from sqlalchemy import Engine

from dramatiq_opmetrics.dashboard import create_app
from dramatiq_opmetrics.dashboard.server import make_server
from dramatiq_opmetrics.http_serving import stop_http_server

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: One parallel worker should run the whole module, starting its browser and schemas once (pytest-xdist issue 1386).
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("dashboard_browser")]

SCREENSHOTS = Path(__file__).parent.parent / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: The flags the browser is started with (no sandbox: the tests may run as root in a container).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking")
WAIT_S = 20


@contextlib.contextmanager
def served_schema(populate_schema: Callable[[Engine], FleetHistory]) -> Iterator[tuple[str, Engine, FleetHistory]]:
    """The dashboard served on 127.0.0.1 over a migrated PostgreSQL schema of its own, filled by
    ``populate_schema``: its address, an engine on the schema and what was written."""
    # Module-scoped: set up the schema by hand with the conftest helpers' conventions.
    import uuid

    import psycopg
    from conftest import POSTGRES_URL, libpq_conninfo

    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.migrate import upgrade

    schema = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = libpq_conninfo(POSTGRES_URL)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = POSTGRES_URL.update_query_dict({"options": f"-csearch_path={schema}"})
    engine: Engine | None = None
    server: Any = None
    thread: threading.Thread | None = None
    try:
        upgrade(url)
        engine = make_engine(url)
        history = populate_schema(engine)
        server = make_server(create_app(url), "127.0.0.1", 0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.effective_port}", engine, history
    finally:
        if server is not None:
            stop_http_server(server)  # the browser's open connections too, or the thread outlives the join
        if thread is not None:
            thread.join(timeout=5)
        if engine is not None:
            engine.dispose()
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def fleet_server() -> Iterator[tuple[str, FleetHistory]]:
    """The dashboard served on 127.0.0.1 over a migrated PostgreSQL schema holding 60 days of a fleet."""
    with served_schema(lambda engine: populate(engine, days=60, actors=make_actors(8), raw_samples_per_actor=40)) as (
        base,
        _engine,
        history,
    ):
        yield base, history


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium with a fresh profile, its console log kept."""
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "Chromium is missing: apt-get install chromium chromium-driver (./dev test does it when run as root)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1400,1100")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, url: str) -> None:
    """Load ``url`` and wait until every chart on it is drawn (or says it has no data)."""
    driver.get_log("browser")  # forget earlier pages' messages
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' &&"
            " [...document.querySelectorAll('[data-chart]')].every(e => e.dataset.rendered)"
        )
    )


def console_problems(driver: Any) -> list[str]:
    """Console messages of warning level or worse since the page was opened."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def drawn_pixels(driver: Any, element: Any) -> int:
    """How many non-transparent pixels the chart's canvas has."""
    count: int = driver.execute_script(
        "const c = arguments[0].querySelector('canvas'); if (!c) return 0;"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;",
        element,
    )
    return count


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1100)
    print(f"screenshot: {path}")
    return path


VIEWS = {
    "overview": "/?days=30",
    "actor": "/actor?actor=actor_000&queue=queue_0&days=30",
    "queues": "/queues?days=30&hours=24",
    "tokens": "/tokens?days=30",
    "confidence": "/confidence?days=30",
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_view_loads_without_console_errors_and_draws_its_charts(
    browser: Any, fleet_server: tuple[str, FleetHistory], view: str
) -> None:
    base, _history = fleet_server
    open_page(browser, base + VIEWS[view])
    charts = browser.find_elements(By.CSS_SELECTOR, "[data-chart]")
    if view == "overview":
        charts = browser.find_elements(By.CSS_SELECTOR, ".spark")
        WebDriverWait(browser, WAIT_S).until(lambda d: all(e.get_attribute("data-rendered") for e in charts))
    assert charts, f"the {view} view has no charts"
    for chart in charts:
        assert chart.get_attribute("data-rendered") == "chart", f"a chart of {view} has no data"
        assert drawn_pixels(browser, chart) > 50, f"a chart of {view} is blank"
    assert console_problems(browser) == []
    path = screenshot(browser, view)
    assert path.stat().st_size > 10_000


def test_range_switch_changes_the_days_shown(browser: Any, fleet_server: tuple[str, FleetHistory]) -> None:
    base, _history = fleet_server
    open_page(browser, base + VIEWS["actor"])
    assert int(browser.find_element(By.CSS_SELECTOR, "[data-chart=messages]").get_attribute("data-points")) == 30
    browser.find_element(By.CSS_SELECTOR, ".switch a[data-days='7']").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "days=7" in d.current_url)
    open_page(browser, browser.current_url)
    assert browser.find_element(By.CSS_SELECTOR, ".switch a.active").text == "7 days"
    assert int(browser.find_element(By.CSS_SELECTOR, "[data-chart=messages]").get_attribute("data-points")) == 7
    assert console_problems(browser) == []


def test_queue_filter_keeps_only_that_queues_rows(browser: Any, fleet_server: tuple[str, FleetHistory]) -> None:
    base, history = fleet_server
    open_page(browser, base + "/?days=30")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#overview tbody tr")) == len(history.actors)
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=queue]")).select_by_value("queue_1")
    WebDriverWait(browser, WAIT_S).until(lambda d: "queue=queue_1" in d.current_url)
    open_page(browser, browser.current_url)
    queues = {row.get_attribute("data-queue") for row in browser.find_elements(By.CSS_SELECTOR, "#overview tbody tr")}
    assert queues == {"queue_1"}
    assert "days=30" in browser.current_url


def test_sorting_by_a_column_reorders_the_rows(browser: Any, fleet_server: tuple[str, FleetHistory]) -> None:
    base, history = fleet_server
    open_page(browser, base + "/?days=30")
    rates = [
        row.find_elements(By.CSS_SELECTOR, "td")[3].text
        for row in browser.find_elements(By.CSS_SELECTOR, "#overview tbody tr")
    ]
    as_numbers = [float(rate.split()[0]) for rate in rates]
    assert as_numbers == sorted(as_numbers, reverse=True), "the worst error rate is not first"
    browser.find_element(By.CSS_SELECTOR, "th a[data-sort=actor]").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "sort=actor" in d.current_url)
    browser.find_element(By.CSS_SELECTOR, "th a[data-sort=actor]").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "order=asc" in d.current_url)
    actors = [row.get_attribute("data-actor") for row in browser.find_elements(By.CSS_SELECTOR, "#overview tbody tr")]
    assert actors == sorted((actor.name for actor in history.actors), key=str.casefold)


def test_a_label_containing_html_is_shown_as_text(browser: Any, fleet_server: tuple[str, FleetHistory]) -> None:
    base, _history = fleet_server
    open_page(browser, base + "/?days=30")
    links = [link.text for link in browser.find_elements(By.CSS_SELECTOR, "#overview td.label a")]
    assert HOSTILE_ACTOR in links
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    executable = browser.execute_script(
        "return [...document.scripts].filter(s => !s.src && s.type !== 'application/json').length"
    )
    assert executable == 0
    browser.find_element(By.LINK_TEXT, HOSTILE_ACTOR).click()
    WebDriverWait(browser, WAIT_S).until(lambda d: "/actor" in d.current_url)
    open_page(browser, browser.current_url)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Actor {HOSTILE_ACTOR}"
    assert console_problems(browser) == []
    screenshot(browser, "actor-with-html-label")


def test_the_page_shows_today(browser: Any, fleet_server: tuple[str, FleetHistory]) -> None:
    base, history = fleet_server
    open_page(browser, base + VIEWS["actor"])
    today = dt.datetime.now(dt.UTC).date()
    assert history.today == today
    last_point = browser.execute_script(
        "const d = JSON.parse(document.getElementById('chart-data').textContent).messages;"
        " return [d.x[d.x.length - 1], d.series[0].values[d.series[0].values.length - 1]];"
    )
    assert dt.datetime.fromtimestamp(last_point[0], dt.UTC).date() == today
    raw_today = len(history.raw_values[("processing_time", "actor:actor_000|queue:queue_0")])
    assert last_point[1] == raw_today


#: An actor whose name is HTML: the Now page builds its tables in the browser, and must show it as text.
HTML_ACTOR = "<b>x</b>"
#: A queue with ready messages and no consumer: stalled all along.
STUCK_QUEUE = "stuck"


def now_samples(engine: Engine) -> FleetHistory:
    """A fleet's history, plus the last hour of what only the Now page shows: worker processes, oldest-message
    ages, a stalled queue, and an actor named with HTML."""
    from raw_samples import insert_samples

    from dramatiq_opmetrics.interval_claims import interval_start
    from dramatiq_opmetrics.metric_types import MetricType
    from dramatiq_opmetrics.samples import oldest_message_age, queue_depth, worker_threads

    history = populate(engine, days=10, actors=make_actors(6), raw_samples_per_actor=40)
    # Every 15 s for an hour, at wall-clock multiples of 15 s as workers sample.
    end = interval_start(dt.datetime.now(dt.UTC), 15.0)
    rows = []
    for step in range(240):
        at = end - dt.timedelta(seconds=15 * step)
        found = worker_threads(8, step % 5, host="host-a", queues="queue_0,queue_1")
        found += worker_threads(4, 4, host="host-b", queues=STUCK_QUEUE)
        found += queue_depth(STUCK_QUEUE, 12, state="ready") + oldest_message_age(STUCK_QUEUE, 3600.0 - 15 * step)
        for queue in history.queues:
            found += oldest_message_age(queue, float(step % 7))
        rows += [(sample.metric_type, sample.label_set.labels, sample.value, at) for sample in found]
        for actor in (HTML_ACTOR, HOSTILE_ACTOR):
            labels = {"actor": actor, "queue": "queue_0"}
            rows.append((MetricType.PROCESSING_TIME, labels, 900.0 + step, at))
            rows.append((MetricType.WAIT_TIME, labels, 40.0 + step % 9, at))
    insert_samples(engine, rows)
    return history


@pytest.fixture(scope="module")
def now_server() -> Iterator[tuple[str, Engine]]:
    """The dashboard served over a schema of its own holding :func:`now_samples`."""
    with served_schema(now_samples) as (base, engine, _history):
        yield base, engine


def test_the_now_page_draws_every_chart_without_console_errors(browser: Any, now_server: tuple[str, Engine]) -> None:
    base, _engine = now_server
    open_page(browser, base + "/now?window=1h")
    charts = browser.find_elements(By.CSS_SELECTOR, "[data-chart]")
    assert len(charts) == 8
    for chart in charts:
        name = chart.get_attribute("data-chart")
        assert chart.get_attribute("data-rendered") == "chart", f"the Now page's {name} chart has no data"
        assert drawn_pixels(browser, chart) > 50, f"the Now page's {name} chart is blank"
    for name in ("queue_depth", "oldest_message_age"):
        chart = browser.find_element(By.CSS_SELECTOR, f"[data-chart={name}]")
        assert int(chart.get_attribute("data-bands")) >= 1, f"the stalled queue is not marked on {name}"
    stalled = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#now-stalled tbody td.label")]
    assert STUCK_QUEUE in stalled
    # Two processes sampled until the schema was filled (the latest bucket may hold fewer since).
    assert 0 < float(browser.find_element(By.CSS_SELECTOR, "[data-stat=workers]").text) <= 2
    assert console_problems(browser) == []
    path = screenshot(browser, "now")
    assert path.stat().st_size > 10_000
    for window in ("6h", "24h", "72h"):
        browser.find_element(By.CSS_SELECTOR, f".switch a[data-window='{window}']").click()
        WebDriverWait(browser, WAIT_S).until(lambda d, window=window: f"window={window}" in d.current_url)
        open_page(browser, browser.current_url)
        assert (
            browser.find_element(By.CSS_SELECTOR, "[data-chart=throughput]").get_attribute("data-rendered") == "chart"
        )
        assert console_problems(browser) == []


def test_the_now_page_shows_a_label_with_html_as_text(browser: Any, now_server: tuple[str, Engine]) -> None:
    base, _engine = now_server
    open_page(browser, base + "/now?window=1h")
    actors = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#now-actors tbody td.label")]
    assert HTML_ACTOR in actors and HOSTILE_ACTOR in actors
    assert browser.execute_script("return document.querySelectorAll('main b').length") == 0
    legend = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "[data-chart=throughput] .u-label")]
    assert HTML_ACTOR in legend
    options = [option.text for option in browser.find_elements(By.CSS_SELECTOR, "select[name=actor] option")]
    assert HTML_ACTOR in options
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    Select(browser.find_element(By.CSS_SELECTOR, "select[name=actor]")).select_by_visible_text(HTML_ACTOR)
    WebDriverWait(browser, WAIT_S).until(lambda d: "actor=" in d.current_url)
    open_page(browser, browser.current_url)
    assert [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#now-actors tbody td.label")] == [HTML_ACTOR]
    legend = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "[data-chart=processing_time] .u-label")]
    assert legend[1:] == ["p50", "p95", "p99"]
    assert console_problems(browser) == []
    screenshot(browser, "now-one-actor-with-html-label")


def test_the_now_page_shows_new_samples_after_a_refresh_without_reloading(
    browser: Any, now_server: tuple[str, Engine]
) -> None:
    from raw_samples import insert_samples

    from dramatiq_opmetrics.metric_types import MetricType

    base, engine = now_server
    open_page(browser, base + "/now?window=1h")
    browser.execute_script("window.loadedOnce = true")
    actors = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#now-actors tbody td.label")]
    assert "fresh_actor" not in actors
    written = dt.datetime.now(dt.UTC)
    labels = {"actor": "fresh_actor", "queue": "queue_0"}
    insert_samples(engine, [(MetricType.PROCESSING_TIME, labels, 60_000.0, written) for _ in range(50)])
    # The page refreshes every 15 s: the samples show within one refresh (and the time to answer it). A refresh
    # may replace the table between finding its cells and reading them: then the wait reads them again.
    WebDriverWait(browser, 15 + WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (
            "fresh_actor" in [cell.text for cell in d.find_elements(By.CSS_SELECTOR, "#now-actors tbody td.label")]
        )
    )
    assert browser.execute_script("return window.loadedOnce === true"), "the page was reloaded"
    assert int(browser.find_element(By.ID, "now").get_attribute("data-refreshes")) >= 1
    legend = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "[data-chart=throughput] .u-label")]
    assert "fresh_actor" in legend
    assert browser.find_element(By.CSS_SELECTOR, "[data-chart=throughput]").get_attribute("data-rendered") == "chart"
    assert console_problems(browser) == []


# -- alerts: the banner on every page, the Alerts page -----------------------------------------------------

#: The rule of the alerts served: errors of any actor of queue ``crm`` above 50%, per actor, at once.
ALERT_RULE = "crm-errors"


def alert_rules(name: str = ALERT_RULE, actor: str | None = None) -> Any:
    """A rule set of one rule: errors of any actor of queue ``crm`` (or of ``actor`` only) above 50%, per
    actor, at once, critical."""
    from dramatiq_opmetrics.alert_rules import Notifier, Rule, RuleSet

    rule = Rule(
        name=name,
        metric="error_rate",
        above=0.5,
        below=None,
        window=dt.timedelta(minutes=5),
        for_=dt.timedelta(0),
        notify=("ops",),
        labels={"queue": "crm", **({"actor": actor} if actor else {})},
        group_by=("actor",),
        severity="critical",
    )
    return RuleSet(rules=(rule,), notifiers={"ops": Notifier("ops", ("json://127.0.0.1:9/hook",))})


def failing_messages(engine: Engine, actor: str, end: dt.datetime) -> None:
    """Failing messages of ``actor`` on queue ``crm``, one every 20 s in the 5 minutes before ``end``."""
    from dramatiq_opmetrics import samples
    from dramatiq_opmetrics.writer import write_samples

    found: list[Any] = []
    for step in range(15):
        at = end - dt.timedelta(seconds=20 * (step + 1))
        found += samples.processing_time(actor, 10.0, queue="crm", recorded_at=at)
        found += samples.error(actor, "ValueError", queue="crm", recorded_at=at, outcome="final")
    with engine.begin() as connection:
        write_samples(connection, found)


def alert_samples(engine: Engine) -> FleetHistory:
    """A small fleet's history, and ``crm-errors`` firing for an actor named with HTML (evaluated now)."""
    from dramatiq_opmetrics.alert_evaluator import evaluate

    history = populate(engine, days=3, actors=make_actors(2), raw_samples_per_actor=5)
    now = dt.datetime.now(dt.UTC)
    failing_messages(engine, HTML_ACTOR, now)
    evaluate(engine, alert_rules(), now)
    return history


@pytest.fixture(scope="module")
def alerts_server() -> Iterator[tuple[str, Engine]]:
    """The dashboard served over a schema of its own holding :func:`alert_samples`."""
    with served_schema(alert_samples) as (base, engine, _history):
        yield base, engine


def banner_alerts(driver: Any) -> list[str]:
    """The texts of the banner's alerts, read in one script: a refresh replacing the banner between finding
    its items and reading them (a stale element) cannot come in between."""
    texts: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#alerts-banner li'), (item) => item.innerText.trim())"
    )
    return texts


@pytest.mark.parametrize("page", ["/", "/queues", "/now", "/alerts"])
def test_the_banner_shows_the_firing_alert_with_its_html_label_as_text(
    browser: Any, alerts_server: tuple[str, Engine], page: str
) -> None:
    base, _engine = alerts_server
    open_page(browser, base + page)
    banner = browser.find_element(By.ID, "alerts-banner")
    assert banner.is_displayed()
    [shown] = banner_alerts(browser)
    assert shown.startswith(f"critical {ALERT_RULE} actor={HTML_ACTOR} since ")
    assert "value 1" in shown
    assert browser.execute_script("return document.querySelectorAll('#alerts-banner b, main b').length") == 0
    assert console_problems(browser) == []
    link = banner.find_element(By.CSS_SELECTOR, "li a").get_attribute("href")
    assert link == f"{base}/alerts?rule={ALERT_RULE}"


def test_the_alerts_page_lists_the_alert_and_its_history(browser: Any, alerts_server: tuple[str, Engine]) -> None:
    base, _engine = alerts_server
    open_page(browser, base + "/alerts")
    row = browser.find_element(By.CSS_SELECTOR, "#alerts-states tr[data-state=firing]")
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[0] == "firing" and cells[1].startswith(ALERT_RULE) and cells[2] == f"actor={HTML_ACTOR}"
    assert cells[3] == "critical" and cells[6] == "above 0.5"
    history = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#alerts-history tbody tr")]
    assert len(history) == 1 and "ok → firing" in history[0]
    waiting = browser.find_elements(By.CSS_SELECTOR, "#alerts-deliveries tr[data-status=waiting]")
    assert len(waiting) == 1
    assert console_problems(browser) == []
    screenshot(browser, "alerts")


def test_the_now_pages_refresh_redraws_the_banner_without_reloading(
    browser: Any, alerts_server: tuple[str, Engine]
) -> None:
    from dramatiq_opmetrics.alert_evaluator import evaluate

    base, engine = alerts_server
    open_page(browser, base + "/now?window=1h")
    browser.execute_script("window.loadedOnce = true")
    assert len(banner_alerts(browser)) == 1
    now = dt.datetime.now(dt.UTC)
    failing_messages(engine, "fresh_actor", now)
    evaluate(engine, alert_rules("fresh-errors", actor="fresh_actor"), now)
    # The page refreshes every 15 s: the new alert shows within one refresh (and the time to answer it).
    WebDriverWait(browser, 15 + WAIT_S).until(lambda d: len(banner_alerts(d)) == 2)
    assert browser.execute_script("return window.loadedOnce === true"), "the page was reloaded"
    assert browser.find_element(By.CSS_SELECTOR, "[data-banner-title]").text == "2 alerts firing"
    assert any(text.startswith("critical fresh-errors actor=fresh_actor") for text in banner_alerts(browser))
    assert any(HTML_ACTOR in text for text in banner_alerts(browser))
    assert console_problems(browser) == []
