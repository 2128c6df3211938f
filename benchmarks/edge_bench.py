#!/usr/bin/env python3
"""Edge benchmark: the same API host called through the edge and directly.

Requests per second and p95 latency of small responses (GET /health, ~40
bytes of JSON) over HTTPS with keep-alive, measured with wrk from a separate
container (edge-acme) of the Molecule scenario "edge":

  through the edge:  edge-acme -> https://edge-proxy.test/health -> nginx -> TLS -> edge-api:8000
  directly:          edge-acme -> https://api.matcraft.internal:8000/health (edge-api)

For a fair comparison the edge sends everything to edge-api during the run
(edge-api2 drained) and exempts the client from the rate limits; both come
from the role's own variables (nginx_upstream_drained,
nginx_rate_limit_trusted_cidrs) through molecule/edge/edge.yml, and the
scenario's settings are restored afterwards. The WAF stays as the scenario
has it (blocking) unless --no-waf is given.

Usage (after `molecule converge -s edge`):
  benchmarks/edge_bench.py [--duration 20] [--connections 16] [--rounds 2] [--no-waf] [--output FILE]

Bounded: every wrk run lasts --duration seconds (hard timeout +30 s), the
whole benchmark rounds x 2 runs. Traffic stays between the scenario's
containers. wrk does not verify certificates (the scenario's tests do).
Target of issue 5: the edge costs less than 15% of direct throughput.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchlib import address, prepare_wrk, sh, wrk

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT, EDGE, API = "edge-acme", "edge-proxy", "edge-api"


def molecule_inventory():
    found = sh("sh", "-c", "ls -d $HOME/.ansible/tmp/molecule.*.edge/inventory/ansible_inventory.yml", check=False)
    paths = found.stdout.split()
    if not paths:
        sys.exit("no inventory of the edge scenario: run `molecule converge -s edge` first")
    return paths[0]


def converge_edge(extra):
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT_DIR, ".cache", "collections"),
               ANSIBLE_ROLES_PATH=os.path.join(ROOT_DIR, "roles"))
    result = subprocess.run(
        ["ansible-playbook", "-i", molecule_inventory(), os.path.join(ROOT_DIR, "molecule", "edge", "edge.yml"),
         "-e", json.dumps(extra)], capture_output=True, text=True, env=env, timeout=1800, check=False)
    if result.returncode != 0:
        sys.exit("edge playbook failed:\n" + result.stdout[-3000:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-waf", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args()

    client_ip, edge_ip, api_ip = address(CLIENT), address(EDGE), address(API)
    prepare_wrk(CLIENT)
    hosts = "%s edge-proxy.test\n%s api.matcraft.internal\n" % (edge_ip, api_ip)
    subprocess.run(["docker", "exec", "-i", CLIENT, "sh", "-c",
                    "grep -v -e ' edge-proxy.test$' -e ' api.matcraft.internal$' /etc/hosts > /tmp/hosts.new; "
                    "cat /tmp/hosts.new - > /etc/hosts"], input=hosts, text=True, check=True, timeout=60)

    bench_vars = {"nginx_upstream_drained": ["edge-api2"],
                  "nginx_rate_limit_trusted_cidrs": ["127.0.0.1/32", client_ip + "/32"]}
    if args.no_waf:
        bench_vars["nginx_waf_mode"] = "off"
    converge_edge(bench_vars)
    runs = {"edge": [], "direct": []}
    try:
        for _ in range(args.rounds):
            runs["direct"].append(wrk(CLIENT, "https://api.matcraft.internal:8000/health", args.duration, args.connections))
            runs["edge"].append(wrk(CLIENT, "https://edge-proxy.test:443/health", args.duration, args.connections))
    finally:
        converge_edge({})

    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "rps": round(statistics.median(r["rps"] for r in results), 1),
            "p95_ms": round(statistics.median(r["p95_us"] for r in results) / 1000, 2),
            "errors": sum(r["errors"] + r["non_2xx"] for r in results),
        }
    ratio = summary["edge"]["rps"] / summary["direct"]["rps"]
    report = {"settings": vars(args), "runs": runs, "summary": summary,
              "edge_to_direct_rps_ratio": round(ratio, 3), "edge_cost_percent": round((1 - ratio) * 100, 1),
              "target": "edge cost < 15% of direct throughput", "target_met": ratio > 0.85}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
