#!/usr/bin/env python3
"""A steady, bounded stream of GET requests over several API hosts, strict about failures.

usage: rolling_client.py OUT.json COUNT INTERVAL URL [URL...]

Sends COUNT requests, one every INTERVAL seconds, round robin over the URLs,
each on a new connection. Only a connection *refused* (nothing was sent: the
host was not listening) may be tried again, on the next URL, up to
2 x len(URLs) attempts with a short pause, as a load balancer does; those
retries are counted. Any other error (a reset or closed connection, a
timeout, a status other than 200) fails the request at once. Writes a JSON
summary to OUT.json (written to a temporary name first, so a reader sees all
or nothing). Standard library only; stops by itself.

HTTPS: the server is verified against ROLLING_CLIENT_CA (default: the system's
trust store); ROLLING_CLIENT_CERT and ROLLING_CLIENT_KEY, when set, are the
client certificate (the API's mutual TLS takes the edge's only).
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

CONTEXT = ssl.create_default_context(cafile=os.environ.get("ROLLING_CLIENT_CA") or None)
if os.environ.get("ROLLING_CLIENT_CERT"):
    CONTEXT.load_cert_chain(os.environ["ROLLING_CLIENT_CERT"], os.environ.get("ROLLING_CLIENT_KEY") or None)


def attempt(url):
    try:
        with urllib.request.urlopen(url, timeout=5, context=CONTEXT) as response:
            response.read()
            return response.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError) as exc:
        return None, type(getattr(exc, "reason", exc)).__name__


def main(out, count, interval, urls):
    summary = {"sent": 0, "ok": 0, "failed": 0, "refused_retries": 0, "errors": {}, "served_by": {u: 0 for u in urls}}
    started = time.monotonic()
    for n in range(count):
        due = started + n * interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        summary["sent"] += 1
        for k in range(2 * len(urls)):
            url = urls[(n + k) % len(urls)]
            status, error = attempt(url)
            if status == 200:
                summary["ok"] += 1
                summary["served_by"][url] += 1
                break
            key = error or str(status)
            summary["errors"][key] = summary["errors"].get(key, 0) + 1
            if error != "ConnectionRefusedError":
                summary["failed"] += 1
                break
            summary["refused_retries"] += 1
            time.sleep(0.2)
        else:
            summary["failed"] += 1
    summary["seconds"] = round(time.monotonic() - started, 1)
    with open(out + ".tmp", "w") as handle:
        json.dump(summary, handle)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
