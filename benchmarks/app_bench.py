#!/usr/bin/env python3
"""App-tier benchmark: job round-trip latency and API requests per second.

It runs against the Molecule scenario "medium" (two API hosts, two worker hosts,
PostgreSQL and Redis, the contract application deployed by the collection's
roles), from medium-edge, whose client certificate is the only one the API
accepts (mutual TLS):

  make setup && .venv/bin/molecule converge -s medium
  .venv/bin/python benchmarks/app_bench.py [--jobs 100] [--duration 20] [--connections 16] [--output FILE]
  .venv/bin/molecule destroy -s medium

1. Job round trip: --jobs jobs of 0 s are posted one after another to
   medium-api1 (POST /v1/jobs); each is polled (GET /v1/jobs/ID every 10 ms)
   until its state is "done". The round trip is post -> result read back,
   through the API, Redis, a Celery worker and PostgreSQL. p50 / p95 / max.
2. API requests per second on one host: wrk with --connections keep-alive
   connections for --duration seconds against medium-api1:8000, on GET /health
   (one database round trip per request) and GET /v1/campaigns (a query that
   returns JSON rows). Median of --rounds runs; p95 latency from wrk. wrk
   cannot present a client certificate: it talks plain HTTP to socat on the
   client's loopback, which opens each of its connections to the API with
   mutual TLS (the edge's certificate, the API verified as
   api.matcraft.internal against the internal CA), so every request crosses
   the API's TLS as the edge's do.

Bounded: every wrk run lasts --duration seconds (hard timeout +30 s); the job
loop stops after --jobs jobs or 300 s. Traffic stays between the scenario's
containers. Figures are printed as JSON (--output writes them to a file).
"""

import argparse
import json
import statistics
import sys

from benchlib import address, prepare_wrk, sh, wrk

CLIENT, API = "medium-edge", "medium-api1"
CA, CERT, KEY = "/etc/matcraft/pki/ca.crt", "/etc/matcraft/edge-client/client.crt", "/etc/matcraft/edge-client/client.key"
PROXY_PORT = 18000
# Runs inside the client container (python3 of the image, no extra packages).
ROUND_TRIP = r"""
import json, ssl, sys, time, urllib.request
base, count = sys.argv[1], int(sys.argv[2])
context = ssl.create_default_context(cafile="@CA@")
context.load_cert_chain("@CERT@", "@KEY@")
deadline = time.monotonic() + 300
samples = []
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10, context=context) as resp:
        return json.loads(resp.read())
for _ in range(count):
    if time.monotonic() > deadline:
        break
    start = time.monotonic()
    job = call("POST", "/v1/jobs", {"seconds": 0, "queue": "default"})["id"]
    while True:
        state = call("GET", "/v1/jobs/%d" % job)["state"]
        if state in ("done", "failed"):
            break
        if time.monotonic() - start > 60:
            state = "timeout"
            break
        time.sleep(0.01)
    samples.append({"ms": (time.monotonic() - start) * 1000, "state": state})
print(json.dumps(samples))
""".replace("@CA@", CA).replace("@CERT@", CERT).replace("@KEY@", KEY)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args()

    base = "https://%s:8000" % address(API)
    prepare_wrk(CLIENT)
    sh("docker", "exec", "-i", CLIENT, "sh", "-c", "cat > /tmp/app-roundtrip.py", stdin=ROUND_TRIP)

    samples = json.loads(sh("docker", "exec", CLIENT, "python3", "/tmp/app-roundtrip.py", base, str(args.jobs),
                            timeout=360).stdout)
    done = [s["ms"] for s in samples if s["state"] == "done"]
    if not done:
        sys.exit("no job completed: %r" % samples[:5])
    round_trip = {"jobs": len(samples), "done": len(done),
                  "p50_ms": round(percentile(done, 0.50), 1), "p95_ms": round(percentile(done, 0.95), 1),
                  "max_ms": round(max(done), 1)}

    # socat: plain HTTP from wrk on loopback, mutual TLS to the API (a transient unit, stopped below).
    sh("docker", "exec", CLIENT, "sh", "-c",
       "command -v socat >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends socat",
       timeout=600)
    sh("docker", "exec", CLIENT, "systemd-run", "--unit=app-bench-socat", "--property=RuntimeMaxSec=1800", "socat",
       "TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr" % PROXY_PORT,
       "OPENSSL:%s:8000,cert=%s,key=%s,cafile=%s,verify=1,commonname=api.matcraft.internal" % (address(API), CERT, KEY, CA))
    rps = {}
    try:
        for path in ("/health", "/v1/campaigns"):
            runs = [wrk(CLIENT, "http://127.0.0.1:%d%s" % (PROXY_PORT, path), args.duration, args.connections)
                    for _ in range(args.rounds)]
            rps[path] = {"rps": round(statistics.median(r["rps"] for r in runs), 1),
                         "p95_ms": round(statistics.median(r["p95_us"] for r in runs) / 1000, 2),
                         "errors": sum(r["errors"] + r["non_2xx"] for r in runs), "runs": runs}
    finally:
        sh("docker", "exec", CLIENT, "systemctl", "stop", "app-bench-socat", check=False)

    report = {"settings": vars(args), "job_round_trip": round_trip, "api_one_host": rps}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
