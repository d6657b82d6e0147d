"""The wheel carries the migrations: built and installed in a fresh virtualenv, it migrates both dialects."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from dramatiq_opmetrics.migrate import current_revision

REPO = Path(__file__).parent.parent
#: One parallel worker should run the whole module, building the wheel once (pytest-xdist issue 1386: not yet).
pytestmark = pytest.mark.xdist_group("installed_wheel")


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from this checkout installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(root / "dist"), str(REPO)],
        check=True,
    )
    [wheel] = (root / "dist").glob("dramatiq_opmetrics-*.whl")
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    return bin_dir


@pytest.mark.slow
def test_installed_wheel_migrates_an_empty_database(installed_wheel: Path, database_url: URL) -> None:
    result = subprocess.run(
        [
            installed_wheel / "dramatiq-opmetrics",
            "migrate",
            "--database-url",
            database_url.render_as_string(hide_password=False),
        ],
        capture_output=True,
        text=True,
        cwd=installed_wheel,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(database_url) == "0014"
