"""Bytes a `pip install` of supsup (the demo) and of its extras puts on disk, measured in an
environment that already holds them: the dependency closure of pyproject.toml's requirements,
each distribution's size the sum of the files its installed metadata lists (RECORD). No download.

    python benchmarks/install_size.py [--extras test,plot]
"""

from __future__ import annotations

import argparse
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def closure(requirements: list[str], project: dict) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements pull in (markers evaluated here)."""
    found: dict[str, metadata.Distribution] = {}
    pending = [(Requirement(text), "") for text in requirements]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):  # an extra naming other extras
            extras = project["optional-dependencies"]
            pending += [(Requirement(t), "") for e in requirement.extras for t in extras[e]]
            continue
        dist = metadata.distribution(name)
        if name not in found:
            found[name] = dist
            pending += [(Requirement(t), "") for t in dist.requires or []]
        for wanted in requirement.extras:
            pending += [(Requirement(t), wanted) for t in dist.requires or []]
    return found


def size_of(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="comma-separated extras beside the demo")
    parser.add_argument("--top", type=int, default=8, help="largest distributions to list")
    args = parser.parse_args()
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    base = closure(project["dependencies"], project)
    extras = [e for e in args.extras.split(",") if e]
    wanted = project["dependencies"] + [
        t for e in extras for t in project["optional-dependencies"][e]
    ]
    everything = closure(wanted, project)
    sizes = {name: size_of(dist) for name, dist in everything.items()}
    demo = sum(sizes[name] for name in base)
    print(f"demo (pip install .): {len(base)} distributions, {demo / 1e9:.2f} GB")
    if extras:
        added = {name: size for name, size in sizes.items() if name not in base}
        print(
            f"+ [{','.join(extras)}]: {len(added)} more distributions, "
            f"{sum(added.values()) / 1e6:.0f} MB"
        )
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {name:28} {size / 1e6:9.1f} MB{'' if name in base else '  (extra)'}")


if __name__ == "__main__":
    main()
