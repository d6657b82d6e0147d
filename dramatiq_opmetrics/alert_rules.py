"""Alert rules: what to watch, when to fire, whom to tell (read from a TOML file).

This module holds the rule file's data model (:class:`Rule`, :class:`Notifier`, :class:`RuleSet`) and
:func:`load_rules`, which reads a file with ``tomllib`` and validates all of it before anything uses it:
every problem becomes one line of :class:`RuleFileError` naming the file, the rule (or notifier) and the
key, and nothing is returned unless the whole file is right. The evaluator
(:mod:`~dramatiq_opmetrics.alerts`) and the notifiers (:mod:`~dramatiq_opmetrics.notifiers`) read these
objects only; :func:`render_summary` renders a rule's summary template for them.

The file format (every key, its default and its unit) is documented in the README, section "Alert rules";
``examples/alerts.toml`` is a complete file. In short::

    [settings]                      # optional
    evaluation_interval = "1m"
    dashboard_url = "http://127.0.0.1:8000"

    [notifiers.ops]
    urls = ["mailto://alerts:secret@example.com", "json://127.0.0.1:8080/hook"]

    [[rules]]
    name = "crm-errors"
    metric = "error_rate"
    labels = { queue = "crm" }
    above = 0.05
    window = "10m"
    for = "5m"
    notify = ["ops"]

Design choices a reader may wonder about:

- Settings live in a ``[settings]`` table, not at the top level: in TOML a key written after a table
  header belongs to that table, so a top-level ``evaluation_interval`` placed below ``[notifiers.ops]``
  would silently become a notifier key.
- ``statistic`` is refused on the derived metrics (``error_rate``, ``throughput``, ``stalled``), which have
  one value each: a ``statistic = "p95"`` there is a misunderstanding worth telling, not ignoring.
- Windows are whole minutes, at least one: the recent tier the evaluator reads has one-minute buckets.
- Summary templates use ``str.format`` syntax but only the documented placeholders (:data:`SUMMARY_FIELDS`
  and ``{label.NAME}``), checked on load, so a typo is an error in ``alerts check``, not a broken message
  at three in the morning.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import os
import re
import string
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from .labels import make_label_set
from .metric_types import MetricType
from .notifiers import check_target
from .report import format_duration, format_percent
from .report import parse_duration as parse_duration  # the durations of rule files, also for callers

#: The derived metrics a rule may watch besides the metric types themselves.
DERIVED_METRICS = ("error_rate", "throughput", "stalled")
#: The statistics of a value metric a rule may compare.
STATISTICS = ("count", "sum", "avg", "min", "max", "p50", "p95", "p99")
#: The statistic a rule compares when it names none.
DEFAULT_STATISTIC = "avg"
#: The severities a rule may have, most severe first.
SEVERITIES = ("critical", "warning", "info")
#: The severity of a rule that names none.
DEFAULT_SEVERITY = "warning"
#: How often a firing alert is repeated to its notifiers (Alertmanager's default ``repeat_interval``).
DEFAULT_REPEAT_INTERVAL = dt.timedelta(hours=4)
#: What a rule does when its window has no data: ``ok`` (resolves), ``keep`` (stays as it is) or
#: ``alert`` (counts as the condition holding).
NO_DATA_BEHAVIOURS = ("ok", "keep", "alert")
#: The no-data behaviour of a rule that names none.
DEFAULT_NO_DATA: Literal["ok", "keep", "alert"] = "ok"
#: How often the fleet evaluates the rules.
DEFAULT_EVALUATION_INTERVAL = dt.timedelta(minutes=1)

#: Every metric a rule may watch: the derived metrics, then the metric types.
METRICS = DERIVED_METRICS + tuple(member.value for member in MetricType)
#: The metrics whose value is a fraction from 0 to 1, so their thresholds must be too.
FRACTION_METRICS = ("error_rate", "stalled")
#: The shortest window a rule may have (the recent tier has one-minute buckets; windows are whole minutes).
MIN_WINDOW = dt.timedelta(minutes=1)
#: The shortest and the longest evaluation interval of ``[settings]``.
MIN_EVALUATION_INTERVAL = dt.timedelta(seconds=1)
MAX_EVALUATION_INTERVAL = dt.timedelta(days=1)
#: The longest rule or notifier name, in characters.
MAX_NAME_LENGTH = 100
#: The placeholders of a summary template, besides ``{label.NAME}`` (one label's value).
SUMMARY_FIELDS = ("rule", "metric", "statistic", "value", "threshold", "comparison", "labels", "severity", "window")
#: The prefix of a summary placeholder naming one label: ``{label.queue}``.
LABEL_FIELD_PREFIX = "label."
#: What ``{value}`` renders as when the window had no data.
NO_DATA_TEXT = "no data"
#: What ``{label.NAME}`` renders as when the alert has no such label.
MISSING_LABEL_TEXT = "-"
#: What ``{labels}`` renders as when the rule has neither labels nor groups.
NO_LABELS_TEXT = "all"

#: The keys of the top level of a rule file.
TOP_LEVEL_KEYS = ("settings", "notifiers", "rules")
#: The keys of ``[settings]``.
SETTINGS_KEYS = ("evaluation_interval", "dashboard_url")
#: The keys of a ``[notifiers.NAME]`` table.
NOTIFIER_KEYS = ("urls",)
#: The keys of a ``[[rules]]`` table.
RULE_KEYS = (
    "name",
    "metric",
    "statistic",
    "labels",
    "group_by",
    "above",
    "below",
    "window",
    "for",
    "notify",
    "severity",
    "summary",
    "repeat_interval",
    "no_data",
)

NoData = Literal["ok", "keep", "alert"]


@dataclass(frozen=True)
class Notifier:
    """A named set of delivery targets: Apprise URLs, or ``alertmanager+http(s)://host:port``."""

    name: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Rule:
    """One alert rule of a rule file.

    ``metric`` is ``error_rate``, ``throughput`` (messages finished per second), ``stalled`` (1 when the
    queue was stalled in the window's last minute) or a metric type; ``statistic`` applies to metric types
    only. Exactly one of ``above`` and ``below`` is set.
    """

    name: str
    metric: str
    above: float | None
    below: float | None
    window: dt.timedelta
    for_: dt.timedelta
    notify: tuple[str, ...]
    statistic: str = DEFAULT_STATISTIC
    labels: Mapping[str, str] = field(default_factory=dict)
    group_by: tuple[str, ...] = ()
    severity: str = DEFAULT_SEVERITY
    summary: str = "{rule}: {metric} is {value} ({comparison} {threshold}) for {labels}"
    repeat_interval: dt.timedelta = DEFAULT_REPEAT_INTERVAL
    no_data: NoData = DEFAULT_NO_DATA

    @property
    def threshold(self) -> float:
        """The number the value is compared with."""
        value = self.above if self.above is not None else self.below
        assert value is not None
        return value

    @property
    def comparison(self) -> Literal["above", "below"]:
        """Whether the rule fires above or below its threshold."""
        return "above" if self.above is not None else "below"

    def breached(self, value: float) -> bool:
        """Whether ``value`` meets the rule's condition (strictly above, or strictly below)."""
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below


@dataclass(frozen=True)
class RuleSet:
    """A whole rule file: its rules, its notifiers and its settings."""

    rules: tuple[Rule, ...]
    notifiers: Mapping[str, Notifier]
    evaluation_interval: dt.timedelta = DEFAULT_EVALUATION_INTERVAL
    #: The dashboard's base URL (``http://host:port``), for links in notifications; None for no links.
    dashboard_url: str | None = None
    source: str = "<rules>"


class RuleFileError(ValueError):
    """A rule file that cannot be used: ``errors`` holds one line per problem, each naming file, rule, key."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate the rule file at ``path`` (TOML, see the README's "Alert rules").

    Parameters:
      path: the rule file; its name, as given, starts every error line.

    Raises:
      RuleFileError: one line per problem: a missing or unreadable file, a TOML syntax error (with its line
        and column), or each invalid value of the file (with its rule or notifier and key).
    """
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise RuleFileError([f"{source}: no such file"]) from None
    except IsADirectoryError:
        raise RuleFileError([f"{source}: is a directory, not a rule file"]) from None
    except OSError as error:
        raise RuleFileError([f"{source}: cannot read the file: {error.strerror or error}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RuleFileError([f"{source}: not UTF-8 text (line {line}, byte {error.start})"]) from None
    return parse_rules(text, source=source)


def parse_rules(document: str | Mapping[str, Any], *, source: str = "<rules>") -> RuleSet:
    """Validate a rule file given as its TOML text or as its tables (what ``tomllib`` returns).

    Parameters:
      document: the file's text, or its parsed tables.
      source: the name that starts every error line and becomes :attr:`RuleSet.source`.

    Raises:
      RuleFileError: one line per problem, as :func:`load_rules`.
    """
    if isinstance(document, str):
        try:
            document = tomllib.loads(document)
        except tomllib.TOMLDecodeError as error:
            raise RuleFileError([f"{source}: not valid TOML: {error}"]) from None
    checker = _Checker(source)
    rule_set = checker.rule_set(document)
    if checker.errors:
        raise RuleFileError(checker.errors)
    return rule_set


def render_summary(rule: Rule, value: float | None, labels: Mapping[str, str]) -> str:
    """The rule's summary template rendered for one alert.

    The placeholders are those of :data:`SUMMARY_FIELDS` and ``{label.NAME}``, in ``str.format`` syntax
    (``{{`` and ``}}`` for literal braces):

    - ``{rule}``, ``{metric}``, ``{statistic}``, ``{severity}``, ``{comparison}`` (``above`` or ``below``):
      the rule's own values; ``{window}``: its window (``10m``);
    - ``{value}``: the value computed over the window, ``no data`` when there was none; ``{threshold}``:
      the rule's threshold. Both are written as percentages for ``error_rate`` (``7.1%``), otherwise as
      whole numbers with thousands separators from 100 up (``1,204``) and with three significant digits
      below (``0.0712``, ``42.5``). A format spec (``{value:.2f}``) formats the raw number instead;
    - ``{labels}``: the rule's ``labels`` and the alert's group labels as ``actor=send, queue=crm``, or
      ``all`` when there are none; ``{label.NAME}``: one of them, ``-`` if the alert has no such label.
      ``NAME`` must be a key of the rule's ``labels`` or ``group_by``.

    Parameters:
      rule: the rule whose ``summary`` is rendered.
      value: the value over the window; None when the window had no data.
      labels: the alert's group labels (its ``group_by`` values); empty for an ungrouped rule.

    Raises:
      ValueError: a template with unbalanced braces, an unknown placeholder, a conversion (``!r``) or an
        invalid format spec. :func:`load_rules` refuses such templates, so a loaded rule never raises.
    """
    every_label = {**rule.labels, **labels}
    fields: dict[str, object] = {
        "rule": rule.name,
        "metric": rule.metric,
        "statistic": rule.statistic,
        "value": value,
        "threshold": rule.threshold,
        "comparison": rule.comparison,
        "labels": ", ".join(f"{name}={text}" for name, text in sorted(every_label.items())) or NO_LABELS_TEXT,
        "severity": rule.severity,
        "window": format_duration(rule.window),
    }
    known_labels = {*rule.labels, *rule.group_by, *labels}
    try:
        parsed = list(string.Formatter().parse(rule.summary))
    except ValueError as error:
        raise ValueError(f"{error}; write {{{{ and }}}} for literal braces") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        pieces.append(literal)
        if name is None:
            continue
        written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if conversion is not None:
            raise ValueError(f"{written}: conversions such as !r are not supported")
        label = name.removeprefix(LABEL_FIELD_PREFIX) if name.startswith(LABEL_FIELD_PREFIX) else None
        if name in fields:
            field_value = fields[name]
        elif label in known_labels:
            field_value = every_label.get(label, MISSING_LABEL_TEXT)
        elif label:
            raise ValueError(f'{written} names a label that is neither in "labels" nor in "group_by"')
        else:
            known = [*SUMMARY_FIELDS, *(LABEL_FIELD_PREFIX + known for known in sorted(known_labels))]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {{{close[0]}}}?)" if close else ""
            placeholders = ", ".join(f"{{{placeholder}}}" for placeholder in SUMMARY_FIELDS)
            raise ValueError(f"unknown placeholder {written}{hint}; known: {placeholders} and {{label.NAME}}")
        try:
            pieces.append(_formatted(rule.metric, name, field_value, spec or ""))
        except ValueError as error:
            raise ValueError(f"{written}: {error}") from None
    return "".join(pieces)


def _formatted(metric: str, name: str, value: object, spec: str) -> str:
    if name not in ("value", "threshold"):
        return format(str(value), spec)
    if value is None:
        return NO_DATA_TEXT
    assert isinstance(value, float | int)
    number = float(value)
    if spec:
        return format(number, spec)
    if metric == "error_rate":
        return format_percent(number)
    if number.is_integer() or abs(number) >= 100:
        return f"{number:,.0f}"
    return f"{number:.3g}"


class _Checker:
    """Validates the tables of one rule file, collecting every problem in :attr:`errors`.

    The methods that read one value always return a value of the right type (a stand-in when the value is
    invalid, after recording the error): a caller builds its object only if no error was added meanwhile.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def rule_set(self, document: Mapping[str, Any]) -> RuleSet:
        self.unknown_keys("", document, TOP_LEVEL_KEYS)
        settings = self.table("", document, "settings", "a table ([settings])")
        self.unknown_keys("settings", settings, SETTINGS_KEYS)
        evaluation_interval = self.duration(
            "settings",
            settings,
            "evaluation_interval",
            DEFAULT_EVALUATION_INTERVAL,
            MIN_EVALUATION_INTERVAL,
            MAX_EVALUATION_INTERVAL,
        )
        dashboard_url = self.dashboard_url(settings)
        notifier_tables = self.table("", document, "notifiers", "a table of notifiers ([notifiers.NAME])")
        notifiers = {}
        for name, table in notifier_tables.items():
            notifier = self.notifier(name, table)
            if notifier is not None:
                notifiers[name] = notifier
        rules = []
        first_index: dict[str, int] = {}
        for index, table in enumerate(self.rule_tables(document), start=1):
            rule = self.rule(index, table, notifier_names=list(notifier_tables))
            rule_name = table.get("name")
            if isinstance(rule_name, str) and not _name_problem(rule_name):
                if rule_name in first_index:
                    where = f"rule {_quoted(rule_name)}"
                    self.error(where, f'"name" is not unique: rule #{first_index[rule_name]} has it')
                    continue
                first_index[rule_name] = index
            if rule is not None:
                rules.append(rule)
        return RuleSet(
            rules=tuple(rules),
            notifiers=notifiers,
            evaluation_interval=evaluation_interval,
            dashboard_url=dashboard_url,
            source=self.source,
        )

    def rule_tables(self, document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        tables = document.get("rules", [])
        if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
            self.error("", f'"rules" must be an array of tables ([[rules]]), got {_shown(tables)}')
            return []
        return tables

    def notifier(self, name: str, table: object) -> Notifier | None:
        where = f"notifier {_quoted(name)}"
        before = len(self.errors)
        problem = _name_problem(name)
        if problem:
            self.error(where, f"the name {problem}")
        if not isinstance(table, dict):
            self.error(where, f'must be a table with "urls", got {_shown(table)}')
            return None
        self.unknown_keys(where, table, NOTIFIER_KEYS)
        urls = table.get("urls")
        if urls is None:
            self.error(where, '"urls" is required: an array of Apprise URLs or alertmanager+http://host:port')
        elif not isinstance(urls, list) or not urls or not all(isinstance(url, str) for url in urls):
            self.error(where, f'"urls" must be a non-empty array of strings, got {_shown(urls)}')
        else:
            for number, url in enumerate(urls, start=1):
                problem = check_target(url)
                if problem is not None:
                    self.error(where, f'"urls" item {number}: {" ".join(problem.split())}')
        if len(self.errors) > before:
            return None
        assert isinstance(urls, list)
        return Notifier(name=name, urls=tuple(urls))

    def rule(self, index: int, table: Mapping[str, Any], notifier_names: list[str]) -> Rule | None:
        before = len(self.errors)
        where = f"rule #{index}"
        name = table.get("name")
        if name is None:
            self.error(where, '"name" is required')
        elif not isinstance(name, str) or _name_problem(name):
            problem = _name_problem(name) if isinstance(name, str) else "must be a string"
            self.error(where, f'"name" {problem}, got {_shown(name)}')
        else:
            where = f"rule {_quoted(name)}"
        self.unknown_keys(where, table, RULE_KEYS)

        metric = self.choice(where, table, "metric", METRICS, None)
        statistic = self.choice(where, table, "statistic", STATISTICS, DEFAULT_STATISTIC)
        if "statistic" in table and metric in DERIVED_METRICS:
            self.error(where, f'"statistic" applies to metric types only; {metric} has one value per window')

        labels_before = len(self.errors)
        labels = self.labels(where, table)
        group_by = self.names(where, table, "group_by")
        try:
            make_label_set(dict.fromkeys(group_by, "value"))  # the same rules as the keys of recorded labels
        except ValueError as error:
            self.error(where, f'"group_by": {error}')
        labels_valid = len(self.errors) == labels_before

        above = self.number(where, table, "above")
        below = self.number(where, table, "below")
        if "above" in table and "below" in table:
            self.error(where, '"above" and "below" are both given; a rule has one threshold')
        elif "above" not in table and "below" not in table:
            self.error(where, 'one of "above" or "below" is required')
        for key, threshold in (("above", above), ("below", below)):
            if threshold is not None and metric in FRACTION_METRICS and not 0 <= threshold <= 1:
                self.error(where, f'"{key}" must be from 0 to 1 for {metric} (a fraction), got {_shown(table[key])}')

        window = self.duration(where, table, "window", None, MIN_WINDOW, whole_minutes=True)
        for_ = self.duration(where, table, "for", dt.timedelta(0), dt.timedelta(0))
        repeat_interval = self.duration(where, table, "repeat_interval", DEFAULT_REPEAT_INTERVAL, dt.timedelta(0))
        notify = self.names(where, table, "notify")
        for notifier in notify:
            if notifier not in notifier_names:
                hint = _did_you_mean(notifier, notifier_names)
                self.error(where, f'"notify" names {_quoted(notifier)}, which is not in [notifiers]{hint}')
        severity = self.choice(where, table, "severity", SEVERITIES, DEFAULT_SEVERITY)
        no_data = self.choice(where, table, "no_data", NO_DATA_BEHAVIOURS, DEFAULT_NO_DATA)
        summary = table.get("summary", Rule.summary)
        if not isinstance(summary, str):
            self.error(where, f'"summary" must be a string, got {_shown(summary)}')
        if len(self.errors) > before and not (labels_valid and isinstance(summary, str)):
            return None
        rule = Rule(
            name=name if isinstance(name, str) else "",
            metric=metric,
            above=above,
            below=below,
            window=window,
            for_=for_,
            notify=notify,
            statistic=statistic,
            labels=labels,
            group_by=group_by,
            severity=severity,
            summary=summary,
            repeat_interval=repeat_interval,
            no_data=cast(NoData, no_data),  # one of NO_DATA_BEHAVIOURS
        )
        if above is not None or below is not None:
            try:
                render_summary(rule, 1.0, {})
            except ValueError as error:
                self.error(where, f'"summary": {error}')
        return rule if len(self.errors) == before else None

    def unknown_keys(self, where: str, table: Mapping[str, Any], known: Collection[str]) -> None:
        for key in table:
            if key not in known:
                self.error(where, f"unknown key {_quoted(key)}{_did_you_mean(key, known)}")

    def table(self, where: str, parent: Mapping[str, Any], key: str, what: str) -> Mapping[str, Any]:
        value = parent.get(key, {})
        if isinstance(value, dict):
            return value
        self.error(where, f"{_quoted(key)} must be {what}, got {_shown(value)}")
        return {}

    def choice(
        self, where: str, table: Mapping[str, Any], key: str, choices: Collection[str], default: str | None
    ) -> str:
        if key not in table and default is not None:
            return default
        value = table.get(key)
        if isinstance(value, str) and value in choices:
            return value
        if value is None:
            self.error(where, f"{_quoted(key)} is required: one of {', '.join(choices)}")
        else:
            hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
            self.error(where, f"{_quoted(key)} must be one of {', '.join(choices)}, got {_shown(value)}{hint}")
        return default or ""

    def number(self, where: str, table: Mapping[str, Any], key: str) -> float | None:
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(where, f"{_quoted(key)} must be a number, got {_shown(value)}")
            return None
        if not math.isfinite(value):
            self.error(where, f"{_quoted(key)} must be a finite number, got {_shown(value)}")
            return None
        return float(value)

    def duration(
        self,
        where: str,
        table: Mapping[str, Any],
        key: str,
        default: dt.timedelta | None,
        minimum: dt.timedelta,
        maximum: dt.timedelta | None = None,
        *,
        whole_minutes: bool = False,
    ) -> dt.timedelta:
        if key not in table:
            if default is not None:
                return default
            self.error(where, f'{_quoted(key)} is required: a duration such as "10m"')
            return minimum
        value = table[key]
        try:
            if not isinstance(value, str):
                raise ValueError
            duration = parse_duration(value)
        except ValueError:
            if isinstance(value, str) and _DURATION_SHAPE.fullmatch(value.strip().lower()):
                self.error(where, f"{_quoted(key)} is too long, got {_shown(value)}")
            else:
                examples = '"30s", "10m", "2h" or "1d"'
                self.error(where, f"{_quoted(key)} must be a duration such as {examples}, got {_shown(value)}")
            return minimum
        if whole_minutes and duration % dt.timedelta(minutes=1):
            self.error(
                where,
                f"{_quoted(key)} must be whole minutes (the recent tier has one-minute buckets), got {_shown(value)}",
            )
        elif maximum is not None and not minimum <= duration <= maximum:
            bounds = f"from {format_duration(minimum)} to {format_duration(maximum)}"
            self.error(where, f"{_quoted(key)} must be {bounds}, got {_shown(value)}")
        elif duration < minimum:
            self.error(where, f"{_quoted(key)} must be at least {format_duration(minimum)}, got {_shown(value)}")
        return duration

    def names(self, where: str, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.error(where, f"{_quoted(key)} must be an array of strings, got {_shown(value)}")
            return ()
        for item in sorted({item for item in value if value.count(item) > 1}):
            self.error(where, f"{_quoted(key)} names {_quoted(item)} twice")
        return tuple(value)

    def labels(self, where: str, table: Mapping[str, Any]) -> Mapping[str, str]:
        value = table.get("labels", {})
        if not isinstance(value, dict):
            self.error(where, f'"labels" must be a table such as {{ queue = "crm" }}, got {_shown(value)}')
            return {}
        try:
            return make_label_set(value).labels  # the same rules as recorded labels, so a filter can match
        except ValueError as error:
            self.error(where, f'"labels": {error}')
            return {}

    def dashboard_url(self, settings: Mapping[str, Any]) -> str | None:
        value = settings.get("dashboard_url")
        if value is None:
            return None
        if isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme in ("http", "https") and parts.netloc:
                return value.rstrip("/")
        self.error(
            "settings",
            f'"dashboard_url" must be an http:// or https:// URL such as "http://127.0.0.1:8000", got {_shown(value)}',
        )
        return None


#: What :func:`~dramatiq_opmetrics.report.parse_duration` reads, whatever the length (to tell "too long").
_DURATION_SHAPE = re.compile(r"([0-9]+[dhms])+")
#: A rule or notifier name: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")


def _name_problem(name: str) -> str | None:
    if not _NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        return f"must be 1 to {MAX_NAME_LENGTH} letters, digits, '_', '.' or '-', starting with a letter or digit"
    return None


def _quoted(text: str) -> str:
    """``text`` in double quotes, control characters escaped, so an error stays on one line."""
    return json.dumps(text, ensure_ascii=False)


def _shown(value: object) -> str:
    """A TOML value as an error message shows it: strings quoted (and cut), other types by kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if value == []:
        return "[]"
    kinds = (
        (list, "an array"),
        (dict, "a table"),
        (dt.datetime, "a date-time"),
        (dt.date, "a date"),
        (dt.time, "a time"),
    )
    return next((kind for cls, kind in kinds if isinstance(value, cls)), type(value).__name__)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1) or [
        # a key cut short: "repeat" for "repeat_interval", "interval" for "evaluation_interval"
        choice
        for choice in choices
        if len(word) >= 3 and (choice.startswith(word) or choice.endswith(word))
    ]
    return f" (did you mean {_quoted(close[0])}?)" if close else ""
