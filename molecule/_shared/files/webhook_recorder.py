#!/usr/bin/env python3
"""Test webhook receiver: appends the JSON body of every POST, one per line, to a file.

The site scenario's tests start it (systemd-run, bounded by
RuntimeMaxSec) on the monitoring host, where Alertmanager's receiver
`test-webhook` posts to it. Standard library only.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    output = None

    def do_POST(self):  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            line = json.dumps(json.loads(body), separators=(",", ":"))
        except ValueError:
            line = json.dumps({"unparsed": body.decode("utf-8", "replace")})
        with open(self.output, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9999")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    Handler.output = args.output
    host, port = args.listen.rsplit(":", 1)
    HTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
