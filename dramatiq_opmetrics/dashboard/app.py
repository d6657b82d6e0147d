"""The dashboard as a WSGI application: routing, authentication, HTML rendering and static files.

The pages are rendered on the server with Jinja2 (autoescaping on, so a label such as ``<script>`` shows
as text); each page's chart data travels as JSON in a non-executable ``<script type="application/json">``
element and is drawn by the vendored uPlot chart library. The Now page fetches its data again as JSON
(``/now.json``) every few seconds and redraws, putting labels in the page as text only, the banner of firing
alerts included (every page renders that banner on the server; the Alerts page has its data as JSON at
``/alerts.json``). A strict Content-Security-Policy allows scripts from the dashboard's own static folder
only.

What each page shows is computed by its module in :mod:`~dramatiq_opmetrics.dashboard.pages`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from werkzeug.exceptions import BadRequest, HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.utils import send_from_directory
from werkzeug.wrappers import Request, Response

from ..alert_rules import RuleSet, load_rules
from ..database import make_engine
from ..http_serving import Credentials
from ..middleware import ALERT_RULES_ENV_VAR
from .charts import DEFAULT_RANGE_DAYS, RANGE_DAYS
from .data import DashboardData
from .pages import actor, alerts, confidence, now, overview, queues, tokens

#: Headers sent with every response: no third-party scripts, no framing, no sniffing, no referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: What a number that is not known shows as (an en dash).
DASH = "\u2013"

_STATIC = resources.files(__package__) / "static"


class DashboardApp:
    """The read-only dashboard, a WSGI application; serve it or mount it in your own web application.

    Create it with :func:`create_app`. Views: ``/`` (overview), ``/actor`` (one actor), ``/queues``,
    ``/tokens`` and ``/confidence``, each taking ``days`` (7, 30, 90 or 365; today is always included); and
    ``/now``, the last hours minute by minute, taking ``window`` (1h, 6h, 24h or 72h), with its data as JSON
    at ``/now.json``; ``/alerts``, the alerts' states, silences, undelivered notifications and history,
    taking ``rule``, with its data as JSON at ``/alerts.json``. Every page shows a banner of the firing
    alerts. ``/metrics`` serves the fleet's metrics for Prometheus, as the exporter does
    (:mod:`~dramatiq_opmetrics.exporter`), behind the same authentication.

    Parameters:
      data(DashboardData): what the views read (the database, the clock, results kept between requests).
      bearer_token(str | None): when set, requests must send ``Authorization: Bearer <token>``.
      basic_auth(tuple[str, str] | None): when set, requests may instead send these basic-auth credentials
        (user name, password); browsers ask for them.
    """

    def __init__(
        self,
        data: DashboardData,
        *,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        self.data = data
        #: What requests must send (:class:`~dramatiq_opmetrics.http_serving.Credentials`).
        self.credentials = Credentials(bearer_token, basic_auth)
        self.bearer_token = self.credentials.bearer_token
        self.basic_auth = self.credentials.basic_auth
        self.templates = Environment(
            loader=PackageLoader(__package__ or "dramatiq_opmetrics.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(
            ms=format_ms, percent=format_percent, count=format_count, duration=format_duration
        )
        self._metrics_collector: Any = None
        self.url_map = Map(
            [
                Rule("/", endpoint="overview"),
                Rule("/actor", endpoint="actor"),
                Rule("/queues", endpoint="queues"),
                Rule("/tokens", endpoint="tokens"),
                Rule("/confidence", endpoint="confidence"),
                Rule("/now", endpoint="now"),
                Rule("/now.json", endpoint="now_json"),
                Rule("/alerts", endpoint="alerts"),
                Rule("/alerts.json", endpoint="alerts_json"),
                Rule("/metrics", endpoint="metrics"),
                Rule("/static/<path:filename>", endpoint="static"),
            ],
            strict_slashes=False,
        )

    @property
    def requires_auth(self) -> bool:
        """Whether requests must authenticate (a bearer token or basic-auth credentials are set)."""
        return self.credentials.requires_auth

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            self._authenticate(request)
            endpoint, arguments = self.url_map.bind_to_environ(environ).match()
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(valid_methods=["GET", "HEAD"], description="the dashboard is read-only")
            response = getattr(self, f"_{endpoint}")(request, **arguments)
        except HTTPException as error:
            response = self._error_page(request, error)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response(environ, start_response)  # type: ignore[no-any-return]

    # -- authentication -------------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        self.credentials.authenticate(request)

    # -- views ----------------------------------------------------------------------------------------------

    def _overview(self, request: Request) -> Response:
        sort = request.args.get("sort", overview.DEFAULT_OVERVIEW_SORT)
        descending = request.args.get("order", "desc") != "asc"
        view = self._call(
            overview.view,
            self.data,
            _days(request),
            queue=request.args.get("queue") or None,
            sort=sort,
            descending=descending,
        )
        charts = {"x": view["x"], "rows": [row["trend"] for row in view["rows"]]}
        return self._page(request, "overview.html", "Overview", view, charts)

    def _actor(self, request: Request) -> Response:
        name_of_actor = request.args.get("actor")
        if not name_of_actor:
            raise BadRequest("which actor? pass ?actor=NAME")
        queue_name = request.args.get("queue") or None
        view = self._call(actor.view, self.data, name_of_actor, queue_name, _days(request))
        return self._page(request, "actor.html", f"Actor {name_of_actor}", view, view["charts"])

    def _queues(self, request: Request) -> Response:
        hours = _int_arg(request, "hours", queues.DEFAULT_DEPTH_WINDOW_HOURS)
        view = self._call(queues.view, self.data, _days(request), hours, queue=request.args.get("queue") or None)
        view["hour_choices"] = queues.DEPTH_WINDOW_HOURS
        return self._page(request, "queues.html", "Queues", view, view["charts"])

    def _tokens(self, request: Request) -> Response:
        view = self._call(tokens.view, self.data, _days(request), model=request.args.get("model") or None)
        return self._page(request, "tokens.html", "Token usage", view, view["charts"])

    def _confidence(self, request: Request) -> Response:
        by = request.args.get("by", confidence.CONFIDENCE_GROUPS[0])
        value = request.args.get("value") or None
        view = self._call(confidence.view, self.data, _days(request), by=by, value=value)
        return self._page(request, "confidence.html", "Confidence", view, view["charts"])

    def _now(self, request: Request) -> Response:
        view = self._now_view(request)
        return self._page(request, "now.html", "Now", view, view)

    def _now_json(self, request: Request) -> Response:
        return _json_response(self._now_view(request))

    def _now_view(self, request: Request) -> dict[str, Any]:
        view = self._call(
            now.view,
            self.data,
            request.args.get("window") or now.DEFAULT_NOW_WINDOW,
            actor=request.args.get("actor") or None,
            queue=request.args.get("queue") or None,
            percentile=request.args.get("percentile") or now.DEFAULT_NOW_PERCENTILE,
        )
        view["banner"] = alerts.banner(self.data)  # redrawn with every refresh of the page
        return view

    def _alerts(self, request: Request) -> Response:
        view = self._call(alerts.view, self.data, rule=request.args.get("rule") or None)
        title = f"Alerts of {view['rule']}" if view["rule"] else "Alerts"
        return self._page(request, "alerts.html", title, view, {})

    def _alerts_json(self, request: Request) -> Response:
        return _json_response(self._call(alerts.view, self.data, rule=request.args.get("rule") or None))

    def _metrics(self, request: Request) -> Response:
        # The exporter's metrics (prometheus_client is imported only when they are asked for).
        from ..exporter import FleetCollector, metrics_response

        if self._metrics_collector is None:
            self._metrics_collector = FleetCollector(
                self.data.engine, clock=self.data.clock, sampling_interval_s=self.data.sampling_interval_s
            )
        return metrics_response(self._metrics_collector, request)

    def _static(self, request: Request, filename: str) -> Response:
        directory = str(_STATIC)
        response = send_from_directory(directory, filename, request.environ, max_age=3600)
        return response

    # -- rendering ------------------------------------------------------------------------------------------

    @staticmethod
    def _call(view: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return view(*args, **kwargs)
        except ValueError as error:
            raise BadRequest(str(error)) from None

    def _page(
        self, request: Request, template: str, title: str, view: dict[str, Any], charts: dict[str, Any]
    ) -> Response:
        def url(path: str, **changes: Any) -> str:
            """A link to ``path`` in this app keeping the current query, with ``changes`` applied."""
            arguments = {key: value for key, value in request.args.items() if key not in changes}
            arguments.update({key: value for key, value in changes.items() if value not in (None, "")})
            return link(path, **arguments)

        def link(path: str, **arguments: Any) -> str:
            """A link to ``path`` in this app with just ``arguments`` (those that are set)."""
            query = urlencode({key: value for key, value in arguments.items() if value not in (None, "")})
            return f"{request.script_root}{path}" + (f"?{query}" if query else "")

        html = self.templates.get_template(template).render(
            title=title,
            view=view,
            charts=charts,
            url=url,
            link=link,
            path=request.path,
            static=f"{request.script_root}/static",
            ranges=RANGE_DAYS,
            sorts=overview.OVERVIEW_SORTS,
            now=self.data.clock(),
            banner=view["banner"] if "banner" in view else alerts.banner(self.data),
        )
        response = Response(html, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response

    def _error_page(self, request: Request, error: HTTPException) -> Response:
        response = error.get_response(request.environ)
        if isinstance(error, (BadRequest, NotFound)):
            html = self.templates.get_template("error.html").render(
                title=error.name,
                message=error.description,
                static=f"{request.script_root}/static",
                link=lambda path, **_: f"{request.script_root}{path}",
                path=request.path,
                now=self.data.clock(),
                banner=None,  # an error page reads nothing
            )
            response.set_data(html)
        return response


def create_app(
    database_url: str | URL | None = None,
    *,
    engine: Engine | None = None,
    bearer_token: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    alert_rules: str | os.PathLike[str] | RuleSet | None = None,
) -> DashboardApp:
    """Create the dashboard's WSGI application on the metrics database.

    Parameters:
      database_url(str | URL | None): the metrics database; default ``$OPMETRICS_DATABASE_URL``, then
        ``$DATABASE_URL``. Ignored when ``engine`` is given.
      engine(Engine | None): an engine to use instead (for example your application's own).
      bearer_token(str | None): require ``Authorization: Bearer <token>``.
      basic_auth(tuple[str, str] | None): require (or also accept) these basic-auth credentials.
      alert_rules(str | os.PathLike | RuleSet | None): the fleet's alert rule file (or its loaded rules), for
        the Alerts page's severities, thresholds and rules not evaluated yet; default
        ``$OPMETRICS_ALERT_RULES`` (as the workers read it), else none: the page shows what the database
        holds.

    Raises:
      RuleFileError: the rule file is not valid.
    """
    rules_path = alert_rules if alert_rules is not None else os.environ.get(ALERT_RULES_ENV_VAR) or None
    ruleset = rules_path if isinstance(rules_path, RuleSet) or rules_path is None else load_rules(rules_path)
    if engine is None:
        engine = make_engine(database_url)
        if engine.dialect.name == "postgresql":
            # Every connection of the dashboard's own engine is read-only, whatever a query tries.
            engine = engine.execution_options(postgresql_readonly=True)
    return DashboardApp(DashboardData(engine, alert_rules=ruleset), bearer_token=bearer_token, basic_auth=basic_auth)


def _json_response(view: dict[str, Any]) -> Response:
    response = Response(json.dumps(view, allow_nan=False), mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _int_arg(request: Request, name: str, default: int) -> int:
    text = request.args.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number; got {text!r}") from None


def _days(request: Request) -> int:
    return _int_arg(request, "days", DEFAULT_RANGE_DAYS)


def format_ms(value: float | None) -> str:
    """A duration in milliseconds, readable: ``850 ms``, ``12.4 s``; a dash when unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if value >= 10_000:
        return f"{value / 1000:,.0f} s"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def format_percent(value: float | None) -> str:
    """A fraction as a percentage: ``2.35 %``; a dash when unknown."""
    if value is None:
        return DASH
    return f"{value * 100:.2f} %" if value < 0.1 else f"{value * 100:.1f} %"


def format_duration(value_ms: float | None) -> str:
    """A long duration in milliseconds, readable: ``850 ms``, ``42 s``, ``12.5 min``, ``3.2 h``, ``4.1 d``."""
    if value_ms is None:
        return DASH
    for unit, size_ms in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if value_ms >= size_ms:
            return f"{value_ms / size_ms:,.1f} {unit}"
    return format_ms(value_ms)


def format_count(value: float | None) -> str:
    """A count with thousands separators; a dash when unknown."""
    if value is None:
        return DASH
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:,.1f}"
