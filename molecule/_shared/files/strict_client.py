#!/usr/bin/env python3
"""A steady, bounded stream of HTTPS requests to one address, with NO retry.

usage: strict_client.py OUT.json STOPFILE COUNT INTERVAL ADDRESS SERVER_NAME PATH [PATH...]

Sends up to COUNT requests, one every INTERVAL seconds, round robin over the
PATHs, to https://SERVER_NAME/PATH at ADDRESS:443 (the certificate is
verified for SERVER_NAME against STRICT_CLIENT_CA, default the pki role's
internal CA /etc/matcraft/pki/ca.crt, which no system trust store holds). A PATH is a GET,
or "POST:/path" for a POST of the JSON body {"seconds": 0} (a MatCraft job):
a GET must answer 200, a POST 200, 201 or 202, and the URLs of the created
resources (Location) are listed in the summary. Each request uses a new
connection and is sent once: any error or another status is a failure,
recorded with its time. Stops after COUNT requests or as soon as STOPFILE
exists. Writes a JSON summary to OUT.json (through a temporary name, so a
reader sees all or nothing). Standard library only.
"""

import http.client
import json
import os
import socket
import ssl
import sys
import time


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, with SNI and certificate checks for the server name."""

    def __init__(self, address, server_name, context, timeout):
        super().__init__(server_name, 443, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, 443), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def request(address, server_name, context, path):
    """(status, error, Location header) of one request on a new connection."""
    method, body, headers = "GET", None, {"Connection": "close"}
    if path.startswith("POST:"):
        method, path, body = "POST", path[len("POST:"):], b'{"seconds": 0}'
        headers["Content-Type"] = "application/json"
    connection = PinnedHTTPSConnection(address, server_name, context, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
        # A failure keeps the start of its body (the API's 503 names its cause).
        error = None if response.status < 400 else text[:300].decode("utf-8", "replace")
        return response.status, error, response.getheader("Location")
    except (OSError, http.client.HTTPException) as exc:
        return None, "%s: %s" % (type(exc).__name__, exc), None
    finally:
        connection.close()


def main(out, stopfile, count, interval, address, server_name, paths):
    context = ssl.create_default_context(cafile=os.environ.get("STRICT_CLIENT_CA", "/etc/matcraft/pki/ca.crt"))
    summary = {"sent": 0, "ok": 0, "failed": 0, "failures": [], "by_path": {p: 0 for p in paths},
               "created": [], "started": time.time()}
    started = time.monotonic()
    for n in range(count):
        if os.path.exists(stopfile):
            break
        due = started + n * interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        path = paths[n % len(paths)]
        summary["sent"] += 1
        status, error, location = request(address, server_name, context, path)
        if status == 200 or (path.startswith("POST:") and status in (201, 202)):
            summary["ok"] += 1
            summary["by_path"][path] += 1
            if location:
                summary["created"].append(location)
        else:
            summary["failed"] += 1
            if len(summary["failures"]) < 50:
                summary["failures"].append({"time": round(time.time(), 3), "path": path,
                                            "status": status, "error": error})
    summary["ended"] = time.time()
    summary["seconds"] = round(time.monotonic() - started, 1)
    with open(out + ".tmp", "w") as handle:
        json.dump(summary, handle)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7:])
