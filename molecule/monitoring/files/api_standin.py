#!/usr/bin/env python3
"""STAND-IN for the MatCraft API (until roles/api lands in this scenario).

The slice of the contract application's HTTP surface that the monitoring
scenario needs: GET /health answers 200; GET /v1/... answers 200, or the
status of an active fault; POST /v1/admin/fault {"status": 500, "seconds": N}
sets a fault for N seconds (0 clears it), as tests/contract_app does with
MATCRAFT_CONTRACT_FAULTS=1. Standard library only.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULT = {"status": 0, "until": 0.0}
LOCK = threading.Lock()


def active_fault():
    with LOCK:
        if FAULT["status"] and time.monotonic() < FAULT["until"]:
            return FAULT["status"]
    return 0


class Handler(BaseHTTPRequestHandler):
    server_version = "matcraft-api-standin/1"

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path.startswith("/v1/"):
            status = active_fault()
            if status:
                self._send(status, {"detail": "injected fault"})
            else:
                self._send(200, [])
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self):  # noqa: N802 - http.server API
        if self.path != "/v1/admin/fault":
            self._send(404, {"detail": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            status, seconds = int(body.get("status", 500)), float(body.get("seconds", 0))
        except (ValueError, TypeError, AttributeError):
            self._send(422, {"detail": "body must be {\"status\": int, \"seconds\": number}"})
            return
        with LOCK:
            FAULT["status"] = status if seconds > 0 else 0
            FAULT["until"] = time.monotonic() + seconds
        self._send(200, {"status": status, "seconds": seconds})

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
