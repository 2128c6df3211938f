#!/usr/bin/env python3
"""Raw HTTP/1.x client for the edge scenario's malformed-request tests
(standard library only).

Reads a JSON corpus from --corpus: a list of objects
  {"name": str, "port": 80 or 443, "tls": bool, "parts": [[text, count], ...]}
where the bytes sent are the concatenation of text * count, text encoded as
Latin-1 (so any byte 0-255 can be written as a \\u00XX escape). Each entry is
sent on its own connection to --connect:port, over TLS verified against
--cafile for --name when "tls" is true, without ALPN (HTTP/1.1) and without
any normalisation. The answer is read until its header and Content-Length
body are complete, the peer closes, or --timeout seconds pass.

Prints one JSON list: per entry {"name", "status" (int or null),
"status_line", "closed" (the peer closed the connection), "timed_out",
"error", "head" (the response header, up to 2 KiB), "body" (up to 2 KiB)}.
"""

import argparse
import json
import socket
import ssl
import sys
import time


def payload(entry):
    return b"".join(text.encode("latin-1") * count for text, count in entry["parts"])


def read_answer(sock, timeout):
    """(data, closed, timed_out) of one response."""
    data, closed, timed_out = b"", False, False
    deadline = time.monotonic() + timeout
    while True:
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if length is not None and len(body) >= length:
                return data, closed, timed_out
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, closed, True
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, closed, True
        except ssl.SSLError as err:
            # nginx may close without close_notify after an error answer.
            if data or "EOF" in str(err) or "UNEXPECTED" in str(err):
                return data, True, False
            raise
        except ConnectionResetError:
            return data, True, False
        if not chunk:
            return data, True, False
        data += chunk


def probe(entry, args):
    result = {"name": entry["name"], "status": None, "status_line": "", "closed": False, "timed_out": False,
              "error": "", "head": "", "body": ""}
    raw = socket.create_connection((args.connect, entry["port"]), timeout=args.timeout)
    try:
        sock = raw
        if entry["tls"]:
            context = ssl.create_default_context(cafile=args.cafile)
            sock = context.wrap_socket(raw, server_hostname=args.name)
        try:
            sock.sendall(payload(entry))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError) as err:
            # nginx may answer and close before the whole request was sent
            # (a header block or a body it refuses): read what it answered.
            result["error"] = "send: %s" % err
        try:
            data, result["closed"], result["timed_out"] = read_answer(sock, args.timeout)
        except (OSError, ssl.SSLError) as err:
            data = b""
            result["closed"] = True
            result["error"] = (result["error"] + " recv: %s" % err).strip()
    finally:
        raw.close()
    head, _, body = data.partition(b"\r\n\r\n")
    result["head"] = head[:2048].decode("latin-1")
    result["body"] = body[:2048].decode("latin-1")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    result["status_line"] = status_line
    fields = status_line.split(" ")
    if len(fields) >= 2 and fields[0].startswith("HTTP/") and fields[1].isdigit():
        result["status"] = int(fields[1])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True, help="address of the edge")
    parser.add_argument("--name", required=True, help="TLS server name (SNI and verification)")
    parser.add_argument("--cafile", required=True, help="CA bundle that verifies the edge's certificate")
    parser.add_argument("--corpus", required=True, help="JSON corpus file")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between two requests")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as handle:
        corpus = json.load(handle)
    results = []
    for entry in corpus:
        try:
            results.append(probe(entry, args))
        except (OSError, ssl.SSLError) as err:
            results.append({"name": entry["name"], "status": None, "status_line": "", "closed": True,
                            "timed_out": False, "error": "connect: %s" % err, "head": "", "body": ""})
        time.sleep(args.pause)
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
