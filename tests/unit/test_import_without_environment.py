"""Nothing reads the environment at import: every product module imports with an empty one.

Settings are loaded once per process at start-up (issue 12); a module that called
``config.load()`` at import would raise here for the missing ``DATABASE_URL``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
# Import every module of the package, report each failure with its error, exit 1 if any.
_IMPORT_ALL: Final = """
import importlib, pkgutil, sys
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
print(len(names), "modules")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _import_all(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_every_product_module_imports_with_an_empty_environment() -> None:
    result = _import_all({"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(result.stdout.split()[0]) > 50  # the walk really found the package


def test_the_check_sees_a_module_that_reads_settings_at_import(tmp_path: Path) -> None:
    """What the test above guards against: ``config.load()`` at import raises without
    ``DATABASE_URL``, so such a module would be reported."""
    probe = subprocess.run(
        [sys.executable, "-c", "from fintech_operator import config; config.load()"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode != 0
    assert "DATABASE_URL" in probe.stderr
