"""Importing a product module does nothing: it reads no environment and registers no handler.

Settings are loaded once per process at start-up and the operator's kopf handlers are added to
its own registry then (issue 12). A module that called ``config.load()`` at import would raise
here for the missing ``DATABASE_URL``; one that read a variable itself is named with the line
that read it; one that used a ``@kopf.on...`` decorator shows up in kopf's default registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
# Import every module of the package with os.environ replaced by a mapping that notes each
# read made by our own code (libraries may read theirs), then print what happened as JSON.
_IMPORT_ALL: Final = """
import importlib, json, os, pkgutil, sys

PACKAGE = os.path.join(os.getcwd(), "fintech_operator") + os.sep
reads = []

def _note(key):
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                 or frame.f_code.co_filename.endswith(("os.py", "_abc.py"))):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
        where = frame.f_code.co_filename[len(PACKAGE):]
        reads.append(f"{where}:{frame.f_lineno} reads {key}")

class _Spy(dict):
    def __getitem__(self, key):
        _note(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        _note(key)
        return super().get(key, default)
    def __contains__(self, key):
        _note(key)
        return super().__contains__(key)

os.environ = _Spy(os.environ)
import fintech_operator
failed = []
walk = pkgutil.walk_packages(
    fintech_operator.__path__, "fintech_operator.", onerror=lambda name: failed.append(name)
)
names = [m.name for m in walk]
for name in names:
    if name == "fintech_operator.__main__":  # runs the CLI: it is a program, not a module
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
import kopf
default = kopf.get_default_registry()
parts = ("_activities", "_indexing", "_watching", "_spawning", "_changing", "_webhooks")
ours = [
    f"{part} {handler.id} ({handler.fn.__module__})"
    for part in parts
    for handler in getattr(default, part)._handlers
    if str(getattr(handler.fn, "__module__", "")).startswith("fintech_operator")
]
resources = sum(len(getattr(default, part)._handlers) for part in parts[1:])
print(json.dumps({"modules": len(names), "failed": failed, "reads": reads,
                  "registered": ours, "resource_handlers": resources}))
"""


def _python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter with exactly ``env``: nothing inherited from this one."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def _import_all(env: dict[str, str]) -> dict[str, Any]:
    result = _python(_IMPORT_ALL, ROOT, env)
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return found


@pytest.fixture(scope="module")
def imported() -> dict[str, Any]:
    """Every product module imported once, in a fresh interpreter with an empty environment."""
    return _import_all({"PYTHONPATH": str(ROOT)})


def test_every_product_module_imports_with_an_empty_environment(imported: dict[str, Any]) -> None:
    assert imported["modules"] > 100  # the walk really found the package
    assert imported["failed"] == []


def test_no_product_module_reads_the_environment_at_import(imported: dict[str, Any]) -> None:
    assert imported["reads"] == []


def test_importing_every_module_registers_no_kopf_handler(imported: dict[str, Any]) -> None:
    """kopf's default registry holds only its own login fallback: the operator's handlers are
    in the registry ``runtime.build_registry`` makes, and only there."""
    assert imported["registered"] == []
    assert imported["resource_handlers"] == 0


def test_the_checks_name_a_read_and_a_registration_at_import(tmp_path: Path) -> None:
    """What the tests above guard against: a module of ours that reads a variable or uses a
    kopf decorator when imported is named. The probe module is written into a package of the
    same name, so the checks see it as ours."""
    package = tmp_path / "fintech_operator"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "probe.py").write_text(
        "import os\nimport kopf\nLEVEL = os.environ.get('PROBE_LEVEL')\n"
        "@kopf.on.create('example.dev', 'v1', 'things')\ndef made(**_): pass\n"
    )
    result = _python(
        _IMPORT_ALL, tmp_path, {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["reads"] == ["probe.py:3 reads PROBE_LEVEL"]
    assert found["registered"] == ["_changing made (fintech_operator.probe)"]
    assert found["resource_handlers"] == 1


def test_the_check_sees_a_module_that_reads_settings_at_import(tmp_path: Path) -> None:
    """What the test above guards against: ``config.load()`` at import raises without
    ``DATABASE_URL``, so such a module would be reported."""
    probe = _python(
        "from fintech_operator import config; config.load()",
        tmp_path,
        {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
    )
    assert probe.returncode != 0
    assert "DATABASE_URL" in probe.stderr
