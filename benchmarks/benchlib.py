"""Helpers shared by the benchmark scripts: commands in the scenario's
containers (docker exec) and wrk runs that report JSON."""

import json
import subprocess
import sys

WRK_LUA_PATH = "/tmp/matcraft-bench.lua"
# wrk's done() hook: one JSON line with the counts and latency percentiles.
WRK_LUA = r"""
done = function(summary, latency, requests)
  io.write(string.format('{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def sh(*argv, timeout=120, check=True, stdin=None):
    """Run a command; exit with its output when it fails (unless check=False)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin)
    if check and result.returncode != 0:
        sys.exit("failed: %s\n%s%s" % (" ".join(argv), result.stdout[-2000:], result.stderr[-2000:]))
    return result


def address(container):
    """The first address of a scenario container."""
    return sh("docker", "exec", container, "hostname", "-I").stdout.split()[0]


def prepare_wrk(client):
    """Install wrk (Debian package) in the client container and put the Lua hook there."""
    sh("docker", "exec", client, "sh", "-c",
       "command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk",
       timeout=600)
    sh("docker", "exec", "-i", client, "sh", "-c", "cat > %s" % WRK_LUA_PATH, stdin=WRK_LUA)


def wrk(client, url, duration, connections):
    """One bounded wrk run from the client container: requests, errors, rps, latency percentiles."""
    result = sh("docker", "exec", client, "timeout", str(duration + 30), "wrk", "-t2", "-c%d" % connections,
                "-d%ds" % duration, "-H", "Connection: keep-alive", "-s", WRK_LUA_PATH, url,
                timeout=duration + 60)
    data = json.loads([x for x in result.stdout.splitlines() if x.startswith('{"requests"')][-1])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data
