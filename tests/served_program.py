"""Test helper: a server program of the Prometheus project (Prometheus, Alertmanager) run by a test on a free
127.0.0.1 port, ready once it answers ``GET /-/ready``, stopped (killed if need be) on exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Self

import pytest
from tcp_proxy import free_port
from waiting import wait_until

#: Seconds a program may take to be ready, and to stop before it is killed.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def find_program(names: tuple[str, ...], missing: str) -> str:
    """The first of ``names`` found (a path or a name on the PATH); skips the test if none is, except in CI
    (fails, with ``missing``)."""
    for name in names:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found is not None:
            return found
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


class ServedProgram:
    """The program of :meth:`command` with its configuration, data and log in ``folder`` (a test's
    ``tmp_path``), listening on :attr:`port`; a context manager."""

    #: Its name, in messages and in its log file's name.
    name = "program"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.log = folder / f"{self.name.lower()}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: BinaryIO | None = None

    @property
    def url(self) -> str:
        """Its HTTP base URL."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line that runs it (its configuration written to :attr:`folder`)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        command = self.command()
        self._log_file = self.log.open("wb")
        self._process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, START_TIMEOUT_S, f"{self.name} to be ready (log: {self.log})", poll_s=0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start: {self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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
