#!/usr/bin/env python3
"""Deploy-time benchmark: a cold deployment of the small tier, then a second run.

It uses the local demo (tests/demo/demo.sh, what `make demo` runs), so it
needs the venv and the test image (`make venv testbed`):

  .venv/bin/python benchmarks/cold_deploy.py [--apt-direct] [--keep] [--no-verify] [--output FILE]

1. Tears down any demo (`tests/demo/demo.sh down`: containers demo-*, the
   network matcraft-demo, .cache/demo).
2. Cold deployment, timed: fresh containers, inventory, secrets and
   matcraft.deploy.site (`tests/demo/demo.sh deploy`).
3. Second run, timed: matcraft.deploy.site again on the same inventory
   (`tests/demo/demo.sh site`); its changed tasks are summed from the PLAY
   RECAP. Targets: zero changes, and under a quarter of the cold time.
4. Unless --no-verify: matcraft.deploy.verify, its summary line (not timed).
5. Unless --keep: tears the demo down again.

Packages: the test image's hosts fetch them through the testbed's
apt-cacher-ng on this machine, which after the first run serves them from its
disk, so the cold deployment downloads nothing from the network (a best case
no VM has). --apt-direct makes the hosts fetch from the Debian mirror, as VMs
do (MATCRAFT_DEMO_APT_DIRECT=1 for tests/demo/demo.yml); the Python packages
come from the package index either way.

Prints the figures and the machine (nproc, RAM, load average at the start)
as JSON; --output writes them to a file too. Each step's whole output is in
.cache/benchmarks/cold_deploy-<step>.log. Bounded: each step has a timeout
(--timeout, default 5400 s).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tests", "demo", "demo.sh")
LOG_DIR = os.path.join(ROOT, ".cache", "benchmarks")
RECAP_LINE = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def machine():
    """nproc, RAM and the load average when the benchmark starts."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo.read(), re.M).group(1))
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kib / 1024 / 1024, 1),
            "load_at_start": [round(x, 2) for x in os.getloadavg()], "docker": docker or "unknown"}


def step(name, *argv, timeout, extra_env=None):
    """Run one demo.sh step with its output in a log file; exit with the log's tail when it fails."""
    os.makedirs(LOG_DIR, exist_ok=True)
    log_path = os.path.join(LOG_DIR, "cold_deploy-%s.log" % name)
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **(extra_env or {}))
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run([DEMO, *argv], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env, timeout=timeout, check=False)
    seconds = time.monotonic() - start
    with open(log_path, encoding="utf-8") as log:
        output = log.read()
    if result.returncode != 0:
        sys.exit("step %s failed (exit %d) after %.0f s; the end of %s:\n%s"
                 % (name, result.returncode, seconds, log_path, output[-4000:]))
    return seconds, output


def recap(output):
    """Sum of the last PLAY RECAP's counts over its hosts."""
    block = output[output.rindex("PLAY RECAP"):] if "PLAY RECAP" in output else ""
    rows = RECAP_LINE.findall(block)
    if not rows:
        sys.exit("no PLAY RECAP in the output")
    return {"hosts": len(rows), "ok": sum(int(r[1]) for r in rows), "changed": sum(int(r[2]) for r in rows),
            "changed_by_host": {r[0]: int(r[2]) for r in rows if int(r[2])},
            "failed": sum(int(r[4]) + int(r[3]) for r in rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apt-direct", action="store_true",
                        help="hosts fetch packages from the Debian mirror, not the testbed's apt cache")
    parser.add_argument("--keep", action="store_true", help="leave the demo running at the end")
    parser.add_argument("--no-verify", action="store_true", help="skip matcraft.deploy.verify after the second run")
    parser.add_argument("--timeout", type=int, default=5400, help="seconds each step may take")
    parser.add_argument("--output")
    args = parser.parse_args()

    figures = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "packages": "Debian mirror (--apt-direct)" if args.apt_direct else "testbed apt-cacher-ng"}
    print("machine: %(nproc)s CPUs, %(ram_gib)s GiB RAM, load %(load_at_start)s, Docker %(docker)s"
          % figures["machine"], flush=True)
    print("packages from: %s" % figures["packages"], flush=True)

    step("down", "down", timeout=600)
    print("cold deployment (fresh containers, inventory, secrets, matcraft.deploy.site) ...", flush=True)
    cold, cold_output = step("cold", "deploy", timeout=args.timeout,
                             extra_env={"MATCRAFT_DEMO_APT_DIRECT": "1" if args.apt_direct else "0"})
    figures["cold_seconds"] = round(cold)
    figures["cold_recap"] = recap(cold_output)
    print("  %.0f s" % cold, flush=True)

    print("second run of matcraft.deploy.site ...", flush=True)
    second, second_output = step("second", "site", timeout=args.timeout)
    second_recap = recap(second_output)
    figures["second_seconds"] = round(second)
    figures["second_changed"] = second_recap["changed"]
    figures["second_changed_by_host"] = second_recap["changed_by_host"]
    figures["second_tasks_ok"] = second_recap["ok"]
    figures["ratio_second_to_cold"] = round(second / cold, 3)
    figures["target_zero_changes"] = second_recap["changed"] == 0
    figures["target_under_quarter"] = second < cold / 4
    print("  %.0f s, %d changed" % (second, second_recap["changed"]), flush=True)

    if not args.no_verify:
        _, verify_output = step("verify", "verify", timeout=600)
        summary = re.findall(r"(\d+ of \d+ checks passed)", verify_output)
        figures["verify"] = summary[-1] if summary else "no summary found"

    if not args.keep:
        step("down-end", "down", timeout=600)

    text = json.dumps(figures, indent=2)
    print(text)
    print("cold %ds, second run %ds (%d changed), second/cold %.3f; targets: zero changes %s, under a quarter %s"
          % (figures["cold_seconds"], figures["second_seconds"], figures["second_changed"],
             figures["ratio_second_to_cold"], "HOLDS" if figures["target_zero_changes"] else "MISSED",
             "HOLDS" if figures["target_under_quarter"] else "MISSED"))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
