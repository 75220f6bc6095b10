"""The pins of the floor job (.ci/floor), generated from pyproject.toml so that they cannot
drift from the declared floors.

    python .ci/floor_pins.py [NAME ...]           every runtime dependency pinned at its
                                                  floor (`jax>=0.7.0` -> `jax==0.7.0`), then
                                                  each NAME of an extra pinned at its floor
    python .ci/floor_pins.py --declared NAME ...  each NAME of an extra as declared
    python .ci/floor_pins.py --python             the lowest Python of requires-python

A runtime dependency or a pinned NAME without a `>=` floor is an error, as is a NAME that no
extra declares.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split(requirement: str) -> tuple[str, str, str]:
    """`name`, `[extras]` and the specifiers of a requirement without environment markers."""
    match = REQUIREMENT.match(requirement)
    if match is None or ";" in requirement:
        sys.exit(f"floor_pins: cannot read the requirement {requirement!r}")
    name, extras, specifiers = match.groups()
    return name, extras or "", specifiers.strip()


def pin(requirement: str) -> str:
    name, extras, specifiers = split(requirement)
    floors = [s.strip()[2:].strip() for s in specifiers.split(",") if s.strip().startswith(">=")]
    if len(floors) != 1:
        sys.exit(f"floor_pins: {requirement!r} declares no single `>=` floor")
    return f"{name}{extras}=={floors[0]}"


def main(args: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    if args == ["--python"]:
        lowest = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"].strip())
        if lowest is None:
            sys.exit(f"floor_pins: cannot read requires-python {project['requires-python']!r}")
        print(lowest.group(1))
        return
    declared = args[:1] == ["--declared"]
    names = args[1:] if declared else args
    extras: dict[str, str] = {}
    for requirements in project["optional-dependencies"].values():
        for requirement in requirements:
            name = canonical(split(requirement)[0])
            if name == canonical(project["name"]):
                continue
            if extras.setdefault(name, requirement) != requirement:
                sys.exit(
                    f"floor_pins: two extras declare {name} differently: "
                    f"{extras[name]!r} and {requirement!r}"
                )
    lines = [] if declared else [pin(r) for r in project["dependencies"]]
    for name in names:
        if canonical(name) not in extras:
            sys.exit(f"floor_pins: no extra of pyproject.toml declares {name!r}")
        requirement = extras[canonical(name)]
        lines.append(requirement if declared else pin(requirement))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
