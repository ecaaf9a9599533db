"""`dev`'s ports: remembered ones stay, new ones are chosen, /proc/net/tcp is read right."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import types
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from fintech_devstack import ports

# Two listeners (ports 0x5E36 = 24118 on 127.0.0.1, 0x1F90 = 8080 on 0.0.0.0) and one
# established connection from port 8080 (state 01), which is not a listener.
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:5E36 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0
"""


@pytest.fixture(autouse=True)
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test here reserves ports in a file of its own, never in this user's real one (a
    documented port reserved there would keep the developer's own platform off it)."""
    machine = tmp_path / "machine"
    machine.mkdir()
    monkeypatch.setattr(ports, "machine_dir", lambda: machine)
    return machine


def test_listening_inodes_reads_only_listeners_of_the_port() -> None:
    """The LISTEN row of a port is found, on any address; connections and other ports are not."""
    assert ports.listening_inodes(TCP_TABLE, 8080) == {222}
    assert ports.listening_inodes(TCP_TABLE, 24118) == {111}
    assert ports.listening_inodes(TCP_TABLE, 9999) == set()
    assert ports.listening_inodes("header only\n", 8080) == set()


def test_a_new_state_directory_gets_distinct_kernel_ports() -> None:
    """Without remembered ports and without the default preference, none is a documented one."""
    chosen = ports.fill({}, prefer_defaults=False, owner="/a")
    numbers = [port for _, port in chosen.items()]
    assert len(set(numbers)) == len(numbers)
    assert not set(numbers) & {port for _, port in ports.Ports().items()}


def test_remembered_ports_are_kept_and_missing_ones_filled(tmp_path: Path) -> None:
    """ports.json wins; a platform.json of an older version (ports only for the platform)
    keeps its ports and gets new ones for dev's processes."""
    legacy = {"pids": {}, "ports": {"postgres": 25999, "apiserver": 26999, "unknown": 1}}
    (tmp_path / "platform.json").write_text(json.dumps(legacy))
    loaded = ports.load(tmp_path, prefer_defaults=False)
    assert (loaded.postgres, loaded.apiserver) == (25999, 26999)
    assert loaded.operator_health != ports.Ports().operator_health
    ports.save(tmp_path, loaded)
    assert ports.load(tmp_path, prefer_defaults=False) == loaded
    assert json.loads((tmp_path / ports.PORTS_FILE).read_text())["postgres"] == 25999


def test_the_default_directory_takes_documented_ports_and_replaces_taken_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the default preference, each documented port is kept when free; one that is
    taken (8080 here) is replaced by a kernel-chosen port, the others stay documented."""
    monkeypatch.setattr(ports, "is_free", lambda port: port != 8080)
    chosen = ports.fill({}, prefer_defaults=True, owner="/a")
    documented = ports.Ports()
    assert chosen.operator_health != 8080
    assert chosen.operator_health not in {port for _, port in documented.items()}
    assert chosen.postgres == documented.postgres
    assert chosen.apiserver == documented.apiserver
    assert chosen.notifier_metrics == documented.notifier_metrics


def test_a_port_picked_for_one_platform_is_not_picked_for_another_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two platforms starting together (xdist workers) never get the same kernel port: the
    kernel offering a reserved one again is asked once more; once the reservation ends
    (its listener has long bound it), the number may be picked again."""
    monkeypatch.setattr(ports, "machine_dir", lambda: tmp_path)
    offers = iter([[40001, 40003], [40003, 40005], [40007, 40009], [40001, 40003]])
    monkeypatch.setattr(ports, "_bound_together", lambda count: next(offers))
    assert ports._kernel_ports(2) == [40001, 40003]
    assert ports._kernel_ports(2) == [40007, 40009]
    reserved = json.loads((tmp_path / ports.RESERVATIONS_FILE).read_text())
    assert sorted(reserved) == ["40001", "40003", "40007", "40009"]
    later = time.time() + ports.RESERVATION_SECONDS + 1
    monkeypatch.setattr(ports, "time", types.SimpleNamespace(time=lambda: later))
    assert ports._kernel_ports(2) == [40001, 40003]


def test_a_damaged_reservations_file_reserves_nothing_and_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file cut short (a killed writer of an older version) does not stop any platform."""
    monkeypatch.setattr(ports, "machine_dir", lambda: tmp_path)
    (tmp_path / ports.RESERVATIONS_FILE).write_text('{"40001": ')
    picked = ports._kernel_ports(3)
    assert len(set(picked)) == 3
    assert sorted(json.loads((tmp_path / ports.RESERVATIONS_FILE).read_text())) == sorted(
        str(port) for port in picked
    )


def test_kernel_ports_give_up_when_every_offer_is_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that keeps offering reserved ports fails with a message, not a loop."""
    monkeypatch.setattr(ports, "machine_dir", lambda: tmp_path)
    monkeypatch.setattr(ports, "_bound_together", lambda count: [40011])
    ports._kernel_ports(1)
    with pytest.raises(RuntimeError, match="no 1 unreserved loopback ports in 20 tries"):
        ports._kernel_ports(1)


DOCUMENTED = frozenset(port for _, port in ports.Ports().items())


def _numbers(chosen: ports.Ports) -> set[int]:
    return {port for _, port in chosen.items()}


def test_two_default_style_directories_starting_together_get_disjoint_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two shells whose FINTECH_STACK_DIR differ both prefer the documented ports. The first
    takes them; the second, asking before the first listens (so every documented port is still
    free), gets none of them: it would fail to bind them, and its ports.json would remember
    them for every retry."""
    monkeypatch.setattr(ports, "is_free", lambda port: True)
    first = ports.load(tmp_path / "a", prefer_defaults=True)
    second = ports.load(tmp_path / "b", prefer_defaults=True)
    assert first == ports.Ports()
    assert not _numbers(first) & _numbers(second)
    assert not _numbers(second) & DOCUMENTED
    assert len(_numbers(second)) == len(ports.Ports().items())


def test_a_directory_gets_its_own_reserved_documented_ports_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting and re-creating the default directory (or `stack down --purge`, then `dev`)
    within the reservation's 15 minutes takes the documented ports again: a reservation keeps
    other directories off them, not the one it was made for. Another directory still stays
    off them, and a documented port that is taken is still replaced."""
    monkeypatch.setattr(ports, "is_free", lambda port: True)
    state = tmp_path / "dev"
    state.mkdir()
    assert ports.load(state, prefer_defaults=True) == ports.Ports()
    assert ports.load(tmp_path / "." / "dev", prefer_defaults=True) == ports.Ports()
    assert not _numbers(ports.load(tmp_path / "other", prefer_defaults=True)) & DOCUMENTED
    monkeypatch.setattr(ports, "is_free", lambda port: port != ports.Ports().postgres)
    again = ports.load(state, prefer_defaults=True)
    assert again.postgres not in DOCUMENTED
    assert again.apiserver == ports.Ports().apiserver


def test_remembered_ports_reserve_nothing(tmp_path: Path, machine: Path) -> None:
    """A restart, with every port remembered, neither reads nor writes the reservations."""
    ports.save(tmp_path, ports.Ports())
    assert ports.load(tmp_path, prefer_defaults=True) == ports.Ports()
    assert not (machine / ports.RESERVATIONS_FILE).exists()


def test_an_old_reservations_file_without_owners_keeps_everyone_off_its_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: Path
) -> None:
    """The file of an older version (port -> end time, no owners) is read: its live entries
    keep every directory off their ports, documented or kernel-picked, and they are kept
    when the file is rewritten; an ended one reserves nothing."""
    monkeypatch.setattr(ports, "is_free", lambda port: True)
    documented = ports.Ports()
    live = time.time() + 600
    old = {str(documented.postgres): live, str(documented.kafka): time.time() - 1}
    (machine / ports.RESERVATIONS_FILE).write_text(json.dumps(old))
    chosen = ports.load(tmp_path / "dev", prefer_defaults=True)
    assert chosen.postgres != documented.postgres
    assert chosen.kafka == documented.kafka
    assert chosen.apiserver == documented.apiserver
    rewritten = json.loads((machine / ports.RESERVATIONS_FILE).read_text())
    assert rewritten[str(documented.postgres)] == live
    # Still the old format (port -> end time), so an older checkout on the machine reads it.
    assert all(isinstance(until, float) for until in rewritten.values())
    again = ports.load(tmp_path / "dev", prefer_defaults=True)
    assert again.postgres != documented.postgres


def test_a_reservation_owned_by_an_older_pick_is_not_taken_for_the_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: Path
) -> None:
    """An older version re-reserving a port (a kernel pick, no owner) after this directory's
    reservation of it ended makes the port everyone's to avoid, whatever the owners file
    still says about the ended reservation."""
    monkeypatch.setattr(ports, "is_free", lambda port: True)
    state = tmp_path / "dev"
    ports.load(state, prefer_defaults=True)
    reservations = machine / ports.RESERVATIONS_FILE
    rewritten = json.loads(reservations.read_text())
    rewritten[str(ports.Ports().postgres)] = time.time() + 800
    reservations.write_text(json.dumps(rewritten))
    again = ports.load(state, prefer_defaults=True)
    assert again.postgres != ports.Ports().postgres
    assert again.apiserver == ports.Ports().apiserver


def _free_after_a_while(port: int) -> bool:
    time.sleep(0.02)
    return True


def _fill_in_process(machine: str, state: str, start: Barrier, out: Queue[list[int]]) -> None:
    ports.machine_dir = lambda: Path(machine)  # type: ignore[method-assign]
    # Every documented port looks free, as before any platform listens on it; each look takes
    # a while, so fills that were not one after the other would overlap.
    ports.is_free = _free_after_a_while  # type: ignore[method-assign]
    start.wait(timeout=60)
    chosen = ports.load(Path(state), prefer_defaults=True)
    out.put([port for _, port in chosen.items()])


def test_default_style_directories_filling_at_once_never_share_a_port(
    tmp_path: Path, machine: Path
) -> None:
    """Processes filling the ports of different default-style directories at the same moment
    (two `make dev`s started together) never get the same port, and only one of them gets
    documented ones."""
    context = multiprocessing.get_context("spawn")
    out: Queue[list[int]] = context.Queue()
    count = 4
    start = context.Barrier(count)
    workers = [
        context.Process(
            target=_fill_in_process,
            args=(str(machine), str(tmp_path / f"d{i}"), start, out),
        )
        for i in range(count)
    ]
    for worker in workers:
        worker.start()
    chosen = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    every = [port for numbers in chosen for port in numbers]
    assert len(every) == len(set(every)), chosen
    assert sum(1 for numbers in chosen if set(numbers) & DOCUMENTED) == 1


def test_a_taken_port_says_how_the_directory_gets_new_ports(tmp_path: Path) -> None:
    """A remembered port another process holds is refused naming the port and its holder,
    and the message names the one file to delete for new ports, so a directory that
    remembered another platform's ports is not stuck on them."""
    chosen = ports.Ports.free()
    with socket.socket() as squatter:
        squatter.bind((ports.LOOPBACK, chosen.postgres))
        squatter.listen()
        with pytest.raises(ports.PortTaken) as refused:
            ports.check_free(chosen, ports.PLATFORM_PORTS, f"platform {tmp_path}", tmp_path)
    message = str(refused.value)
    assert f"port {chosen.postgres} (postgres) is taken by pid {os.getpid()} (" in message
    assert f"delete {tmp_path / ports.PORTS_FILE} and start again" in message
    assert "another --state-dir" in message


def test_looking_at_a_directory_never_started_reserves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stack status` and `stack ports` on a default directory never started choose its ports
    without reserving them: another default directory starting right after still gets the
    documented ones. Only a start (`stack up`, `dev`) reserves."""
    from fintech_devstack import platform  # noqa: PLC0415
    from fintech_operator import cli  # noqa: PLC0415

    monkeypatch.setattr(ports, "is_free", lambda port: True)
    looked_at = tmp_path / "looked-at"
    monkeypatch.setattr(platform, "default_state_dir", lambda: looked_at)
    for action in ("status", "ports"):
        assert cli.main(["stack", action]) in (0, 1)
        assert not (looked_at / ports.PORTS_FILE).exists()
    assert "not started yet" in capsys.readouterr().err
    starting = tmp_path / "starting"
    monkeypatch.setattr(platform, "default_state_dir", lambda: starting)
    assert ports.load(starting, prefer_defaults=True) == ports.Ports()
    # The same choice with reserve (a start) keeps the next directory off the documented ones.
    monkeypatch.setattr(platform, "default_state_dir", lambda: looked_at)
    assert platform.Platform.load(looked_at).ports != ports.Ports()
    assert not _numbers(platform.Platform.load(tmp_path / "third").ports) & DOCUMENTED
