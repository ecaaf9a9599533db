"""`dev`'s ports: remembered ones stay, new ones are chosen, /proc/net/tcp is read right."""

from __future__ import annotations

import json
import time
import types
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


def test_listening_inodes_reads_only_listeners_of_the_port() -> None:
    """The LISTEN row of a port is found, on any address; connections and other ports are not."""
    assert ports.listening_inodes(TCP_TABLE, 8080) == {222}
    assert ports.listening_inodes(TCP_TABLE, 24118) == {111}
    assert ports.listening_inodes(TCP_TABLE, 9999) == set()
    assert ports.listening_inodes("header only\n", 8080) == set()


def test_a_new_state_directory_gets_distinct_kernel_ports() -> None:
    """Without remembered ports and without the default preference, none is a documented one."""
    chosen = ports.fill({}, prefer_defaults=False)
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
    chosen = ports.fill({}, prefer_defaults=True)
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
