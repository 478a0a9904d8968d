"""The repository stands alone: no file of it points outside itself for what it relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_tracked_file_points_into_a_shared_folder_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    # Spelled apart, so that this file does not match itself.
    markers = ("shared" + "/reference", ".." + "/shared")
    offenders = [
        name
        for name in files
        if name.endswith((".py", ".md", ".toml", ".yml", ".txt", ".cfg", ".ini"))
        and (ROOT / name).is_file()
        and (
            marker in (ROOT / name).read_text(errors="replace")
            or "../shared" in (ROOT / name).read_text(errors="replace")
        )
    ]
    assert offenders == []
