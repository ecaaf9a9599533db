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
from pathlib import Path

from fintech_devstack import platform

REPO_ROOT = Path(__file__).resolve().parent.parent


def _platform(args: argparse.Namespace) -> platform.Platform:

    state_dir = Path(args.state_dir) if args.state_dir else platform.default_state_dir()
    return platform.Platform.load(state_dir)


def _running(plat: platform.Platform) -> bool:
    return all(v == "running" for v in plat.status().values()) and plat.env_file.exists()


def _stack_up(plat: platform.Platform, _: argparse.Namespace) -> int:
    if _running(plat):
        print(f"platform already running; state in {plat.state_dir}", file=sys.stderr)
        return 0
    plat.stop()
    plat.start()
    print('platform ready; run: eval "$(fintech-operator stack env)"', file=sys.stderr)
    return 0


def _stack_down(plat: platform.Platform, args: argparse.Namespace) -> int:
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


def _stack_status(plat: platform.Platform, _: argparse.Namespace) -> int:
    states = plat.status()
    for name, state in states.items():
        print(f"{name:10} {state}")
    return 0 if all(v == "running" for v in states.values()) else 1


_STACK_ACTIONS = {
    "up": _stack_up,
    "down": _stack_down,
    "env": _stack_env,
    "build": _stack_build,
    "status": _stack_status,
}


def _cmd_stack(args: argparse.Namespace) -> int:
    return _STACK_ACTIONS[args.action](_platform(args), args)


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


def _cmd_dev(args: argparse.Namespace) -> int:
    """Bring the platform up, migrate, install CRDs, then run the operator and consumers."""
    plat = _platform(args)
    if not _running(plat):
        plat.stop()
        plat.start()
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
    exe = [sys.executable, "-m", "fintech_operator"]
    subprocess.run([*exe, "migrate"], env=env, check=True)
    kubectl = ["kubectl", "apply", "--server-side", "-f", str(REPO_ROOT / "crds")]
    subprocess.run(kubectl, env=env, check=True)
    _wait_until_served(env)
    # A closed terminal (SIGHUP) or `kill` (SIGTERM) stops the children like Ctrl-C does,
    # never leaving an operator behind that holds the probe port and the ledger.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    children = [
        subprocess.Popen([*exe, "run"], env=env),
        subprocess.Popen([*exe, "rewards"], env=env),
        subprocess.Popen([*exe, "notifier"], env=env),
        # The authorization gateway on 127.0.0.1:8088, signing secret made on first start.
        subprocess.Popen([*exe, "gateway", "--create-secret-file"], env=env),
    ]
    print(
        "operator, rewards consumer, notifier and gateway running; Ctrl-C stops them "
        "(the platform stays up: `make down` stops it)",
        file=sys.stderr,
    )
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        child.wait(timeout=30)
    return max(child.returncode or 0 for child in children)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``stack`` and ``dev`` on the product's command line."""
    for name, func, help_text in (
        ("stack", _cmd_stack, "the local real platform"),
        ("dev", _cmd_dev, "platform + operator + consumers in the foreground"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        if name == "stack":
            cmd.add_argument("action", choices=sorted(_STACK_ACTIONS))
            cmd.add_argument("--purge", action="store_true", help="down: also delete all data")
        cmd.add_argument("--state-dir", help="platform state directory")
        cmd.set_defaults(func=func)
