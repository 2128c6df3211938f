#!/usr/bin/env python3
"""WebSocket client for the edge scenario's tests (standard library only).

Connects over TLS (verified against --cafile, for --name) to --connect:443,
upgrades --path to a WebSocket, and writes every text message it receives as
one line to --out (flushed at once), until --messages messages arrived or
--timeout seconds passed. Exit status 0 when all expected messages arrived.
"""

import argparse
import base64
import hashlib
import os
import socket
import ssl
import struct
import sys
import time

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def recv_exact(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def read_frame(sock):
    first, second = recv_exact(sock, 2)
    opcode, size = first & 0x0F, second & 0x7F
    if size == 126:
        size = struct.unpack("!H", recv_exact(sock, 2))[0]
    elif size == 127:
        size = struct.unpack("!Q", recv_exact(sock, 8))[0]
    mask = recv_exact(sock, 4) if second & 0x80 else None
    payload = recv_exact(sock, size)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def masked_close():
    mask = os.urandom(4)
    payload = struct.pack("!H", 1000)
    return bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--path", default="/ws/campaigns/42")
    parser.add_argument("--out", required=True)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.cafile)
    raw = socket.create_connection((args.connect, 443), timeout=args.timeout)
    sock = context.wrap_socket(raw, server_hostname=args.name)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: https://%s\r\n\r\n"
    ) % (args.path, args.name, key, args.name)
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake: %r" % head)
        head += chunk
    lines = head.decode("latin-1").split("\r\n")
    expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if " 101 " not in lines[0] + " " or headers.get("sec-websocket-accept") != expected:
        sys.exit("handshake failed: %s" % head.decode("latin-1"))

    received = 0
    deadline = time.monotonic() + args.timeout
    with open(args.out, "a", buffering=1) as out:
        out.write("#connected\n")
        while received < args.messages and time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                opcode, payload = read_frame(sock)
            except socket.timeout:
                break
            if opcode == 0x8:
                break
            if opcode == 0x1:
                out.write(payload.decode() + "\n")
                received += 1
    try:
        sock.sendall(masked_close())
    except OSError:
        pass
    sock.close()
    sys.exit(0 if received >= args.messages else 1)


if __name__ == "__main__":
    main()
