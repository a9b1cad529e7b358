"""Ports for the test bed's servers lie below the kernel's ephemeral range, where an
outgoing connection can never take one between the pick and the server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from testbed.processes import free_port

pytestmark = pytest.mark.unit


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_lie_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert all(20000 <= p < low for p in ports), [p for p in ports if not 20000 <= p < low]
    assert len(set(ports)) == len(ports)


def test_a_port_something_listens_on_is_never_handed_out() -> None:
    listeners = []
    try:
        taken = set()
        for port in range(20000, 20000 + 50):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            listeners.append(s)
            taken.add(port)
        picked = {free_port() for _ in range(500)}
        assert not picked & taken
    finally:
        for s in listeners:
            s.close()
