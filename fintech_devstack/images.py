"""The images `stack node` runs, built here: no image registry is reachable from this machine.

A Debian bookworm base (debootstrap), then FROM it: a Python base for the product's own
Dockerfile, PostgreSQL and Kafka under the official images' contracts (docs/install.md),
and FROM scratch the pause sandbox and CoreDNS built from their Go sources. Each image is
saved as a tar in ``<cache>/images/<name>-<key>.tar``, the key a hash of everything that
goes into it (Dockerfile, build context, base image's key), so it is rebuilt only when an
input changes. Building needs dockerd; loading the tars (``stack node up``) does not.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fintech_devstack import build, versions

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = Path(__file__).resolve().parent / "dockerfiles"
REGISTRY = "fintech.local"
DOCKER = "/usr/bin/docker"  # Debian's 20.10 CLI: the newer one on PATH lacks the builder.
DOCKER_TIMEOUT_SECONDS = 1800
DOCKERD_SOCKET = Path("/run/fintech-docker/docker.sock")
BOOKWORM_RECIPE = "debootstrap --variant=minbase bookworm"
# The product image's inputs: what its Dockerfile copies.
PRODUCT_INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "fintech_operator")


class ImageError(RuntimeError):
    """An image could not be built; the message names it and its log."""


def _say(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def home() -> Path:
    path = build.cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(len(part).to_bytes(8, "big"))
        sha.update(part)
    return sha.hexdigest()[:16]


def _tree_bytes(root: Path, names: tuple[str, ...] | None = None) -> bytes:
    """Every file's relative path and content under ``root`` (or under ``names`` in it)."""
    tops = [root / name for name in names] if names else [root]
    files: list[Path] = []
    for top in tops:
        files += [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    chunks = []
    for path in files:
        if "__pycache__" in path.parts:
            continue
        chunks.append(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return b"\0\0".join(chunks)


def tree_key(root: Path, *extra: bytes) -> str:
    """The content key of every file under ``root`` and of ``extra``: what a cache entry built
    from that tree is named by (also the image venv of tests/e2e/test_chart_image.py)."""
    return _digest(*extra, _tree_bytes(root))


def tag(name: str, key: str) -> str:
    return f"{REGISTRY}/{name}:{key}"


def _docker_env() -> dict[str, str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    env.setdefault("DOCKER_HOST", f"unix://{DOCKERD_SOCKET}")
    return env


def _docker_answers() -> bool:
    probe = [DOCKER, "version", "--format", "{{.Server.Version}}"]
    result = subprocess.run(probe, env=_docker_env(), capture_output=True, timeout=30, check=False)
    return result.returncode == 0


def ensure_dockerd() -> None:
    """A dockerd for building, started by pid when none answers (no systemd here), its data
    (images and build cache) in the cache directory. It is left running for the next build;
    stop it with `kill $(cat <cache>/dockerd.pid)`."""
    if _docker_answers():
        return
    if shutil.which("dockerd") is None:
        raise ImageError("dockerd is not installed; run tools/bootstrap.sh (docker.io)")
    _say("starting dockerd for image builds")
    DOCKERD_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    root = build.cache_root()
    pidfile = DOCKERD_SOCKET.parent / "docker.pid"
    with (root / "dockerd.log").open("ab") as sink:
        # `setsid -f`: dockerd outlives this process on purpose, so it is not our child (a
        # Popen of a child still running when dropped warns, an error under the tests'
        # warning filter); dockerd writes its own pid file.
        subprocess.run(
            [
                "setsid",
                "-f",
                "dockerd",
                f"--data-root={root / 'docker'}",
                f"--exec-root={DOCKERD_SOCKET.parent / 'exec'}",
                f"--host=unix://{DOCKERD_SOCKET}",
                f"--pidfile={pidfile}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
    for _ in range(60):
        if _docker_answers():
            shutil.copyfile(pidfile, root / "dockerd.pid")
            return
        time.sleep(1)
    raise ImageError(f"dockerd did not answer in 60 s; log: {root / 'dockerd.log'}")


def _docker(args: list[str], log: Path, stdin: bytes | None = None) -> None:
    ensure_dockerd()
    env = _docker_env()
    with log.open("ab") as sink:
        sink.write(f"$ {DOCKER} {' '.join(args)}\n".encode())
        sink.flush()
        result = subprocess.run(
            [DOCKER, *args],
            input=stdin,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=DOCKER_TIMEOUT_SECONDS,
            check=False,
        )
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-10:]
        raise ImageError(f"docker {args[0]} failed; log: {log}\n" + "\n".join(tail))


def _save(name: str, key: str, log: Path) -> Path:
    tar = home() / f"{name}-{key}.tar"
    partial = tar.with_suffix(".partial")
    _docker(["save", "-o", str(partial), tag(name, key)], log)
    partial.rename(tar)
    return tar


def _build(name: str, key: str, context: Path, dockerfile: Path, args: dict[str, str]) -> Path:
    tar = home() / f"{name}-{key}.tar"
    if tar.exists():
        return tar
    _say(f"building {tag(name, key)} (inputs changed or first time)")
    log = home() / f"{name}.log"
    cmd = ["build", "--network=host", "--pull=false", "-f", str(dockerfile)]
    cmd += ["-t", tag(name, key)]
    for arg, value in args.items():
        cmd += ["--build-arg", f"{arg}={value}"]
    _docker([*cmd, str(context)], log)
    return _save(name, key, log)


def bookworm() -> tuple[str, Path]:
    """The base every other image starts FROM; its key names the recipe, not the bytes."""
    key = _digest(BOOKWORM_RECIPE.encode())
    tar = home() / f"bookworm-{key}.tar"
    if tar.exists():
        return key, tar
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is not installed; run tools/bootstrap.sh")
    _say("debootstrap of Debian bookworm (first time only, about 75 s)")
    log = home() / "bookworm.log"
    with tempfile.TemporaryDirectory(dir=home()) as rootfs:
        with log.open("ab") as sink:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", rootfs],
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=DOCKER_TIMEOUT_SECONDS,
                check=True,
            )
        packed = subprocess.run(
            ["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True, timeout=600
        ).stdout
    _docker(["import", "-", tag("bookworm", key)], log, stdin=packed)
    return key, _save("bookworm", key, log)


def _from_dockerfiles(name: str, base_key: str, extra: dict[str, Path]) -> tuple[str, Path]:
    """An image from ``dockerfiles/<name>`` plus ``extra`` files copied into its context."""
    source = DOCKERFILES / name
    parts = [base_key.encode(), _tree_bytes(source)]
    parts += [p.encode() + _tree_bytes(path) for p, path in sorted(extra.items())]
    key = _digest(*parts)
    if (home() / f"{name}-{key}.tar").exists():
        return key, home() / f"{name}-{key}.tar"
    with tempfile.TemporaryDirectory(dir=home()) as context:
        shutil.copytree(source, context, dirs_exist_ok=True)
        for target, path in extra.items():
            copy = shutil.copytree if path.is_dir() else shutil.copy2
            copy(path, Path(context) / target)
        args = {"BASE_IMAGE": tag("bookworm", base_key)} if base_key else {}
        tar = _build(name, key, Path(context), Path(context) / "Dockerfile", args)
    return key, tar


def _go_binary(name: str, version: str, requires: str) -> Path:
    main_go = (DOCKERFILES / name / "main.go").read_text()
    return build.build_go_main(name, version, requires, main_go)


def pause_image() -> str:
    binary = _go_binary("pause", "1", "")
    key, _ = _from_dockerfiles("pause", "", {"pause": binary})
    return tag("pause", key)


def coredns_image() -> str:
    version = f"v{versions.COREDNS_VERSION}"
    binary = _go_binary("coredns", version, f"github.com/coredns/coredns {version}")
    key, _ = _from_dockerfiles("coredns", "", {"coredns": binary})
    return tag("coredns", key)


def postgres_image() -> str:
    base, _ = bookworm()
    key, _ = _from_dockerfiles("postgres", base, {})
    return tag("postgres", key)


def kafka_image() -> str:
    base, _ = bookworm()
    key, _ = _from_dockerfiles("kafka", base, {"libs": build.ensure_all().kafka_libs})
    return tag("kafka", key)


def python_image() -> str:
    base, _ = bookworm()
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    key, _ = _from_dockerfiles("python", base, {"host-ca-certificates.crt": ca})
    return tag("python", key)


def product_image() -> str:
    """The product image from the repository's own Dockerfile, on the local Python base."""
    python = python_image()
    key = _digest(python.encode(), _tree_bytes(REPO_ROOT, PRODUCT_INPUTS))
    args = {"PYTHON_IMAGE": python}
    _build("fintech-operator", key, REPO_ROOT, REPO_ROOT / "Dockerfile", args)
    return tag("fintech-operator", key)


def tar_of(image: str) -> Path:
    """The saved tar of an image this module built."""
    name, key = image.rsplit("/", 1)[1].split(":")
    return home() / f"{name}-{key}.tar"


def all_images() -> dict[str, str]:
    """Every image the node and the chart need, built when missing: role -> reference."""
    with build.cache_lock("images"):
        return {
            "pause": pause_image(),
            "coredns": coredns_image(),
            "postgres": postgres_image(),
            "kafka": kafka_image(),
            "product": product_image(),
        }


if __name__ == "__main__":
    for role, reference in all_images().items():
        print(f"{role:10} {reference}")
