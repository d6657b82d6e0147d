"""The dashboard's WSGI application: pages, escaping, parameters, authentication, headers, mounting."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fleet_history import HOSTILE_ACTOR, FleetHistory, make_actors, populate
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client
from werkzeug.wrappers import Response

from dramatiq_opmetrics.dashboard import DashboardApp, create_app
from dramatiq_opmetrics.dashboard.data import DashboardData

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
PAGES = [
    "/",
    "/?days=365",
    "/actor?actor=actor_000&queue=queue_0",
    "/queues?hours=6",
    "/tokens",
    "/confidence",
    "/now",
    "/now?window=72h&actor=actor_000&queue=queue_0",
]


@pytest.fixture
def sqlite_engine(sqlite_url: URL) -> Engine:
    from dramatiq_opmetrics.database import make_engine
    from dramatiq_opmetrics.migrate import upgrade

    upgrade(sqlite_url)
    return make_engine(sqlite_url)


@pytest.fixture
def fleet(sqlite_engine: Engine) -> FleetHistory:
    return populate(sqlite_engine, days=20, actors=make_actors(4), now=NOW, raw_samples_per_actor=10)


def client_for(engine: Engine, **auth: object) -> Client:
    return Client(DashboardApp(DashboardData(engine, clock=lambda: NOW), **auth))  # type: ignore[arg-type]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_answers_with_html_and_its_chart_data(sqlite_engine: Engine, fleet: FleetHistory, page: str) -> None:
    response = client_for(sqlite_engine).get(page)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    charts = json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)[1])
    assert charts
    assert "vendor/uplot/uPlot.iife.min.js" in html
    assert re.search(r'<a href="/now"[^>]*>Now</a>', html), "the navigation links the Now page"


def chart_data(html: str) -> dict[str, object]:
    return json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html, re.S)[1])


def test_the_now_pages_data_is_served_as_json_for_its_refreshes(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    client = client_for(sqlite_engine)
    page = client.get("/now?window=6h&percentile=p99")
    html = page.get_data(as_text=True)
    assert 'data-refresh-url="/now.json?window=6h&amp;percentile=p99"' in html
    response = client.get("/now.json?window=6h&percentile=p99")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    view = response.get_json()
    assert view == chart_data(html)
    assert view["window"] == "6h" and view["percentile"] == "p99"
    assert {"throughput", "error_rate", "processing_time", "wait_time", "queue_depth", "oldest_message_age"} <= set(
        view["charts"]
    )
    assert HOSTILE_ACTOR in view["actors"]
    assert HOSTILE_ACTOR not in html


def test_a_label_with_html_is_escaped_in_the_page_and_in_the_chart_data(
    sqlite_engine: Engine, fleet: FleetHistory
) -> None:
    html = client_for(sqlite_engine).get("/").get_data(as_text=True)
    assert HOSTILE_ACTOR not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    detail = client_for(sqlite_engine).get("/actor", query_string={"actor": HOSTILE_ACTOR, "queue": "queue_3"})
    assert detail.status_code == 200
    assert HOSTILE_ACTOR not in detail.get_data(as_text=True)


def test_a_bad_parameter_is_a_400_naming_the_problem(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    client = client_for(sqlite_engine)
    for page, message in [
        ("/?days=5", "days must be one of 7, 30, 90, 365"),
        ("/?days=abc", "days must be a whole number"),
        ("/actor", "which actor?"),
        ("/queues?hours=1000", "hours must be one of"),
        ("/confidence?by=%3Cb%3E", "by must be one of actor, model, queue; got &#39;&lt;b&gt;&#39;"),
        ("/now?window=2h", "window must be one of 1h, 6h, 24h, 72h; got &#39;2h&#39;"),
        ("/now.json?percentile=p1", "percentile must be one of p50, p95, p99"),
    ]:
        response = client.get(page)
        assert response.status_code == 400, page
        assert message in response.get_data(as_text=True), page


def test_the_dashboard_is_read_only(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    response = client_for(sqlite_engine).post("/")
    assert response.status_code == 405


def test_every_response_carries_a_strict_content_security_policy(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    client = client_for(sqlite_engine)
    for page in ["/", "/static/dashboard.js", "/nowhere"]:
        headers = client.get(page).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_chart_library_and_its_licence_ship_in_the_package(sqlite_engine: Engine) -> None:
    client = client_for(sqlite_engine)
    script = client.get("/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200
    assert b"uPlot" in script.get_data()
    assert b"MIT License" in client.get("/static/vendor/uplot/LICENSE").get_data()
    assert client.get("/static/../app.py").status_code == 404


def test_a_bearer_token_is_required_when_set(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    client = client_for(sqlite_engine, bearer_token="s3cret-token")
    denied = client.get("/")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_basic_auth_is_required_when_set(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    client = client_for(sqlite_engine, basic_auth=("ops", "pa:ss"))

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    denied = client.get("/static/dashboard.js")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"].lower().startswith("basic")
    assert client.get("/", headers=basic("ops", "wrong")).status_code == 401
    assert client.get("/", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/", headers=basic("ops", "pa:ss")).status_code == 200


def test_mounted_under_a_prefix_its_links_keep_the_prefix(sqlite_engine: Engine, fleet: FleetHistory) -> None:
    def host_app(environ: dict[str, object], start_response: object) -> Response:
        return Response("the host application")  # pragma: no cover

    dashboard = DashboardApp(DashboardData(sqlite_engine, clock=lambda: NOW))
    app = DispatcherMiddleware(host_app, {"/ops/metrics": dashboard})
    response = Client(app).get("/ops/metrics/?days=7")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'href="/ops/metrics/static/dashboard.css"' in html
    assert 'href="/ops/metrics/actor?' in html
    assert Client(app).get("/ops/metrics/static/dashboard.js").status_code == 200


@pytest.mark.postgres
def test_create_app_opens_read_only_connections_on_postgresql(postgres_engine: Engine, postgres_url: URL) -> None:
    app = create_app(postgres_url)
    with app.data.engine.connect() as connection, pytest.raises(Exception, match="read-only transaction"):
        connection.execute(text("CREATE TABLE not_allowed (i integer)"))
    assert Client(app).get("/?days=7").status_code == 200


@pytest.mark.slow
def test_the_wheel_carries_the_templates_and_the_chart_library(tmp_path: Path) -> None:
    repo = Path(__file__).parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(repo)],
        check=True,
    )
    [wheel] = tmp_path.glob("dramatiq_opmetrics-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in [
        "dramatiq_opmetrics/dashboard/templates/overview.html",
        "dramatiq_opmetrics/dashboard/static/dashboard.js",
        "dramatiq_opmetrics/dashboard/static/vendor/uplot/uPlot.iife.min.js",
        "dramatiq_opmetrics/dashboard/static/vendor/uplot/uPlot.min.css",
        "dramatiq_opmetrics/dashboard/static/vendor/uplot/LICENSE",
    ]:
        assert name in names, name
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for requirement in ("jinja2", "werkzeug", "waitress"):
        assert re.search(rf"^Requires-Dist: {requirement}\S*; extra == .dashboard.$", text, re.M), requirement
        assert not re.search(rf"^Requires-Dist: {requirement}\S*$", text, re.M), f"{requirement} is not optional"
