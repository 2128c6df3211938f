#!/usr/bin/env python3
"""STAND-IN for the worker health sidecar (until roles/worker lands in this scenario).

Serves the sidecar's interface on the worker host's private address, port
9808: GET /health answers 200 {"status": "ok"} and GET /metrics exports
matcraft_worker_up 1. It runs no Celery worker and reports healthy always: the
scenario proves that the sidecar is scraped and probed, not the worker itself.
Standard library only.
"""

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METRICS = (
    "# HELP matcraft_worker_up 1 when the expected Celery workers answer ping.\n"
    "# TYPE matcraft_worker_up gauge\n"
    "matcraft_worker_up 1\n"
)


class Handler(BaseHTTPRequestHandler):
    server_version = "matcraft-worker-sidecar-standin/1"

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path == "/health":
            status, body, kind = 200, b'{"status": "ok"}', "application/json"
        elif self.path == "/metrics":
            status, body, kind = 200, METRICS.encode(), "text/plain; version=0.0.4"
        else:
            status, body, kind = 404, b'{"detail": "not found"}', "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
