"""The lock files' stamp: a digest of what pyproject.toml asks for, recorded in each lock.

    python3 scripts/lockfile.py stamp [DIR]   # scripts/lock, after pip-compile
    python3 scripts/lockfile.py check [DIR]   # scripts/test, before it installs anything

``check`` exits 1 with one line per lock when pyproject.toml's dependencies changed since the
lock was made (stale: run scripts/lock), so CI fails at once and never tests an environment
that is not the one pyproject.toml describes. It needs no network and no package: the standard
library only, since scripts/test runs it with the system Python before any virtual environment
exists. tests/test_lock.py checks the rest (every requirement pinned within its range, the
image's lock a subset of CI's).

The digest is of the parsed data (``requires-python``, ``dependencies``, the extras and
``build-system.requires``), not of the text: a comment or a reformatted list leaves the locks
current; changing, adding or removing a requirement makes them stale.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The image's lock (runtime only) and CI's (runtime plus the dev extra).
LOCKS = ("requirements.lock", "requirements-dev.lock")
STAMP = "# pyproject.toml's dependencies, sha256: "


def dependency_digest(pyproject: Path) -> str:
    """sha256 of everything in ``pyproject`` that pip-compile resolves the locks from."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    asked = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system.requires": data.get("build-system", {}).get("requires", []),
    }
    return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    """The digest ``lock`` was stamped with, or None."""
    for line in lock.read_text().splitlines():
        if line.startswith(STAMP):
            return line.removeprefix(STAMP).strip()
    return None


def stamp(lock: Path, digest: str) -> None:
    """Record ``digest`` in ``lock``, after pip-compile's header (replacing an older stamp)."""
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(STAMP)]
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    lines[first:first] = [STAMP + digest, "#"]
    lock.write_text("\n".join(lines) + "\n")


def stale(root: Path = ROOT) -> list[str]:
    """One line for each lock in ``root`` that is missing or stale; empty when all are current."""
    digest = dependency_digest(root / "pyproject.toml")
    problems = []
    for name in LOCKS:
        lock = root / name
        if not lock.is_file():
            problems.append(f"{name} is missing: run scripts/lock")
        elif recorded_digest(lock) != digest:
            problems.append(
                f"{name} is stale: pyproject.toml's dependencies changed since it was made;"
                " run scripts/lock"
            )
    return problems


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("stamp", "check"):
        print("usage: lockfile.py stamp|check [DIR]", file=sys.stderr)
        return 2
    root = Path(argv[1]) if len(argv) == 2 else ROOT
    if argv[0] == "stamp":
        digest = dependency_digest(root / "pyproject.toml")
        for name in LOCKS:
            stamp(root / name, digest)
        return 0
    problems = stale(root)
    for problem in problems:
        print(f"lock: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
