"""No code path of flowjobs may turn stored bytes into code: no pickle/marshal/shelve,
no eval/exec/compile of data, no dynamic code in the Lua scripts or the admin's
JavaScript. Job data is JSON, always."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "flowjobs"
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
PYTHON_FILES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_there() -> None:
    assert len(PYTHON_FILES) > 20
    assert (PACKAGE / "engine" / "worker.py") in PYTHON_FILES


@pytest.mark.parametrize("path", PYTHON_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_python_never_deserialises_code(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        problems += [f"line {node.lineno}: imports {n}" for n in names if n in UNSAFE_MODULES]
        if isinstance(node, ast.Call):
            problems += _unsafe_call(node)
    assert not problems, f"{path.relative_to(PACKAGE)}: " + "; ".join(problems)


def _unsafe_call(node: ast.Call) -> list[str]:
    func = node.func
    where = f"line {node.lineno}: calls {ast.unparse(func)}"
    if isinstance(func, ast.Name):
        if func.id == "import_module":
            return _check_import_module(node)
        return [where] if func.id in UNSAFE_CALLS else []
    if not isinstance(func, ast.Attribute):
        return []
    if func.attr == "import_module":
        return _check_import_module(node)
    if not isinstance(func.value, ast.Name):
        return []
    module = func.value.id
    if module in UNSAFE_MODULES:
        return [where]
    if module == "builtins" and func.attr in UNSAFE_CALLS:
        return [where]
    if module == "yaml" and func.attr in {"load", "unsafe_load", "full_load", "load_all"}:
        return [where]
    return []


def _check_import_module(node: ast.Call) -> list[str]:
    """Importing by name is how processors are found (settings, registry); the name must
    never come out of Redis, so it must not be read from a job attribute."""
    text = ast.unparse(node)
    if re.search(r"\bjob\b|\bdata\b|returnvalue|fields\[", text):
        return [f"line {node.lineno}: imports a module named by job data: {text}"]
    return []


OTHER_FILES = sorted(
    p for p in PACKAGE.rglob("*") if p.suffix in {".lua", ".js", ".html"} and p.is_file()
)
DYNAMIC_CODE = {
    ".lua": re.compile(r"\b(loadstring|load|dofile|loadfile)\s*\("),
    ".js": re.compile(r"\beval\s*\(|new\s+Function\s*\(|setTimeout\s*\(\s*['\"]"),
    ".html": re.compile(r"\beval\s*\(|new\s+Function\s*\("),
}


@pytest.mark.parametrize("path", OTHER_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_scripts_and_templates_have_no_dynamic_code(path: Path) -> None:
    text = path.read_text(errors="replace")
    found = [m.group(0) for m in DYNAMIC_CODE[path.suffix].finditer(text)]
    assert not found, f"{path.relative_to(PACKAGE)}: {found}"


def test_no_pickle_mentioned_anywhere() -> None:
    """Not even in settings or docs strings of the package (a serializer switch)."""
    hits = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix in {".py", ".lua", ".js", ".html", ".txt"}
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"\b(c?pickle|marshal|shelve)\b", line, re.IGNORECASE)
        and "never pickle" not in line.lower()
        and "not pickle" not in line.lower()
    ]
    assert not hits, hits
