"""Test helper: a real Prometheus server (Debian's ``prometheus``) on a free 127.0.0.1 port, scraping targets
every second, read through its HTTP API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from served_program import ServedProgram, find_program

#: The Prometheus server program (Debian's package ``prometheus``).
PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS_MISSING = "prometheus is not installed (apt-get install prometheus; ./dev test installs it as root)"
#: Seconds between scrapes.
SCRAPE_INTERVAL_S = 1

CONFIG = """\
global:
  scrape_interval: {interval}s
  scrape_timeout: {interval}s
scrape_configs:
  - job_name: opmetrics
    static_configs:
      - targets: ["{target}"]
"""


class Prometheus(ServedProgram):
    """A real Prometheus scraping ``target`` (``host:port``) every :data:`SCRAPE_INTERVAL_S` seconds, its
    configuration, data and log in ``folder``; stopped (killed if need be) on exit."""

    name = "Prometheus"

    def __init__(self, folder: Path, target: str) -> None:
        super().__init__(folder)
        self.target = target

    def command(self) -> list[str]:
        binary = find_program((PROMETHEUS_BINARY, "prometheus"), PROMETHEUS_MISSING)
        config = self.folder / "prometheus.yml"
        config.write_text(CONFIG.format(interval=SCRAPE_INTERVAL_S, target=self.target))
        (self.folder / "tsdb").mkdir(exist_ok=True)
        return [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def api(self, path: str, **parameters: object) -> Any:
        """The ``data`` of ``GET /api/v1/<path>`` with ``parameters``; fails on an error status."""
        query = urllib.parse.urlencode({key: str(value) for key, value in parameters.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The result vector of an instant query (at ``at``, seconds since the epoch, if given)."""
        parameters: dict[str, object] = {"query": promql}
        if at is not None:
            parameters["time"] = f"{at:.3f}"
        data = self.api("query", **parameters)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scrape_times(self, seconds: int = 600) -> list[float]:
        """The timestamps of its scrapes of the target over the last ``seconds`` that succeeded."""
        data = self.api("query", query=f'up{{job="opmetrics"}}[{seconds}s]')
        samples = data["result"][0]["values"] if data["result"] else []
        return [float(at) for at, up in samples if up == "1"]
