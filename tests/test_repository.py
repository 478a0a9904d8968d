"""The repository stands alone: no file of it points outside itself for what it relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Spelled apart, so that this file does not match itself.
MARKERS = ("shared" + "/reference", ".." + "/shared")
TEXT = (".py", ".md", ".toml", ".yml", ".txt", ".cfg", ".ini")


def test_no_tracked_file_points_into_a_shared_folder_outside_the_repository() -> None:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if name.endswith(TEXT) and path.is_file():
            text = path.read_text(errors="replace")
            if any(marker in text for marker in MARKERS):
                offenders.append(name)
    assert offenders == []
