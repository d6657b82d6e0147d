"""Test helper: run the installed programs (``dramatiq-opmetrics``, ``dramatiq``, ``periodiq``) as a user would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: The directory of this environment's programs.
BIN = Path(sys.executable).parent


def run_command(
    command: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end (at most ``timeout_s`` seconds) and return its status and text output."""
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
