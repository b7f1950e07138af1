"""Who holds a port: `ss`, /proc and `lsof` each name the real listening process."""

from __future__ import annotations

import shutil
import socket

import pytest

from bridge.service.portinfo import find_listener, listening_inodes, port_in_use

from .service_util import free_port, port_holder


def test_port_in_use():
    port = free_port()
    assert not port_in_use("127.0.0.1", port)
    with port_holder(port):
        assert port_in_use("127.0.0.1", port)
        assert port_in_use("0.0.0.0", port)  # a wildcard bind collides with the specific one


@pytest.mark.parametrize("method", ["ss", "proc", "lsof"])
def test_each_method_names_the_listener(method):
    if method != "proc" and shutil.which(method) is None:
        pytest.skip(f"{method} is not installed on this machine")
    port = free_port()
    with port_holder(port) as proc:
        holder = find_listener(port, methods=[method])
    assert holder is not None and holder.pid == proc.pid
    assert "python" in holder.command and "socket" in holder.command  # the full command line
    assert str(holder).startswith(f"pid {proc.pid} (")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_listener_found_through_proc():
    port = free_port()
    with port_holder(port, host="::1") as proc:
        assert listening_inodes(port)  # from /proc/net/tcp6
        holder = find_listener(port, methods=["proc"])
    assert holder is not None and holder.pid == proc.pid


def test_nothing_listening():
    assert find_listener(free_port()) is None
