"""Test helper: run the installed programs (``dramatiq-opmetrics``, ``dramatiq``, ``periodiq``) as a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL

#: The directory of this environment's programs.
BIN = Path(sys.executable).parent


def run_command(
    command: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end (at most ``timeout_s`` seconds) and return its status and text output."""
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def url_text(url: URL) -> str:
    """``url`` as typed on a command line or in an environment variable: the password in clear."""
    return url.render_as_string(hide_password=False)
