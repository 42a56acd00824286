"""Prints the lowest allowed version of each runtime requirement of a wheel, as pins.

    python .ci/floors.py dist/flowjobs-X-py3-none-any.whl > floors.txt

Each `Requires-Dist: name[extra]>=X,...; marker` becomes `name[extra]==X ; marker`, so
the floors stage installs exactly the floors the metadata promises (uv's
`--resolution lowest-direct` would only lower the wheel itself, the one direct
requirement there). A requirement without a `>=` floor is an error: it has no floor to test.
"""

from __future__ import annotations

import re
import sys
import zipfile

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*([^;]*?)\s*(?:;\s*(.*))?$")


def main() -> None:
    with zipfile.ZipFile(sys.argv[1]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(name).decode()
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec = line.split(":", 1)[1]
        package, versions, marker = REQUIREMENT.match(spec).groups()
        if marker and "extra ==" in marker:
            continue  # optional extras are not runtime requirements
        floor = re.search(r">=\s*([^,\s]+)", versions or "")
        if not floor:
            raise SystemExit(f"no '>=' floor in requirement {spec.strip()!r}")
        print(f"{package}=={floor.group(1)}" + (f" ; {marker}" if marker else ""))


if __name__ == "__main__":
    main()
