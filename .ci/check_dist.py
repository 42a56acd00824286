"""Checks a built wheel and sdist: what they hold, what they must never hold, and the metadata.

    python .ci/check_dist.py DIST_DIR

Prints the wheel's contents grouped by folder, then one line per problem; exit status 1
when there is any.
"""

from __future__ import annotations

import collections
import email.parser
import sys
import tarfile
import zipfile
from pathlib import Path

# Run-time files the package cannot work without (a sample of each kind).
WHEEL_MUST_HOLD = [
    "flowjobs/__init__.py",
    "flowjobs/py.typed",
    "flowjobs/engine/lua/add_jobs.lua",
    "flowjobs/engine/lua/move_to_finished.lua",
    "flowjobs/migrations/0001_mirror.py",
    "flowjobs/templates/flowjobs/admin/flow_tree.html",
    "flowjobs/management/commands/runworker.py",
]
WHEEL_MUST_HOLD_SOME = {
    "Lua scripts": ("flowjobs/engine/lua/", ".lua"),
    "Lua includes": ("flowjobs/engine/lua/includes/", ".lua"),
    "templates": ("flowjobs/templates/", ".html"),
    "static files": ("flowjobs/static/flowjobs/", ""),
    "migrations": ("flowjobs/migrations/", ".py"),
}
NEVER = ("bench/", "example_project/", "tests/", ".ci/", "docs/", "manage.py")
CLASSIFIERS = [
    "Framework :: Django :: 5.2",
    "Framework :: Django :: 6.0",
    "Framework :: Django :: 6.1",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
]


def check_wheel(path: Path, problems: list[str]) -> str:
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(wheel.read(meta_name).decode())
        licence_files = [n for n in names if ".dist-info/licenses/" in n]
    folders = collections.Counter(name.rsplit("/", 1)[0] for name in names)
    print(f"{path.name}: {len(names)} files")
    for folder, count in sorted(folders.items()):
        print(f"  {count:4d}  {folder}/")
    for required in WHEEL_MUST_HOLD:
        if required not in names:
            problems.append(f"wheel lacks {required}")
    for what, (start, end) in WHEEL_MUST_HOLD_SOME.items():
        if not any(n.startswith(start) and n.endswith(end) for n in names):
            problems.append(f"wheel holds no {what} ({start}*{end})")
    problems += [f"wheel holds {n}" for n in names if n.startswith(NEVER) or "__pycache__" in n]
    if not any(n.endswith("/LICENSE") for n in licence_files):
        problems.append("wheel has no LICENSE in .dist-info/licenses/")
    if metadata.get("License-Expression") != "MIT":
        problems.append(f"License-Expression is {metadata.get('License-Expression')!r}, not 'MIT'")
    if metadata.get("Requires-Python") != ">=3.11":
        problems.append(f"Requires-Python is {metadata.get('Requires-Python')!r}")
    classifiers = metadata.get_all("Classifier") or []
    problems += [f"classifier missing: {c}" for c in CLASSIFIERS if c not in classifiers]
    if "flowjobs" not in (metadata.get_payload() or ""):
        problems.append("the long description (README) is missing")
    if metadata.get("Description-Content-Type") != "text/markdown":
        problems.append("the long description is not declared as Markdown")
    if not metadata.get_all("Project-URL"):
        problems.append("no project URLs")
    requires = metadata.get_all("Requires-Dist") or []
    for dependency in ("django", "redis", "django-environ", "croniter", "prometheus-client"):
        if not any(r.lower().startswith(dependency) for r in requires):
            problems.append(f"Requires-Dist lacks {dependency}")
    return metadata["Version"]


def check_sdist(path: Path, version: str, problems: list[str]) -> None:
    with tarfile.open(path) as sdist:
        names = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    print(f"{path.name}: {len(names)} files")
    for required in ("LICENSE", "README.md", "pyproject.toml", "CHANGELOG.md", *WHEEL_MUST_HOLD):
        if required not in names:
            problems.append(f"sdist lacks {required}")
    problems += [f"sdist holds {n}" for n in names if n.startswith(NEVER) or "__pycache__" in n]
    if f"flowjobs-{version}" not in path.name:
        problems.append(f"sdist {path.name} does not carry the wheel's version {version}")


def main() -> None:
    dist = Path(sys.argv[1])
    wheels = sorted(dist.glob("flowjobs-*.whl"))
    sdists = sorted(dist.glob("flowjobs-*.tar.gz"))
    problems: list[str] = []
    if len(wheels) != 1 or len(sdists) != 1:
        raise SystemExit(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
    version = check_wheel(wheels[0], problems)
    check_sdist(sdists[0], version, problems)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        raise SystemExit(1)
    print(f"dist ok: flowjobs {version}")


if __name__ == "__main__":
    main()
