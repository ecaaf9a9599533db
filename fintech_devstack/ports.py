"""Loopback ports of one local platform and of ``dev``'s processes: chosen once, remembered,
checked before use.

A state directory remembers its ports in ``ports.json``, so a restarted platform comes back
where its clients (the env file, a kubeconfig, a shell) expect it. The default state
directory prefers the documented ports below; any other state directory takes ports the
kernel picks. Every port chosen for a state directory is reserved for it for a while, in a
file of this user's and under its lock, and no other directory is given it meanwhile: two
default directories (``FINTECH_STACK_DIR`` differing between two shells) starting at once
never both take a documented port before either listens on it, while the same directory,
deleted and started again, gets its own ports back. A port that is taken when a part is about
to listen on it is reported with the process holding it, read from
``/proc/net/tcp`` and ``/proc/*/fd``, and with how the directory gets new ports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Final

PORTS_FILE: Final = "ports.json"
LOOPBACK: Final = "127.0.0.1"
# /proc/net/tcp's state column: 0A is LISTEN.
_TCP_LISTEN: Final = "0A"
# Bounds on what is read to name a port's owner: a machine with more processes than this
# gets a vaguer message, never a slow one.
PROCESSES_SCANNED_MAX: Final = 5000
FDS_SCANNED_MAX: Final = 100_000
COMMAND_CHARS_MAX: Final = 120
# A port chosen stays free only until its listener binds it, which for Kafka's is half a
# minute later; a platform starting meanwhile (pytest-xdist workers start theirs together, two
# shells may each `make dev`) could be handed the same number, and one of the two would fail
# to start. So every choice, the kernel's or a documented port, is written to a file of this
# user's, under a lock, and later choices for any other owner skip it until its listener has
# long had time to bind: once bound, the kernel never hands it out again, and is_free says no.
RESERVATIONS_FILE: Final = "port-reservations.json"
RESERVATION_SECONDS: Final = 900.0
# Which state directory each reservation was made for, in a file of its own: the reservations
# file keeps its format (port -> end time), which older checkouts on the machine read and
# rewrite, and a reservation they made (no owner here) keeps every directory off its port.
RESERVATION_OWNERS_FILE: Final = "port-reservation-owners.json"
# Each attempt collides with a reservation with a chance of well under 1 %.
PICK_ATTEMPTS_MAX: Final = 20


@dataclass(frozen=True)
class Ports:
    """Loopback ports of every listener: the platform's parts, then ``dev``'s processes."""

    etcd_client: int = 23790
    etcd_peer: int = 23800
    apiserver: int = 26443
    postgres: int = 25432
    kafka: int = 29092
    kafka_controller: int = 29093
    # Kafka listeners that need a login or TLS, so the product's security options are
    # tested on a real broker: SCRAM/PLAIN without TLS, the same over TLS, and mutual TLS.
    kafka_sasl: int = 29094
    kafka_sasl_ssl: int = 29095
    kafka_ssl: int = 29096
    # `dev`'s processes: the operator's liveness probe (/healthz) and each one's /metrics,
    # so two `dev`s on one machine never fight over 8080.
    operator_health: int = 8080
    operator_metrics: int = 9102
    rewards_metrics: int = 9103
    notifier_metrics: int = 9104
    # The authorization gateway's HTTP port (its /metrics is served there too).
    gateway: int = 8088

    @classmethod
    def free(cls) -> Ports:
        """Ask the kernel for unused loopback ports (test platforms run side by side)."""
        return cls(*_kernel_ports(len(fields(cls))))

    def items(self) -> list[tuple[str, int]]:
        """(name, port) of every listener, in declaration order."""
        return list(asdict(self).items())


PLATFORM_PORTS: Final = (
    "etcd_client",
    "etcd_peer",
    "apiserver",
    "postgres",
    "kafka",
    "kafka_controller",
    "kafka_sasl",
    "kafka_sasl_ssl",
    "kafka_ssl",
)
DEV_PORTS: Final = (
    "operator_health",
    "operator_metrics",
    "rewards_metrics",
    "notifier_metrics",
    "gateway",
)


class PortTaken(RuntimeError):
    """A port this platform wants is in use; the message names the port and its holder."""


def machine_dir() -> Path:
    """This user's directory for every local platform's state (and the port reservations)."""
    return Path("/var/tmp") / f"fintech-operator-{os.getuid()}"  # noqa: S108


def _kernel_ports(count: int) -> list[int]:
    """``count`` distinct ports the kernel picks, none reserved by another recent pick; they
    are reserved by nobody in particular, so every later pick skips them."""
    with _reservations_locked() as book:
        picked = _pick(book, count, owner="", avoid=set())
        book.reserve(picked, owner="")
    return picked


@dataclass
class _Book:
    """The live reservations: port -> when it ends, and port -> (owner, that same end) for
    those made for a state directory. A reservation without an owner keeps everyone off its
    port; so does one whose owner entry is of an earlier reservation (an older version picked
    the port again since, writing no owner): such entries are dropped when read."""

    until: dict[int, float]
    owners: dict[int, tuple[str, float]]

    def blocks(self, port: int, owner: str) -> bool:
        """True when ``port`` is reserved for anyone but ``owner`` (``""``: for anyone)."""
        if port not in self.until:
            return False
        holder = self.owners[port][0] if port in self.owners else ""
        return not owner or holder != owner

    def reserve(self, picked: Iterable[int], owner: str) -> None:
        until = time.time() + RESERVATION_SECONDS
        for port in picked:
            self.until[port] = until
            if owner:
                self.owners[port] = (owner, until)
            else:
                self.owners.pop(port, None)


@contextlib.contextmanager
def _reservations_locked() -> Iterator[_Book]:
    """This user's live reservations, under the machine-wide lock; written back on success."""
    path = machine_dir() / RESERVATIONS_FILE
    owners_path = machine_dir() / RESERVATION_OWNERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = time.time()
        until = {port: end for port, end in _reservations(path).items() if end > now}
        owners = {
            port: held for port, held in _owners(owners_path).items() if until.get(port) == held[1]
        }
        book = _Book(until, owners)
        yield book
        owned = {str(port): {"owner": o, "until": end} for port, (o, end) in book.owners.items()}
        _replace(owners_path, owned)
        _replace(path, {str(port): end for port, end in book.until.items()})


def _replace(path: Path, data: object) -> None:
    staged = path.with_suffix(f".{os.getpid()}.tmp")
    staged.write_text(json.dumps(data))
    staged.replace(path)


def _pick(book: _Book, count: int, *, owner: str, avoid: set[int]) -> list[int]:
    """``count`` distinct kernel-picked ports, none in ``avoid`` nor reserved for another."""
    for _ in range(PICK_ATTEMPTS_MAX):
        picked = _bound_together(count)
        if not any(port in avoid or book.blocks(port, owner) for port in picked):
            return picked
    raise RuntimeError(f"no {count} unreserved loopback ports in {PICK_ATTEMPTS_MAX} tries")


def _reservations(path: Path) -> dict[int, float]:
    """Port -> the time its reservation ends; an unreadable file reserves nothing."""
    try:
        data = json.loads(path.read_text())
        return {int(port): float(until) for port, until in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _owners(path: Path) -> dict[int, tuple[str, float]]:
    """Port -> (owner, end of the reservation it owns); an unreadable file names no owner."""
    try:
        data = json.loads(path.read_text())
        return {
            int(port): (str(held["owner"]), float(held["until"])) for port, held in data.items()
        }
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return {}


def _bound_together(count: int) -> list[int]:
    # All sockets stay bound until every number is read, so the numbers are distinct.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def is_free(port: int) -> bool:
    """True when a listener could bind ``port`` on loopback now.

    SO_REUSEADDR, as every server of the platform sets it: connections of a stopped
    listener waiting out TIME_WAIT do not make its port taken, a live listener does.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def fill(
    remembered: dict[str, int], *, prefer_defaults: bool, owner: str, reserve: bool = True
) -> Ports:
    """Remembered ports as they are; each missing one its default when preferred, free and not
    reserved for another owner, else one the kernel picks. Every missing port is decided and
    reserved for ``owner`` (a state directory's resolved path) under the reservations' lock, so
    two directories choosing at once never both take a documented port before either listens.
    ``reserve=False`` (a command that starts nothing: ``stack status``, ``ports``, ``down``)
    decides the same way and reserves nothing, so looking at a directory never started keeps
    no other directory off the documented ports."""
    defaults = Ports()
    names = [name for name, _ in defaults.items()]
    chosen = dict(remembered)
    missing = [name for name in names if name not in chosen]
    if missing:
        with _reservations_locked() as book:
            for name in missing:
                default = getattr(defaults, name)
                if (
                    prefer_defaults
                    and default not in chosen.values()
                    and not book.blocks(default, owner)
                    and is_free(default)
                ):
                    chosen[name] = default
            kernel = [name for name in missing if name not in chosen]
            picked = _pick(book, len(kernel), owner=owner, avoid=set(chosen.values()))
            chosen.update(zip(kernel, picked, strict=True))
            if reserve:
                book.reserve([chosen[name] for name in missing], owner=owner)
    return Ports(**{name: int(chosen[name]) for name in names})


def remembered(state_dir: Path) -> dict[str, int]:
    """The ports recorded in ``state_dir``: ``ports.json``, or the older ``platform.json``."""
    for name, key in ((PORTS_FILE, None), ("platform.json", "ports")):
        path = state_dir / name
        if path.is_file():
            data = json.loads(path.read_text())
            found = data if key is None else data.get(key) or {}
            known = {f.name for f in fields(Ports)}
            return {k: int(v) for k, v in found.items() if k in known}
    return {}


def load(state_dir: Path, *, prefer_defaults: bool, reserve: bool = True) -> Ports:
    """The ports of ``state_dir``: the remembered ones, completed by :func:`fill` for the
    directory's resolved path (reserved for it only with ``reserve``)."""
    owner = str(state_dir.resolve())
    return fill(
        remembered(state_dir), prefer_defaults=prefer_defaults, owner=owner, reserve=reserve
    )


def save(state_dir: Path, ports: Ports) -> Path:
    """Remember ``ports`` in ``state_dir`` so a restart comes back on the same ones."""
    path = state_dir / PORTS_FILE
    path.write_text(json.dumps(dict(ports.items()), indent=2) + "\n")
    return path


def check_free(ports: Ports, names: Iterable[str], where: str, state_dir: Path) -> None:
    """Raise :class:`PortTaken` naming every port of ``names`` that is in use, and by what,
    and how ``state_dir`` gets other ports when the holder is to keep them."""
    taken = [(name, getattr(ports, name)) for name in names]
    taken = [(name, port) for name, port in taken if not is_free(port)]
    if not taken:
        return
    holders = owners([port for _, port in taken])
    described = "; ".join(
        f"port {port} ({name}) is taken by {holders.get(port, _UNKNOWN_OWNER)}"
        for name, port in taken
    )
    raise PortTaken(
        f"{where}: {described}. Stop that process; or, if it is not this state directory's own "
        f"(another platform's, say), give this directory new ports: delete "
        f"{state_dir / PORTS_FILE} and start again (its data stays); or use another "
        f"--state-dir (a new state directory chooses free ports; its {PORTS_FILE} remembers them)"
    )


_UNKNOWN_OWNER: Final = "a process this user cannot see"


def listening_inodes(table: str, port: int) -> set[int]:
    """Socket inodes listening on ``port`` in a ``/proc/net/tcp`` or ``tcp6`` table (pure)."""
    inodes: set[int] = set()
    for line in table.splitlines()[1:]:
        columns = line.split()
        if len(columns) < 10 or columns[3] != _TCP_LISTEN:
            continue
        _, _, port_hex = columns[1].rpartition(":")
        if int(port_hex, 16) == port:
            inodes.add(int(columns[9]))
    return inodes


def owners(ports_wanted: list[int]) -> dict[int, str]:
    """For each port with a visible listener: ``pid N (command line)``."""
    tables = ""
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            tables += Path(f"/proc/net/{name}").read_text()
    by_inode = {inode: port for port in ports_wanted for inode in listening_inodes(tables, port)}
    found: dict[int, str] = {}
    for inode, pid in _socket_holders(set(by_inode)):
        found.setdefault(by_inode[inode], f"pid {pid} ({_command(pid)})")
    return found


def _socket_holders(inodes: set[int]) -> list[tuple[int, int]]:
    """(inode, pid) for each process holding one of ``inodes``, bounded by the limits above."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    held: list[tuple[int, int]] = []
    fds_seen = 0
    pids = [p for p in os.listdir("/proc") if p.isdigit()][:PROCESSES_SCANNED_MAX]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                fds_seen += 1
                with contextlib.suppress(OSError):
                    inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if inode is not None:
                        held.append((inode, int(pid)))
        if fds_seen > FDS_SCANNED_MAX or not wanted:
            break
    return held


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return command[:COMMAND_CHARS_MAX] or "?"
