#!/usr/bin/python3
"""Start check of the MatCraft API unit (ExecStartPost): waits until one of
gunicorn's workers serves the API port, so that `systemctl start` and
`restart` return only once this host takes requests.

Plain HTTP or TLS without client certificates: ready when a request for the
health path gets any HTTP answer (/health is 503 while the database is down,
and that is still a serving worker). Mutual TLS (--client-auth): this host
holds no certificate the API accepts, so ready when a worker completes the
TLS handshake with the expected server certificate (verified against --cafile
for the address); the workers take the socket only after the application
has started, and the master does no TLS.

Exit 0 when ready, 1 (with the last error) after --timeout seconds.

With --reload PID (ExecReload=, PID the gunicorn master): a synchronous
graceful reload. It sends HUP to the master, which starts new workers and
stops the old ones gracefully; it returns once every worker of the master
from before the HUP has exited, and a worker serves the port again. Until
then an old worker may still answer requests with the settings and secrets
it started with, so a `systemctl reload` that returned earlier would let the
next step (the retirement of a rotated password's old database login) fail
the requests those workers still take.
"""

import argparse
import os
import signal
import socket
import ssl
import sys
import time


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the address gunicorn binds (IPv6 without brackets)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--cafile", help="CA that verifies the server certificate (TLS)")
    parser.add_argument("--client-auth", action="store_true", help="the API requires client certificates")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds before giving up")
    parser.add_argument("--reload", type=int, metavar="PID",
                        help="send HUP to this gunicorn master and wait until its old workers have exited")
    return parser.parse_args(argv)


def children(parent):
    """PIDs of the processes whose parent is `parent` (a scan of /proc: the
    children file of /proc/PID/task needs a kernel option)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and parent_of(int(entry)) == parent:
            found.add(int(entry))
    return found


def parent_of(pid):
    """The parent PID of `pid`, or None when it has exited. The command
    name in /proc/PID/stat is in parentheses and may hold spaces."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def reload_master(master, deadline):
    """HUP to the master, then wait until none of its workers from before
    is still its child (a PID reused since is another parent's or a new
    worker's, and a new worker is not in `old`). None when done, else what
    is left."""
    old = children(master)
    os.kill(master, signal.SIGHUP)
    while True:
        left = sorted(pid for pid in old if parent_of(pid) == master)
        if not left:
            return None
        if time.monotonic() >= deadline:
            return "workers from before the reload still run: %s" % " ".join(str(pid) for pid in left)
        time.sleep(0.2)


def attempt(args):
    """None when a worker served the port, else the error of this attempt."""
    try:
        with socket.create_connection((args.address, args.port), timeout=5) as raw:
            conn = raw
            if args.cafile:
                context = ssl.create_default_context(cafile=args.cafile)
                conn = context.wrap_socket(raw, server_hostname=args.address)
                if args.client_auth:
                    return None
            host = "[%s]" % args.address if ":" in args.address else args.address
            conn.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                          % (args.path, host, args.port)).encode("ascii"))
            first = conn.recv(5)
            return None if first == b"HTTP/" else "no HTTP answer (%r)" % first
    except (OSError, ssl.SSLError) as error:  # refused, reset, timeout, handshake
        return str(error) or error.__class__.__name__


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    deadline = time.monotonic() + args.timeout
    if args.reload is not None:
        left = reload_master(args.reload, deadline)
        if left:
            sys.stderr.write("the API's graceful reload did not end within %g s: %s\n" % (args.timeout, left))
            return 1
    while True:
        error = attempt(args)
        if error is None:
            return 0
        if time.monotonic() >= deadline:
            sys.stderr.write("the API did not serve %s port %d within %g s: %s\n"
                             % (args.address, args.port, args.timeout, error))
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
