"""``fintech-operator stack`` and ``fintech-operator dev``: the local real platform.

Development tooling only: this package lives in the source tree, outside the shipped
``fintech_operator`` package, so the wheel and the image carry none of it. The product's
CLI adds these commands when this module is importable (a source checkout's virtualenv).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fintech_devstack import platform, ports, supervise

REPO_ROOT = Path(__file__).resolve().parent.parent


def _platform(args: argparse.Namespace, *, starts: bool) -> platform.Platform:
    """The platform of ``--state-dir`` (or the default one). Only a command that ``starts`` it
    reserves the ports it chooses for a new directory: looking at one must not keep another
    directory off the documented ports for the reservations' 15 minutes."""
    state_dir = Path(args.state_dir) if args.state_dir else platform.default_state_dir()
    return platform.Platform.load(state_dir, reserve=starts)


def _running(plat: platform.Platform) -> bool:
    return all(v == "running" for v in plat.status().values()) and plat.env_file.exists()


def _stack_up(plat: platform.Platform, _: argparse.Namespace) -> int:
    if _running(plat):
        print(f"platform already running; state in {plat.state_dir}", file=sys.stderr)
        return 0
    plat.stop()
    plat.start()
    env = env_command(plat.state_dir)
    print(f"platform ready; run: {env}", file=sys.stderr)
    return 0


def _stack_down(plat: platform.Platform, args: argparse.Namespace) -> int:
    if (plat.state_dir / "node").is_dir():
        from fintech_devstack import node  # noqa: PLC0415 - only a platform with a node

        node.Node(plat).down()
    plat.stop()
    if args.purge:
        shutil.rmtree(plat.state_dir, ignore_errors=True)
    return 0


def _stack_env(plat: platform.Platform, _: argparse.Namespace) -> int:
    if not plat.env_file.exists():
        print("platform not started; run: fintech-operator stack up", file=sys.stderr)
        return 1
    print(plat.env_file.read_text(), end="")
    return 0


def _stack_build(_plat: platform.Platform, _: argparse.Namespace) -> int:
    from fintech_devstack import build  # noqa: PLC0415 - only `stack build` needs it

    print(build.ensure_all())
    return 0


# The listener each part is reached on, for `stack status`.
_PART_PORTS = {
    "etcd": "etcd_client",
    "apiserver": "apiserver",
    "kafka": "kafka",
    "postgres": "postgres",
}


def _stack_status(plat: platform.Platform, _: argparse.Namespace) -> int:
    states = plat.status()
    # A state directory never started has no ports yet: plat.ports would pick new free ones on
    # every call, so none is shown rather than numbers that change each time.
    started = (plat.state_dir / ports.PORTS_FILE).exists()
    for name, state in states.items():
        # The controller-manager only talks to the API server: it listens on nothing.
        where = (
            f"127.0.0.1:{getattr(plat.ports, _PART_PORTS[name])}"
            if name in _PART_PORTS and started
            else "-"
        )
        print(f"{name:18} {state:8} {where}")
    if not started:
        print(f"not started yet ({plat.state_dir})", file=sys.stderr)
    return 0 if all(v == "running" for v in states.values()) else 1


def _stack_ports(plat: platform.Platform, _: argparse.Namespace) -> int:
    """Every port of this state directory and who listens on it now."""
    numbers = [port for _, port in plat.ports.items()]
    holders = ports.owners(numbers)
    for name, port in plat.ports.items():
        holder = holders.get(port) or ("free" if ports.is_free(port) else "in use")
        print(f"{name:17} {port:5}  {holder}")
    where = plat.state_dir / ports.PORTS_FILE
    print(f"remembered in {where}" if where.exists() else "not started yet", file=sys.stderr)
    return 0


def _stack_node(plat: platform.Platform, args: argparse.Namespace) -> int:
    """`stack node up|down|status`: a real node (kubelet, containerd) beside the platform."""
    from fintech_devstack import images, node  # noqa: PLC0415 - only `stack node` needs them

    the_node = node.Node(plat)
    action = args.node_action or "status"
    if action == "up":
        if not _running(plat):
            print("platform not running; run: fintech-operator stack up", file=sys.stderr)
            return 1
        built = images.all_images()
        the_node.up([images.tar_of(image) for image in built.values()])
        print("node Ready; images: " + " ".join(built.values()), file=sys.stderr)
    elif action == "down":
        the_node.down()
    states = the_node.status()
    for name, state in states.items():
        print(f"{name:19} {state}")
    if action == "down":
        return 0
    return 0 if all(v in ("running", "Ready") for v in states.values()) else 1


_STACK_ACTIONS = {
    "up": _stack_up,
    "down": _stack_down,
    "env": _stack_env,
    "build": _stack_build,
    "status": _stack_status,
    "ports": _stack_ports,
    "node": _stack_node,
}


# The `stack` actions that start a platform (`node up` needs one already running).
_STARTS = frozenset({"up"})


def _cmd_stack(args: argparse.Namespace) -> int:
    return _STACK_ACTIONS[args.action](_platform(args, starts=args.action in _STARTS), args)


SERVED_TIMEOUT_SECONDS = 60


def _wait_until_served(env: dict[str, str]) -> None:
    """Until every kind can be listed: the operator lists them all at once, and a just-started
    API server answers "storage is (re)initializing" for a while (kopf retries, loudly)."""
    kinds = ",".join(
        p.name.removesuffix(".yaml") for p in sorted((REPO_ROOT / "crds").glob("*.yaml"))
    )
    deadline = time.monotonic() + SERVED_TIMEOUT_SECONDS
    while True:
        listed = subprocess.run(
            ["kubectl", "get", kinds, "-A", "-o", "name"], env=env, capture_output=True, check=False
        )
        if listed.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the API server does not serve the CRDs: {listed.stderr.decode()}")
        time.sleep(0.5)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP stop dev and its children, never leaving an operator behind
    that holds the probe port and the ledger. SIGINT is set too, not left to Python: a shell
    starts a background job (`make dev &` in a script) with SIGINT ignored, and Python then
    installs no handler of its own, so `kill -INT` did nothing."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def _dev_say(message: str) -> None:
    print(f"[dev] {message}", file=sys.stderr, flush=True)


POLL_INTERVAL_SECONDS = 0.5
CHILD_STOP_TIMEOUT_SECONDS = 30.0
# Each child's own listeners, from the state directory's ports.json: two `dev`s never collide.
_CHILD_PORTS: dict[str, dict[str, str]] = {
    "operator": {
        "FINTECH_HEALTH_PORT": "operator_health",
        "FINTECH_METRICS_PORT": "operator_metrics",
    },
    "rewards": {"FINTECH_METRICS_PORT": "rewards_metrics"},
    "notifier": {"FINTECH_METRICS_PORT": "notifier_metrics"},
    # The authorization gateway (/metrics on the same port).
    "gateway": {"FINTECH_GATEWAY_PORT": "gateway"},
}


# What each child answers on once it serves: `dev` says it is ready when all four do.
_READY_ENDPOINTS: dict[str, tuple[str, str]] = {
    "operator": ("operator_health", "/healthz"),
    "rewards": ("rewards_metrics", "/metrics"),
    "notifier": ("notifier_metrics", "/metrics"),
    # 200 once the gateway's PostgreSQL pool answers.
    "gateway": ("gateway", "/readyz"),
}
READY_PROBE_TIMEOUT_SECONDS = 0.25
# Loopback only, never through a proxy of the shell's environment.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(port: int, path: str) -> bool:
    """True when http://127.0.0.1:PORT/PATH answers 200 at once."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with _LOOPBACK.open(url, timeout=READY_PROBE_TIMEOUT_SECONDS) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _readiness(plat: platform.Platform) -> supervise.Readiness:
    targets = {
        name: (int(getattr(plat.ports, field)), path)
        for name, (field, path) in _READY_ENDPOINTS.items()
    }
    return supervise.Readiness(targets, _answers)


def env_command(state_dir: Path, default_state_dir: Path | None = None) -> str:
    """The shell line that loads a platform's environment, from the repository's root.

    The line is run in another shell, which has no ``FINTECH_STACK_DIR`` of ours (``make``
    got it for one command): every state directory but the built-in default is named, also
    one that this process found through ``FINTECH_STACK_DIR``."""
    if default_state_dir is None:
        default_state_dir = platform.builtin_state_dir()
    env = ".venv/bin/fintech-operator stack env"
    if state_dir.resolve() != default_state_dir.resolve():
        env += f" --state-dir {state_dir}"
    return f'eval "$({env})"'


def ready_line(gateway_port: int, state_dir: Path, default_state_dir: Path | None = None) -> str:
    """What `dev` prints once every process answers: where to go next."""
    return (
        "ready: the operator, rewards consumer, notifier and gateway "
        f"(http://127.0.0.1:{gateway_port}) answer; in another shell: "
        f"{env_command(state_dir, default_state_dir)}"
    )


@dataclass
class _Child:
    """One supervised process of `dev`: how to start it, and its deaths so far."""

    name: str
    argv: list[str]
    env: dict[str, str]
    history: supervise.History
    proc: subprocess.Popen[bytes] | None = None
    started_at_seconds: float = 0.0
    restart_at_seconds: float = 0.0

    def start(self, now_seconds: float) -> None:
        # Its own session: a terminal's Ctrl-C reaches `dev` alone, which then stops each
        # child with exactly one SIGTERM.
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        self.started_at_seconds = now_seconds
        listens = ", ".join(f"{var}={self.env[var]}" for var in _CHILD_PORTS[self.name])
        _dev_say(f"started {self.name} (pid {self.proc.pid}; {listens})")


def _children(
    env: dict[str, str], plat: platform.Platform, policy: supervise.Policy
) -> list[_Child]:
    exe = [sys.executable, "-m", "fintech_operator"]
    children = []
    commands = (
        ("operator", "run"),
        ("rewards", "rewards"),
        ("notifier", "notifier"),
        # Its signing secret is made on first start (FINTECH_GATEWAY_SIGNING_SECRET_FILE).
        ("gateway", "gateway", "--create-secret-file"),
    )
    for name, *command in commands:
        own = {var: str(getattr(plat.ports, field)) for var, field in _CHILD_PORTS[name].items()}
        children.append(_Child(name, [*exe, *command], {**env, **own}, supervise.History(policy)))
    return children


def _tend(child: _Child, now_seconds: float, policy: supervise.Policy) -> supervise.GiveUp | None:
    """Start a child that is due, or decide what to do about one that died."""
    if child.proc is None:
        if now_seconds >= child.restart_at_seconds:
            child.start(now_seconds)
        return None
    code = child.proc.poll()
    if code is None:
        return None
    decision = child.history.died(now_seconds, now_seconds - child.started_at_seconds)
    _dev_say(supervise.describe(child.name, child.proc.pid, code, decision, policy))
    child.proc = None
    if isinstance(decision, supervise.GiveUp):
        return decision
    child.restart_at_seconds = now_seconds + decision.delay_seconds
    return None


def _stop_all(children: list[_Child]) -> bool:
    """SIGTERM each running child once, wait for all; True when every one stopped in time."""
    # A second Ctrl-C or SIGTERM while stopping changes nothing: the stop is already bounded.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    running = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for child in running:
        assert child.proc is not None  # noqa: S101 - narrowed by the filter above
        child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_SECONDS
    clean = True
    for child in running:
        assert child.proc is not None  # noqa: S101
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _dev_say(f"{child.name} did not stop in {CHILD_STOP_TIMEOUT_SECONDS:g} s; killing it")
            child.proc.kill()
            child.proc.wait()
            clean = False
    return clean


def _supervise(
    children: list[_Child],
    policy: supervise.Policy,
    readiness: supervise.Readiness,
    ready_message: str,
) -> int:
    """Run the children until Ctrl-C or SIGTERM (0) or until one crash-loops (1); say once
    when all of them answer."""
    try:
        while True:
            for child in children:
                if _tend(child, time.monotonic(), policy) is not None:
                    _dev_say(f"giving up: {child.name} is crash-looping; see its output above")
                    _stop_all(children)
                    return 1
            if readiness.poll():
                _dev_say(ready_message)
            time.sleep(POLL_INTERVAL_SECONDS)
    except KeyboardInterrupt:
        _dev_say("stopping the operator, rewards consumer, notifier and gateway")
        return 0 if _stop_all(children) else 1


def _dev_env(plat: platform.Platform) -> dict[str, str]:
    env = dict(os.environ)
    for line in plat.env_file.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(value.strip("'\""))
    # The examples' webhook receiver listens on loopback, which the notifier's destination
    # guard refuses unless allowed (docs/operations.md); development allows it, nothing else.
    env.setdefault("FINTECH_WEBHOOK_ALLOWED_CIDRS", "127.0.0.0/8,::1/128")
    env.setdefault(
        "FINTECH_GATEWAY_SIGNING_SECRET_FILE", str(plat.state_dir / "gateway-signing.secret")
    )
    # As the image sets it: glibc's default of 8 malloc arenas per core lets the operator's
    # threads (the Kubernetes client's calls) keep memory they freed (docs/operations.md).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # No card processor runs here: the built-in tokenizer, by the explicit opt-in the operator
    # requires (docs/cards.md). A processor URL in the shell is used instead; a value of
    # FINTECH_TOKENIZER in the shell is kept.
    if not env.get("FINTECH_TOKENIZER_URL"):
        env.setdefault("FINTECH_TOKENIZER", "development")
    return env


def _cmd_dev(args: argparse.Namespace) -> int:
    """Bring the platform up, migrate, install CRDs, then run and supervise the operator and
    the consumers."""
    plat = _platform(args, starts=True)
    if not _running(plat):
        plat.stop()
        plat.start()
    # A platform started before dev's ports existed gets them now, remembered like the rest.
    ports.save(plat.state_dir, plat.ports)
    ports.check_free(plat.ports, ports.DEV_PORTS, f"dev {plat.state_dir}", plat.state_dir)
    env = _dev_env(plat)
    exe = [sys.executable, "-m", "fintech_operator"]
    subprocess.run([*exe, "migrate"], env=env, check=True)
    kubectl = ["kubectl", "apply", "--server-side", "-f", str(REPO_ROOT / "crds")]
    subprocess.run(kubectl, env=env, check=True)
    _wait_until_served(env)
    stop_on_signals()
    policy = supervise.Policy()
    children = _children(env, plat, policy)
    _dev_say(
        "running the operator, rewards consumer, notifier and gateway; a process that dies is "
        "restarted "
        "(Ctrl-C stops them; the platform stays up: `make down` stops it)"
    )
    message = ready_line(plat.ports.gateway, plat.state_dir)
    return _supervise(children, policy, _readiness(plat), message)


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A platform failure (a part that cannot start, a port taken) is one line, not a trace."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (platform.PlatformError, ports.PortTaken) as exc:
            print(f"[stack] error: {exc}", file=sys.stderr, flush=True)
            return 1

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``stack`` and ``dev`` on the product's command line."""
    for name, func, help_text in (
        ("stack", _cmd_stack, "the local real platform"),
        ("dev", _cmd_dev, "platform + operator + consumers in the foreground, supervised"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        if name == "stack":
            cmd.add_argument("action", choices=sorted(_STACK_ACTIONS))
            cmd.add_argument("--purge", action="store_true", help="down: also delete all data")
            cmd.add_argument(
                "node_action", nargs="?", choices=("up", "down", "status"), help="node: what to do"
            )
        cmd.add_argument("--state-dir", help="platform state directory")
        cmd.set_defaults(func=_guarded(func))
