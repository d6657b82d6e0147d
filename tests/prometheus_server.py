"""Test helper: a real Prometheus server (Debian's ``prometheus``) on a free 127.0.0.1 port, scraping targets
every second, read through its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from tcp_proxy import free_port
from waiting import wait_until

#: The Prometheus server program (Debian's package ``prometheus``).
PROMETHEUS_BINARY = "/usr/bin/prometheus"
PROMETHEUS_MISSING = "prometheus is not installed (apt-get install prometheus; ./dev test installs it as root)"
#: Seconds Prometheus may take to be ready, and to stop.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
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


def prometheus_binary() -> str:
    """The Prometheus program; skips the test if it is missing, except in CI (fails)."""
    binary = PROMETHEUS_BINARY if os.access(PROMETHEUS_BINARY, os.X_OK) else shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(PROMETHEUS_MISSING)
        pytest.skip(PROMETHEUS_MISSING)
    return binary


class Prometheus:
    """A real Prometheus scraping ``target`` (``host:port``) every :data:`SCRAPE_INTERVAL_S` seconds, its
    configuration, data and log in ``folder``; stopped (killed if need be) on exit."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        self.target = target
        self.port = free_port()
        self.log = folder / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        binary = prometheus_binary()
        config = self.folder / "prometheus.yml"
        config.write_text(CONFIG.format(interval=SCRAPE_INTERVAL_S, target=self.target))
        (self.folder / "tsdb").mkdir(exist_ok=True)
        self._log_file = self.log.open("wb")
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, START_TIMEOUT_S, f"Prometheus to be ready (log: {self.log})", poll_s=0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"Prometheus exited at start: {self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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

    def __exit__(self, *_exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=STOP_TIMEOUT_S)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
