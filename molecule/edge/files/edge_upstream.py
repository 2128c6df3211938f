#!/usr/bin/env python3
"""Stand-in for the MatCraft API behind the edge (Molecule scenario "edge").

Standard library only. Speaks HTTP/1.1 with keep-alive, optionally over TLS:

  GET  /health                      200 {"status": "ok", "host": ...}
  GET  /v1/...                      200 JSON: host, path, query and the request headers it got
  GET  /docs, /redoc, /openapi.json, /metrics (and under them)
                                    200 JSON: host, path and headers, like the API's
                                    docs and metrics the edge keeps off the public side
  POST /v1/echo                     200 JSON: the JSON body back
  POST /v1/datasets...              200 JSON: size and content type of the (multipart) body
  OPTIONS /v1/...                   CORS preflight: allowed only for --allowed-origin
  GET  /ws/campaigns/<id>           WebSocket: sends {"event": "subscribed", ...}, then every
                                    message published for <id> (see below)
  POST /internal/publish/<id>       loopback only: publish the JSON body to the WebSocket
                                    subscribers of campaign <id> on this host
"""

import argparse
import base64
import hashlib
import json
import queue
import select
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HOST = socket.gethostname()
SUBSCRIBERS = {}
SUBSCRIBERS_LOCK = threading.Lock()
# The API's docs, schema and metrics (first path segment): the edge keeps them off the public side.
ADMIN_PATHS = {"docs", "redoc", "openapi.json", "metrics"}


def ws_frame(payload, opcode=0x1):
    """One unmasked server-to-client WebSocket frame."""
    header = bytes([0x80 | opcode])
    size = len(payload)
    if size < 126:
        header += bytes([size])
    elif size < 65536:
        header += bytes([126]) + struct.pack("!H", size)
    else:
        header += bytes([127]) + struct.pack("!Q", size)
    return header + payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-upstream"
    allowed_origin = ""

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, fmt, *args):  # keep the journal quiet under load
        return

    def _json(self, status, payload, headers=()):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _cors(self):
        origin = self.headers.get("Origin", "")
        if origin and origin == self.allowed_origin:
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/health":
            return self._json(200, {"status": "ok", "host": HOST})
        if url.path.startswith("/ws/"):
            return self._websocket(url.path)
        if url.path.startswith("/v1/") or url.path.split("/")[1] in ADMIN_PATHS:
            return self._json(200, {
                "host": HOST, "path": url.path, "query": parse_qs(url.query),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }, self._cors())
        return self._json(404, {"detail": "Not Found"})

    def do_POST(self):
        url = urlsplit(self.path)
        body = self._body()
        if url.path == "/v1/echo":
            try:
                data = json.loads(body or b"null")
            except ValueError:
                return self._json(422, {"detail": "body is not JSON"})
            return self._json(200, {"host": HOST, "echo": data}, self._cors())
        if url.path.startswith("/v1/datasets"):
            return self._json(200, {"host": HOST, "bytes": len(body),
                                    "content_type": self.headers.get("Content-Type", "")})
        if url.path.startswith("/internal/publish/"):
            if self.client_address[0] not in ("127.0.0.1", "::1"):
                return self._json(403, {"detail": "loopback only"})
            campaign = url.path.rsplit("/", 1)[-1]
            with SUBSCRIBERS_LOCK:
                targets = list(SUBSCRIBERS.get(campaign, []))
            for target in targets:
                target.put(body.decode() or "{}")
            return self._json(200, {"host": HOST, "delivered": len(targets)})
        return self._json(404, {"detail": "Not Found"})

    def do_OPTIONS(self):
        headers = self._cors()
        if headers:
            headers += [("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE"),
                        ("Access-Control-Allow-Headers", "Authorization, Content-Type")]
        self.send_response(204 if headers else 400)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _websocket(self, path):
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            return self._json(426, {"detail": "WebSocket upgrade required"})
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        campaign = path.rstrip("/").rsplit("/", 1)[-1]
        inbox = queue.Queue()
        with SUBSCRIBERS_LOCK:
            SUBSCRIBERS.setdefault(campaign, []).append(inbox)
        try:
            hello = {"event": "subscribed", "campaign": campaign, "host": HOST}
            self.wfile.write(ws_frame(json.dumps(hello).encode()))
            self.wfile.flush()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    message = inbox.get(timeout=0.5)
                except queue.Empty:
                    # Anything from the client (a close frame, EOF) ends the session.
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    if readable:
                        break
                    continue
                self.wfile.write(ws_frame(message.encode()))
                self.wfile.flush()
            self.wfile.write(ws_frame(struct.pack("!H", 1000), opcode=0x8))
            self.wfile.flush()
        except OSError:
            pass
        finally:
            with SUBSCRIBERS_LOCK:
                SUBSCRIBERS[campaign].remove(inbox)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    tls = None

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is not None:
            # The handshake happens in the handler's thread, not in accept().
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--allowed-origin", default="")
    args = parser.parse_args()
    Handler.allowed_origin = args.allowed_origin
    server = Server((args.bind, args.port), Handler)
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.certfile, args.keyfile)
        server.tls = context
    server.serve_forever()


if __name__ == "__main__":
    main()
