"""Unit tests for the API unit's start and reload check (roles/api/files/matcraft_api_ready.py).

A small stand-in for gunicorn's master (a real process with real child
processes, and a port that answers HTTP) shows what `--reload` waits for: on
HUP it starts new workers and stops the old ones, which take a while to exit,
as a draining uvicorn worker does.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "api" / "files" / "matcraft_api_ready.py"

# argv: port, seconds an old worker takes to exit after TERM (-1: it never does).
MASTER = textwrap.dedent("""
    import signal, socket, subprocess, sys, threading, time
    port, linger = int(sys.argv[1]), float(sys.argv[2])
    worker = ("import signal, sys, time\\n"
              "linger = %r\\n"
              "def stop(*_):\\n"
              "    if linger >= 0:\\n"
              "        time.sleep(linger)\\n"
              "        sys.exit(0)\\n"
              "signal.signal(signal.SIGTERM, stop)\\n"
              "while True:\\n"
              "    time.sleep(0.1)\\n" % linger)
    workers = [subprocess.Popen([sys.executable, "-c", worker]) for _ in range(2)]
    def reload(*_):
        global workers
        old, workers = workers, [subprocess.Popen([sys.executable, "-c", worker]) for _ in range(2)]
        for process in old:
            process.terminate()
        threading.Thread(target=lambda: [p.wait() for p in old], daemon=True).start()
    signal.signal(signal.SIGHUP, reload)
    server = socket.create_server(("127.0.0.1", port))
    print("ready", " ".join(str(p.pid) for p in workers), flush=True)
    while True:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
        conn.close()
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    """A worker exists until the master has reaped it (the check waits for that too)."""
    return Path("/proc/%d" % pid).exists()


@pytest.fixture
def master(tmp_path):
    started = []

    def start(linger: float):
        port = free_port()
        process = subprocess.Popen([sys.executable, "-c", MASTER, str(port), str(linger)],
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        line = process.stdout.readline().split()
        assert line and line[0] == "ready", line
        return process, port, [int(pid) for pid in line[1:]]

    yield start
    for process in started:
        subprocess.run(["pkill", "-KILL", "-P", str(process.pid)], check=False)
        process.kill()
        process.wait()


def reload(pid: int, port: int, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--reload", str(pid), "--address", "127.0.0.1",
                           "--port", str(port), "--timeout", str(timeout)], capture_output=True, text=True)


def test_reload_returns_once_the_old_workers_have_exited(master):
    process, port, old = master(linger=1.5)
    started = time.monotonic()
    done = reload(process.pid, port, timeout=20)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 1.5, "the reload returned before the old workers could exit"
    assert not [pid for pid in old if alive(pid)], "old workers still run after the reload returned"
    assert process.poll() is None, "the master stopped"


def test_reload_fails_and_names_old_workers_that_do_not_exit(master):
    process, port, old = master(linger=-1)
    done = reload(process.pid, port, timeout=2)
    assert done.returncode == 1
    assert "workers from before the reload still run" in done.stderr, done.stderr
    for pid in old:
        assert str(pid) in done.stderr, done.stderr
