"""Delivery of alert notifications: through Apprise, or to a Prometheus Alertmanager (its v2 API).

A notifier of a rule file is a list of *targets*; :func:`send` delivers one :class:`Notification` to one
target, or raises :class:`DeliveryError`. It keeps no state and does not retry: the evaluator's outbox
decides when to try again, so a failure is recorded and retried with backoff instead of being lost in
here. :func:`check_target` tells the rule loader whether a target can be used at all, without sending.

**Targets.** A target is one of:

- an `Apprise <https://github.com/caronc/apprise>`_ URL: ``mailto://``, ``json://host:port/path``,
  ``slack://...``, ``msteams://...``, ``pagerduty://...``, ``tgram://...`` and the hundred other services
  Apprise speaks. Apprise is used because these protocols (SMTP with its TLS modes, each chat service's API
  and its quirks) are a library's work, kept up to date by people who follow those services; writing our
  own SMTP and webhook clients would be code to keep and would still reach a handful of them;
- ``alertmanager+http://host:port[/path]`` or ``alertmanager+https://[user:password@]host:port[/path]``: a
  Prometheus Alertmanager, for teams that already route alerts through one (its grouping, inhibition,
  silences and receivers then apply). The alert is posted to ``<path>/api/v2/alerts``; a user and password
  are sent as HTTP basic authentication. Apprise has no Alertmanager *client* (only a receiver), and this
  is one POST of a documented JSON document, so it is done here with the standard library.

**The Apprise message.** The title is ``[FIRING] rule (severity) labels: value above threshold`` (or
``RESOLVED``, ``REMINDER``, ``TEST``); the body is the rule's rendered summary, then one line each for the
rule, event, severity, labels, value, threshold and comparison, since, and the dashboard link when a
dashboard URL is configured (:func:`message_title`, :func:`message_body`). The event gives Apprise's
notification type, which services show as a colour or an icon: a firing alert or reminder is ``failure``
for a ``critical`` rule and ``warning`` otherwise, a resolved one ``success``, a test ``info``.

**The Alertmanager alert.** A list of one alert (:func:`alertmanager_alert`): labels ``alertname`` (the rule),
``severity`` and the group's labels (names made valid for Alertmanager: other characters than letters, digits
and ``_`` become ``_``; a group label called ``alertname`` or ``severity`` becomes ``group_alertname``...);
annotations ``summary``, ``value``, ``threshold`` (``above 0.05``) and ``dashboard``; ``startsAt`` the alert's
``since``; ``endsAt`` the notification's ``valid_until`` for a firing alert or reminder (left out when None:
Alertmanager then resolves it by itself after its ``resolve_timeout``) and ``at`` for a resolved one, which
makes Alertmanager resolve it (as Prometheus does, this relies on the clocks agreeing: an end still in
Alertmanager's future counts as a firing alert's); ``generatorURL`` the dashboard link (when it is an
``http(s)`` URL, which Alertmanager requires). Alertmanager identifies an alert by its labels, so repeated
posts of a firing alert refresh the same alert, which is how reminders keep it alive.

**Bounded and synchronous.** :func:`send` returns or raises within about ``timeout_s`` for each network
wait: the Alertmanager POST has ``timeout_s`` as its socket timeout; an Apprise service is instantiated for
the one call with its connect and read timeouts (``socket_connect_timeout``, ``socket_read_timeout``, the
``cto``/``rto`` URL parameters) set to ``timeout_s``, and its ``notify`` runs in the calling thread (no
Apprise thread pool, no Apprise retries, no persistent storage: the asset keeps it in memory). Apprise
reports a failure by returning False and logging why; the warnings it logs on the calling thread during the
call are captured (a handler on the ``apprise`` logger that keeps only this thread's records, removed after
the call) and become the :class:`DeliveryError`'s reason. An error names its target as :func:`masked_target`
shows it: without its password, and an Apprise URL without its query and with its tokens cut short.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import apprise

from .report import format_instant

Event = Literal["firing", "resolved", "reminder", "test"]

#: Seconds :func:`send` waits for each connection and each answer of a target.
DEFAULT_SEND_TIMEOUT_S = 10.0
#: The longest ``timeout_s`` :func:`send` takes, in seconds.
MAX_SEND_TIMEOUT_S = 3600.0
#: The URL schemes of a Prometheus Alertmanager target (``alertmanager+https://host:port``).
ALERTMANAGER_SCHEMES = ("alertmanager+http", "alertmanager+https")
#: Where an Alertmanager takes alerts, below the target's path.
ALERTMANAGER_ALERTS_PATH = "/api/v2/alerts"
#: How much of an error answer's body a :class:`DeliveryError` quotes, in characters.
ERROR_BODY_EXCERPT_CHARS = 200
#: What replaces a password in a target shown in an error or a log line.
PASSWORD_MASK = "***"

_LABEL_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_URL_IN_TEXT = re.compile(r"\S+://\S*")


def group_key(labels: Mapping[str, str]) -> str:
    """The stored key of an alert's group: ``name=value`` pairs sorted by name, comma separated (``""``: no
    labels)."""
    return ",".join(f"{name}={value}" for name, value in sorted(labels.items()))


@dataclass(frozen=True)
class Notification:
    """One message about one alert (a rule and a group of labels)."""

    #: The rule's name.
    rule: str
    #: The group's labels (the rule's ``group_by`` values); empty for an ungrouped rule.
    group: Mapping[str, str]
    event: Event
    severity: str
    #: The rule's summary template, rendered.
    summary: str
    #: The last value computed; None when the window had no data.
    value: float | None
    threshold: float | None
    comparison: Literal["above", "below"] | None
    #: When the current state began (firing since, or resolved at); timezone-aware.
    since: dt.datetime
    #: When this notification was made; timezone-aware.
    at: dt.datetime
    #: A firing alert's end if no newer notification arrives (Alertmanager's ``endsAt``); None otherwise.
    valid_until: dt.datetime | None = None
    #: A link to the dashboard page of the alert, or None when no dashboard URL is configured.
    dashboard_url: str | None = None

    @property
    def key(self) -> str:
        """The alert's stable identity: the rule and its group's labels."""
        return f"{self.rule}{{{group_key(self.group)}}}"


#: The rule name of the notification ``dramatiq-opmetrics alerts test`` sends (Alertmanager's ``alertname``).
TEST_RULE = "dramatiq-opmetrics-test"
#: How long Alertmanager keeps a test alert before it ends by itself.
TEST_ALERT_DURATION = dt.timedelta(minutes=5)


def make_test_notification(
    notifier: str, *, at: dt.datetime | None = None, dashboard_url: str | None = None
) -> Notification:
    """The notification ``dramatiq-opmetrics alerts test NOTIFIER`` sends: event ``test``, severity ``info``,
    rule :data:`TEST_RULE`, the label ``notifier``; Alertmanager ends it after :data:`TEST_ALERT_DURATION`.

    Parameters:
      notifier(str): the notifier's name, in the message and its labels.
      at(datetime | None): when it is made (timezone-aware); default now.
      dashboard_url(str | None): the dashboard's URL, linked when given.
    """
    moment = at or dt.datetime.now(dt.UTC)
    return Notification(
        rule=TEST_RULE,
        group={"notifier": notifier},
        event="test",
        severity="info",
        summary=f'A test notification from dramatiq-opmetrics to the notifier "{notifier}": its delivery works.',
        value=None,
        threshold=None,
        comparison=None,
        since=moment,
        at=moment,
        valid_until=moment + TEST_ALERT_DURATION,
        dashboard_url=dashboard_url,
    )


class DeliveryError(Exception):
    """A target did not accept a notification; the message says which target and why."""


def is_alertmanager_target(target: str) -> bool:
    """Whether ``target`` is meant for a Prometheus Alertmanager (its scheme begins with ``alertmanager``)
    rather than an Apprise URL."""
    return target.split("://", 1)[0].lower().startswith("alertmanager")


def masked_target(target: str) -> str:
    """How errors, logs and the command line name ``target`` without its secrets.

    An Alertmanager target is shown with its password, if any, replaced by ``***``. An Apprise URL is shown
    in Apprise's own privacy form without its query: passwords ``****``, tokens cut to their first and last
    characters (``slack://T...2/A...D/T...Q/%23ops/``, ``json://127.0.0.1:8080/hook``,
    ``mailto://user:****@smtp.example.com/ops%40example.com``); one Apprise cannot load is shown by its scheme
    only (``"foo://..."``).
    """
    if is_alertmanager_target(target):
        return _masked_password(target)
    with _apprise_warnings():  # a URL Apprise cannot load is named by its scheme; its warnings are no news
        service = _apprise_service(target, DEFAULT_SEND_TIMEOUT_S)
    return _apprise_name(service, target)


def _apprise_name(service: Any, target: str) -> str:
    """:func:`masked_target` of an Apprise ``target`` whose service is ``service`` (None: not loadable)."""
    if service is not None:
        with contextlib.suppress(Exception):  # a plugin's bug in url() must not hide the real error
            return str(service.url(privacy=True)).split("?", 1)[0]
    return f"{target.partition('://')[0]}://..."


def _masked_password(target: str) -> str:
    """``target`` with the password of its ``user:password@`` part, if any, replaced by ``***``."""
    scheme, separator, rest = target.partition("://")
    if not separator:
        return target
    authority_end = len(rest)
    for delimiter in "/?#":
        position = rest.find(delimiter)
        if position != -1:
            authority_end = min(authority_end, position)
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return target
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{PASSWORD_MASK}@{host}{tail}"


def check_target(target: str) -> str | None:
    """None if ``target`` can be used (a well-formed Alertmanager target, or an URL Apprise can load), else
    one line saying why not, for the rule loader: ``bad Apprise URL "foo://...": Unparseable URL``. The
    line shows the target's scheme only (the rest of a URL often holds a password or a token). Sends
    nothing."""
    if not isinstance(target, str) or not target.strip():
        return "empty target: write an Apprise URL (mailto://..., json://...) or alertmanager+http://host:port"
    scheme, separator, _ = target.partition("://")
    if not separator or not scheme:
        return 'not a URL (no "scheme://"): write an Apprise URL (mailto://..., json://...) or alertmanager+http://host:port'
    shown = json.dumps(f"{scheme}://...", ensure_ascii=False)
    if is_alertmanager_target(target):
        try:
            _alertmanager_endpoint(target)
        except ValueError as error:
            return f"bad Alertmanager target {shown}: {error}"
        return None
    with _apprise_warnings() as warnings:
        service = _apprise_service(target, DEFAULT_SEND_TIMEOUT_S)
    if service is None:
        # Apprise's warnings repeat the URL (whole, or shortened): left out, it may hold a secret.
        reasons = (
            " ".join(_URL_IN_TEXT.sub("", _mask_in(warning, target)).split()).strip(" :.") for warning in warnings
        )
        reason = "; ".join(reason for reason in reasons if reason)
        return f"bad Apprise URL {shown}: {reason or 'Apprise cannot load it'}"
    return None


def send(target: str, notification: Notification, *, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> None:
    """Deliver ``notification`` to ``target``, or raise :class:`DeliveryError`.

    Parameters:
      target(str): an Apprise URL or ``alertmanager+http(s)://host:port[/path]`` (see the module's
        documentation).
      notification(Notification): what to say.
      timeout_s(float): seconds to wait for each connection and each answer, more than 0 and at most
        :data:`MAX_SEND_TIMEOUT_S` (3600); default :data:`DEFAULT_SEND_TIMEOUT_S` (10).

    Raises:
      ValueError: ``timeout_s`` is out of range (nothing is sent).
      DeliveryError: the target is unusable, unreachable, or refused the notification; the message names
        the target (password masked) and the reason.
    """
    check_timeout_s(timeout_s)
    if is_alertmanager_target(target):
        _send_to_alertmanager(target, notification, timeout_s)
    else:
        _send_with_apprise(target, notification, timeout_s)


def check_timeout_s(timeout_s: float) -> float:
    """``timeout_s`` if :func:`send` takes it (more than 0, at most :data:`MAX_SEND_TIMEOUT_S`), else
    ValueError."""
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_SEND_TIMEOUT_S:
        raise ValueError(f"timeout_s must be more than 0 and at most {MAX_SEND_TIMEOUT_S:g} seconds, got {timeout_s!r}")
    return float(timeout_s)


def format_value(value: float | None) -> str:
    """A value as notifications show it: six significant digits, or ``no data``."""
    return "no data" if value is None else f"{value:.6g}"


def format_labels(labels: Mapping[str, str]) -> str:
    """Labels as notifications show them: ``actor=send_email, queue=crm``, or ``(all)`` for none."""
    return ", ".join(f"{name}={value}" for name, value in sorted(labels.items())) or "(all)"


def format_threshold(notification: Notification) -> str:
    """The condition as notifications show it (``above 0.05``), or an empty string for none."""
    if notification.threshold is None or notification.comparison is None:
        return ""
    return f"{notification.comparison} {format_value(notification.threshold)}"


def _format_time(moment: dt.datetime) -> str:
    return f"{format_instant(moment)} UTC"


def message_title(notification: Notification) -> str:
    """The title (an email's subject) of a notification sent through Apprise."""
    title = f"[{notification.event.upper()}] {notification.rule} ({notification.severity})"
    if notification.group:
        title += f" {format_labels(notification.group)}"
    if notification.value is None and not format_threshold(notification):
        return title
    return f"{title}: {format_value(notification.value)} {format_threshold(notification)}".rstrip()


def message_body(notification: Notification) -> str:
    """The plain-text body of a notification sent through Apprise."""
    lines = [
        notification.summary,
        "",
        f"Rule: {notification.rule}",
        f"Event: {notification.event.upper()}",
        f"Severity: {notification.severity}",
        f"Labels: {format_labels(notification.group)}",
        f"Value: {format_value(notification.value)}",
    ]
    if format_threshold(notification):
        lines.append(f"Threshold: {format_threshold(notification)}")
    since = "Resolved at" if notification.event == "resolved" else "Since"
    lines.append(f"{since}: {_format_time(notification.since)}")
    if notification.dashboard_url:
        lines.append(f"Dashboard: {notification.dashboard_url}")
    return "\n".join(lines)


def notify_type(notification: Notification) -> apprise.NotifyType:
    """The Apprise notification type of ``notification`` (a colour or an icon on most services)."""
    if notification.event == "resolved":
        return apprise.NotifyType.SUCCESS
    if notification.event == "test":
        return apprise.NotifyType.INFO
    return apprise.NotifyType.FAILURE if notification.severity == "critical" else apprise.NotifyType.WARNING


class _ThreadRecords(logging.Handler):
    """Keeps the messages of the log records one thread emits."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


#: Guards the Apprise loggers' settings while reasons are captured; how many captures are open.
_CAPTURE_LOCK = threading.Lock()
_open_captures = 0
#: What a capture changed on the Apprise loggers, restored when the last open capture ends.
_changed_loggers: list[tuple[logging.Logger, bool, int, bool]] = []


@contextlib.contextmanager
def _apprise_warnings() -> Iterator[list[str]]:
    """The warnings Apprise logs on this thread inside the block (not those of other threads).

    An application's logging set-up may have silenced Apprise (``logging.config.fileConfig`` and
    ``dictConfig`` disable the loggers that exist by default, and a level above WARNING drops its warnings
    before any handler), which would leave a failed delivery without its reason. While a capture is open,
    such loggers are turned back on but kept from propagating, so their records reach the capture and still
    none of the application's handlers; their settings are restored when the last capture ends."""
    global _open_captures
    handler = _ThreadRecords()
    apprise_logger = logging.getLogger("apprise")
    with _CAPTURE_LOCK:
        if _open_captures == 0:
            _unsilence_apprise(apprise_logger)
        _open_captures += 1
        apprise_logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        with _CAPTURE_LOCK:
            apprise_logger.removeHandler(handler)
            _open_captures -= 1
            if _open_captures == 0:
                for logger, disabled, level, propagate in reversed(_changed_loggers):
                    logger.disabled, logger.level, logger.propagate = disabled, level, propagate
                _changed_loggers.clear()


def _unsilence_apprise(apprise_logger: logging.Logger) -> None:
    """Let the warnings of Apprise's loggers reach ``apprise_logger``'s handlers (see :func:`_apprise_warnings`)."""
    silenced = apprise_logger.disabled or apprise_logger.getEffectiveLevel() > logging.WARNING
    children = [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("apprise.") and isinstance(logger, logging.Logger) and logger.disabled
    ]
    if silenced:
        _changed_loggers.append(
            (apprise_logger, apprise_logger.disabled, apprise_logger.level, apprise_logger.propagate)
        )
        apprise_logger.disabled, apprise_logger.propagate = False, False
        if apprise_logger.getEffectiveLevel() > logging.WARNING:
            apprise_logger.setLevel(logging.WARNING)
    for child in children:
        _changed_loggers.append((child, child.disabled, child.level, child.propagate))
        child.disabled = False


def _apprise_service(target: str, timeout_s: float) -> Any:
    """The Apprise service (plugin) for ``target``, set up for one bounded synchronous call; None if Apprise
    cannot use the URL (it logs why)."""
    asset = apprise.AppriseAsset(async_mode=False)
    service = apprise.Apprise.instantiate(target, asset=asset, suppress_exceptions=True)
    if service is None:
        return None
    service.socket_connect_timeout = timeout_s
    service.socket_read_timeout = timeout_s
    return service


def _mask_in(text: str, target: str) -> str:
    """``text`` with the password of ``target``, should it appear, masked."""
    if _masked_password(target) == target:
        return text
    password = target.partition("://")[2].split("@")[0].split(":", 1)[1]
    return text.replace(password, PASSWORD_MASK) if password else text


def _send_with_apprise(target: str, notification: Notification, timeout_s: float) -> None:
    with _apprise_warnings() as warnings:
        service = _apprise_service(target, timeout_s)
        name = _apprise_name(service, target)
        if service is None:
            reason = "; ".join(warnings) or "Apprise has no service for this URL"
            raise DeliveryError(f"{name}: not a usable Apprise URL: {_mask_in(reason, target)}")
        try:
            delivered = service.notify(
                body=message_body(notification),
                title=message_title(notification),
                notify_type=notify_type(notification),
                body_format=apprise.NotifyFormat.TEXT,
            )
        except Exception as error:  # a plugin's own bug must not look like success, nor escape as another type
            raise DeliveryError(f"{name}: Apprise failed: {_mask_in(repr(error), target)}") from error
    if not delivered:
        reason = "; ".join(warnings) or "Apprise reported a failure without a reason"
        raise DeliveryError(f"{name}: not delivered: {_mask_in(reason, target)}")


def _alertmanager_endpoint(target: str) -> tuple[str, str | None]:
    """The alerts URL of an Alertmanager target, and its basic authorization header (or None)."""
    parts = urllib.parse.urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme not in ALERTMANAGER_SCHEMES:
        raise ValueError(f'unknown scheme "{parts.scheme}" (use {" or ".join(ALERTMANAGER_SCHEMES)})')
    if not parts.hostname:
        raise ValueError("an Alertmanager target needs a host: alertmanager+http://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("an Alertmanager target's port must be a number from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError("an Alertmanager target takes no query or fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") + ALERTMANAGER_ALERTS_PATH
    url = urllib.parse.urlunsplit((scheme.removeprefix("alertmanager+"), netloc, path, "", ""))
    authorization = None
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    return url, authorization


def alertmanager_label_name(name: str) -> str:
    """``name`` made a valid Alertmanager label name (``[a-zA-Z_][a-zA-Z0-9_]*``)."""
    valid = _LABEL_NAME_INVALID.sub("_", name) or "_"
    return f"_{valid}" if valid[0].isdigit() else valid


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _is_web_url(url: str) -> bool:
    """Whether Alertmanager takes ``url`` as a ``generatorURL`` (it refuses the alert otherwise)."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def alertmanager_alert(notification: Notification) -> dict[str, Any]:
    """The Alertmanager v2 alert for ``notification`` (see the module's documentation)."""
    labels = {"alertname": notification.rule, "severity": notification.severity}
    for name, value in sorted(notification.group.items()):
        if value == "":  # an empty label is no label, for Prometheus and Alertmanager
            continue
        label = alertmanager_label_name(name)
        if label in labels:
            label = f"group_{label}"
        labels[label] = value
    annotations = {"summary": notification.summary, "value": format_value(notification.value)}
    if format_threshold(notification):
        annotations["threshold"] = format_threshold(notification)
    if notification.dashboard_url:
        annotations["dashboard"] = notification.dashboard_url
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": _rfc3339(notification.since)}
    ends_at = notification.at if notification.event == "resolved" else notification.valid_until
    if ends_at is not None:
        alert["endsAt"] = _rfc3339(ends_at)
    if notification.dashboard_url and _is_web_url(notification.dashboard_url):
        alert["generatorURL"] = notification.dashboard_url
    return alert


def _send_to_alertmanager(target: str, notification: Notification, timeout_s: float) -> None:
    try:
        url, authorization = _alertmanager_endpoint(target)
    except ValueError as error:
        raise DeliveryError(f"{masked_target(target)}: {error}") from None
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(
        url, data=json.dumps([alertmanager_alert(notification)]).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            answer.read()
    except urllib.error.HTTPError as error:
        excerpt = error.read(ERROR_BODY_EXCERPT_CHARS * 4).decode(errors="replace")[:ERROR_BODY_EXCERPT_CHARS]
        raise DeliveryError(
            f"{masked_target(target)}: Alertmanager answered {error.code} {error.reason}: {excerpt.strip()}"
        ) from None
    except urllib.error.URLError as error:
        reason = f"no answer within {timeout_s:g} s" if isinstance(error.reason, TimeoutError) else error.reason
        raise DeliveryError(f"{masked_target(target)}: Alertmanager unreachable: {reason}") from None
    except TimeoutError:
        raise DeliveryError(f"{masked_target(target)}: no answer from Alertmanager within {timeout_s:g} s") from None
    except OSError as error:
        raise DeliveryError(f"{masked_target(target)}: Alertmanager unreachable: {error}") from None
