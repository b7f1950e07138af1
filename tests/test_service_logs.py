"""The server log: rotation past the size limit, stdout/stderr following it, `logs` and
`logs -f`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import requests

from bridge.service.logtail import follow, tail
from bridge.service.process import ServicePaths

from .service_util import clean_env, free_port, mlx_bridge, started, wait_until

ROTATE_SCRIPT = """
import logging, os, sys
from bridge.service.logfile import ServerLogHandler
handler = ServerLogHandler(sys.argv[1], max_bytes=2048, backups=2)
log = logging.getLogger("t")
log.addHandler(handler)
log.setLevel(logging.INFO)
for i in range(200):
    log.info("record %03d %s", i, "x" * 40)
os.write(2, b"RAW-STDERR-AFTER-ROTATION\\n")
print("PRINTED-TO-STDOUT", flush=True)
log.info("last record")
"""


def test_handler_rotates_past_the_limit_and_keeps_std_streams_on_the_current_file(tmp_path):
    path = tmp_path / "logs" / "server.log"
    result = subprocess.run([sys.executable, "-c", ROTATE_SCRIPT, str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""  # everything went to the file
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["server.log", "server.log.1", "server.log.2"]  # backups=2: older ones dropped
    for name in files:
        assert (path.parent / name).stat().st_size <= 2048
    current = path.read_text()
    assert "RAW-STDERR-AFTER-ROTATION" in current and "PRINTED-TO-STDOUT" in current
    assert current.rstrip().endswith("last record")
    assert "record 199" in (path.parent / "server.log.1").read_text() + current


def test_a_running_server_rotates_its_log(tmp_path, mappings_file):
    home = tmp_path / "home"
    env = clean_env(home, MLX_BRIDGE_LOG_MAX_BYTES="4096", MLX_BRIDGE_LOG_BACKUPS="2")
    log = ServicePaths(home).log_file
    with started(home, mappings_file, free_port(), "-v", env=env) as url:
        for _ in range(80):  # -v logs a line per request
            assert requests.get(url + "/api/tags", timeout=10).ok
        assert wait_until(lambda: (log.parent / "server.log.1").exists())
        for p in log.parent.iterdir():
            assert p.stat().st_size <= 4096 + 1024, p  # one record may straddle the limit check
        assert "server.log.3" not in {p.name for p in log.parent.iterdir()}

        for _ in range(50):  # the engine logs its MLX start a moment after the server is up
            size = log.stat().st_size
            shown = mlx_bridge("logs", "-n", "3", env=env)
            if log.stat().st_size == size:
                break
            time.sleep(0.1)
        assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 3
        assert shown.stdout.splitlines() == [line.rstrip("\n") for line in tail(log, 3)]


def test_logs_without_a_log_file(tmp_path):
    result = mlx_bridge("logs", env=clean_env(tmp_path / "home"))
    assert result.returncode == 1 and "no log yet" in result.stderr


def test_follow_continues_across_rotation(tmp_path):
    path = tmp_path / "server.log"
    path.write_text("old 1\nold 2\n")
    seen: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(path, seen.append),
                              kwargs={"lines": 1, "poll": 0.05, "stop": stop})
    thread.start()
    try:
        assert wait_until(lambda: "".join(seen) == "old 2\n")
        with path.open("a") as f:
            f.write("appended\n")
        assert wait_until(lambda: "appended\n" in "".join(seen))
        with path.open("a") as f:
            f.write("written just before rotation\n")
        path.rename(tmp_path / "server.log.1")
        path.write_text("after rotation\n")
        assert wait_until(lambda: "".join(seen).endswith("after rotation\n"))
        assert "".join(seen) == "old 2\nappended\nwritten just before rotation\nafter rotation\n"
    finally:
        stop.set()
        thread.join(5)


def test_logs_follow_command(tmp_path):
    home = tmp_path / "home"
    log = ServicePaths(home).log_file
    log.parent.mkdir(parents=True)
    log.write_text("first line\n")
    proc = subprocess.Popen([sys.executable, "-m", "bridge", "logs", "-f"], env=clean_env(home),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first line\n"  # printed from the file it then follows
        with log.open("a") as f:
            f.write("live line\n")
        assert proc.stdout.readline() == "live line\n"
    finally:
        proc.terminate()
        proc.wait(10)
