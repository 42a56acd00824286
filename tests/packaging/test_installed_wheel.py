"""The installed wheel works on its own: its files are there and flowjobs imports from it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.packaging.wheel import REPO

PROBE = """
import json, pathlib
import flowjobs
from flowjobs.engine import scripts
root = pathlib.Path(flowjobs.__file__).parent
print(json.dumps({
    "file": flowjobs.__file__,
    "version": flowjobs.__version__,
    "lua": sorted(p.name for p in (root / "engine" / "lua").glob("*.lua")),
    "templates": sorted(p.name for p in (root / "templates" / "flowjobs" / "admin").glob("*.html")),
    "typed": (root / "py.typed").exists(),
}))
"""


def test_wheel_imports_outside_the_source_tree(wheel_python: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(wheel_python), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = json.loads(result.stdout)
    assert REPO not in Path(found["file"]).resolve().parents
    source_lua = sorted(p.name for p in (REPO / "flowjobs" / "engine" / "lua").glob("*.lua"))
    assert found["lua"] == source_lua
    assert "flow_tree.html" in found["templates"]
    assert found["typed"]
    import flowjobs

    assert found["version"] == flowjobs.__version__
