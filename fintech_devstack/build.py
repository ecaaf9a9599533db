"""Build or download the platform's binaries into a cache outside the repository.

Each component lands in ``<cache>/<name>-<version>/`` and is marked complete by a
``.done`` file written last, so an interrupted build is redone rather than trusted.
A fresh clone on the same machine finds the cache and builds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fintech_devstack import versions

BUILD_TIMEOUT_SECONDS = 3600


class BuildError(RuntimeError):
    """A component could not be built; the message names it and its log."""


def cache_root() -> Path:
    """The cache directory, outside any repository so fresh clones reuse it."""
    configured = os.environ.get("FINTECH_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fintech-operator"


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the cache's lock ``name`` (not re-entrant): two sessions building the same entry
    at once (`make test` runs its tiers side by side, several checkouts share the cache)
    would write the same files; the second waits, then finds the entry built."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Binaries:
    """Paths of every built executable and the Kafka class path."""

    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    helm: Path
    kafka_libs: Path
    kube_controller_manager: Path

    @property
    def bin_dirs(self) -> list[Path]:
        return sorted({self.kubectl.parent, self.helm.parent, self.etcd.parent})


def _say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def _go_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The machine's own Go is the one the pins were tested with; never download another.
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOPATH", str(Path.home() / "go"))
    env["PWD"] = str(workdir)
    return env


def _run_logged(cmd: list[str], cwd: Path, log: Path, env: dict[str, str], what: str) -> None:
    """Run a build step, streaming a compact progress count and keeping the full log."""
    started = time.monotonic()
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None  # noqa: S101 - Popen with PIPE always sets it
        for lines, line in enumerate(proc.stdout, start=1):
            sink.write(line)
            if lines % 200 == 0:
                elapsed = int(time.monotonic() - started)
                _say(f"  {what}: {lines} steps, {elapsed}s")
        code = proc.wait(timeout=BUILD_TIMEOUT_SECONDS)
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise BuildError(f"{what} failed (exit {code}); log: {log}\n" + "\n".join(tail))


def _kubernetes_go_mod() -> str:
    staging = [
        "api",
        "apiextensions-apiserver",
        "apimachinery",
        "apiserver",
        "cli-runtime",
        "client-go",
        "cloud-provider",
        "cluster-bootstrap",
        "code-generator",
        "component-base",
        "component-helpers",
        "controller-manager",
        "cri-api",
        "cri-client",
        "cri-streaming",
        "csi-translation-lib",
        "dynamic-resource-allocation",
        "endpointslice",
        "externaljwt",
        "kms",
        "kube-aggregator",
        "kube-controller-manager",
        "kube-proxy",
        "kube-scheduler",
        "kubectl",
        "kubelet",
        "metrics",
        "mount-utils",
        "pod-security-admission",
        "sample-apiserver",
        "sample-cli-plugin",
        "sample-controller",
        "streaming",
    ]
    replaces = "\n".join(
        f"\tk8s.io/{name} => k8s.io/{name} v{versions.KUBERNETES_STAGING_VERSION}"
        for name in staging
    )
    return (
        "module fintech.dev/platform/kubernetes\n\ngo 1.26.0\n\n"
        f"require k8s.io/kubernetes v{versions.KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces}\n)\n"
    )


def _kubernetes_ldflags() -> str:
    major, minor, _ = versions.KUBERNETES_VERSION.split(".")
    values = {
        "gitVersion": f"v{versions.KUBERNETES_VERSION}",
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "gitCommit": "0000000000000000000000000000000000000000",
        "buildDate": "2026-01-01T00:00:00Z",
    }
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.{key}={value}" for key, value in values.items()]
    return "-s -w " + " ".join(flags)


def _build_kubernetes(root: Path) -> tuple[Path, Path]:
    home = root / f"kubernetes-v{versions.KUBERNETES_VERSION}"
    apiserver, kubectl = home / "bin" / "kube-apiserver", home / "bin" / "kubectl"
    if (home / ".done").exists():
        return apiserver, kubectl
    _say(
        f"building kube-apiserver and kubectl v{versions.KUBERNETES_VERSION} from source; "
        "first time only, about 10 to 20 minutes on 2 cores"
    )
    src = home / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(_kubernetes_go_mod())
    (src / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )
    env, log = _go_env(src), home / "build.log"
    _run_logged(["go", "mod", "tidy", "-e"], src, log, env, "kubernetes go mod tidy")
    for name in ("kube-apiserver", "kubectl"):
        cmd = [
            "go",
            "build",
            "-v",
            "-trimpath",
            "-ldflags",
            _kubernetes_ldflags(),
            "-o",
            str(home / "bin" / name),
            f"k8s.io/kubernetes/cmd/{name}",
        ]
        _run_logged(cmd, src, log, env, f"build {name}")
    (home / ".done").write_text(versions.KUBERNETES_VERSION)
    return apiserver, kubectl


def build_kubernetes_commands(home: Path, names: list[str]) -> None:
    """Build more commands of the pinned Kubernetes (the node's daemons) into ``home/bin``."""
    _say(f"building {', '.join(names)} v{versions.KUBERNETES_VERSION} (first time only)")
    src = home / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(_kubernetes_go_mod())
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{name}"\n' for name in names)
    (src / "node_tools.go").write_text(
        f"//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"
    )
    env, log = _go_env(src), home / "build.log"
    _run_logged(["go", "mod", "tidy", "-e"], src, log, env, "kubernetes go mod tidy")
    for name in names:
        target = home / "bin" / name
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", _kubernetes_ldflags()]
        cmd += ["-o", f"{target}.partial", f"k8s.io/kubernetes/cmd/{name}"]
        _run_logged(cmd, src, log, env, f"build {name}")
        Path(f"{target}.partial").rename(target)


def build_go_main(name: str, version: str, requires: str, main_go: str) -> Path:
    """A small Go program (the pause sandbox, CoreDNS) cached as ``<name>-<version>/bin``."""
    home = cache_root() / f"{name}-{version}"
    binary = home / "bin" / name
    if (home / ".done").exists():
        return binary
    _say(f"building {name} {version} (first time only)")
    src = home / "src"
    src.mkdir(parents=True, exist_ok=True)
    require = f"\nrequire {requires}\n" if requires else ""
    (src / "go.mod").write_text(f"module fintech.dev/platform/{name}\n\ngo 1.26.0\n{require}")
    (src / "main.go").write_text(main_go)
    env, log = _go_env(src), home / "build.log"
    if requires:
        _run_logged(["go", "mod", "tidy"], src, log, env, f"{name} go mod tidy")
    cmd = ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."]
    _run_logged(cmd, src, log, env, f"build {name}")
    (home / ".done").write_text(version)
    return binary


def _build_etcd(root: Path) -> Path:
    home = root / f"etcd-v{versions.ETCD_VERSION}"
    binary = home / "bin" / "etcd"
    if (home / ".done").exists():
        return binary
    _say(f"building etcd v{versions.ETCD_VERSION} (first time only, a few minutes)")
    src = home / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(
        "module fintech.dev/platform/etcd\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 v{versions.ETCD_VERSION}\n"
    )
    (src / "main.go").write_text(
        "// Command etcd starts etcd exactly as the upstream binary does.\n"
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    env, log = _go_env(src), home / "build.log"
    _run_logged(["go", "mod", "tidy"], src, log, env, "etcd go mod tidy")
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."]
    _run_logged(cmd, src, log, env, "build etcd")
    (home / ".done").write_text(versions.ETCD_VERSION)
    return binary


def _build_helm(root: Path) -> Path:
    home = root / f"helm-v{versions.HELM_VERSION}"
    binary = home / "bin" / "helm"
    if (home / ".done").exists():
        return binary
    _say(f"building helm v{versions.HELM_VERSION} (first time only, a few minutes)")
    home.mkdir(parents=True, exist_ok=True)
    env, log = _go_env(home), home / "build.log"
    env["GOBIN"] = str(home / "bin")
    env["GOFLAGS"] = "-buildvcs=false"
    major, minor = versions.KUBERNETES_VERSION.split(".")[:2]
    pkg = "helm.sh/helm/v3"
    ldflags = " ".join(
        [
            "-s -w",
            f"-X {pkg}/internal/version.version=v{versions.HELM_VERSION}",
            f"-X {pkg}/internal/version.gitTreeState=clean",
            f"-X {pkg}/pkg/lint/rules.k8sVersionMajor={major}",
            f"-X {pkg}/pkg/lint/rules.k8sVersionMinor={minor}",
            f"-X {pkg}/pkg/chartutil.k8sVersionMajor={major}",
            f"-X {pkg}/pkg/chartutil.k8sVersionMinor={minor}",
        ]
    )
    cmd = [
        "go",
        "install",
        "-v",
        "-trimpath",
        "-ldflags",
        ldflags,
        f"{pkg}/cmd/helm@v{versions.HELM_VERSION}",
    ]
    _run_logged(cmd, home, log, env, "build helm")
    (home / ".done").write_text(versions.HELM_VERSION)
    return binary


def _kafka_pom() -> str:
    deps = [
        ("org.apache.kafka", f"kafka_{versions.KAFKA_SCALA_VERSION}", versions.KAFKA_VERSION),
        ("org.apache.kafka", "kafka-tools", versions.KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", versions.LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", versions.LOG4J_VERSION),
    ]
    body = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        "<modelVersion>4.0.0</modelVersion><groupId>dev.fintech</groupId>"
        "<artifactId>platform-kafka</artifactId><version>1</version>"
        f"<dependencies>{body}</dependencies></project>\n"
    )


def _fetch_kafka(root: Path) -> Path:
    home = root / f"kafka-{versions.KAFKA_SCALA_VERSION}-{versions.KAFKA_VERSION}"
    libs = home / "libs"
    if (home / ".done").exists():
        return libs
    _say(f"downloading Apache Kafka {versions.KAFKA_VERSION} jars with Maven (first time only)")
    if shutil.which("mvn") is None:
        raise BuildError("kafka: Maven (mvn) is not installed; install the 'maven' package")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_kafka_pom())
    cmd = [
        "mvn",
        "-B",
        "-q",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    _run_logged(cmd, home, home / "build.log", dict(os.environ), "kafka jars")
    (home / ".done").write_text(versions.KAFKA_VERSION)
    return libs


def ensure_all() -> Binaries:
    """Build whatever is missing from the cache and return every path."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    etcd = _build_etcd(root)
    helm = _build_helm(root)
    kafka_libs = _fetch_kafka(root)
    apiserver, kubectl = _build_kubernetes(root)
    (controller_manager,) = ensure_kubernetes_commands(["kube-controller-manager"])
    return Binaries(apiserver, kubectl, etcd, helm, kafka_libs, controller_manager)


def ensure_kubernetes_commands(names: list[str]) -> list[Path]:
    """More commands of the pinned Kubernetes (the platform's controller-manager, the node's
    daemons), built into the cache when missing; their paths in the order of ``names``."""
    home = cache_root() / f"kubernetes-v{versions.KUBERNETES_VERSION}"
    paths = [home / "bin" / name for name in names]
    with cache_lock("node-binaries"):
        missing = [path.name for path in paths if not path.exists()]
        if missing:
            build_kubernetes_commands(home, missing)
    return paths


if __name__ == "__main__":
    print(ensure_all())
