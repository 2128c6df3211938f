#!/usr/bin/env python3
"""Where a test run's time goes: one table row per scenario.

    tests/testbed/timings.py stamp OUT.times < molecule output   (scenarios.sh: a tee'd copy)
    tests/testbed/timings.py cpu OUT.cpu CONTAINER...             (destroy.yml, before removing them)
    tests/testbed/timings.py table [SCENARIO...]                 (after scenarios.sh)

`stamp` keeps, with the epoch second they were printed, the lines that mark
Molecule's actions ("<scenario> ➜ converge: Executing") and Ansible's tasks
("TASK [...]"), so that a task lasts until the next stamped line.

`table` reads, for each scenario, .cache/molecule-logs/<scenario>.times, .time
(bash `time` of the whole `molecule test`: wall, then user and system CPU of
the controller's processes: molecule, ansible, pytest) and .cpu (CPU seconds
of each container, read from its cgroup by molecule/_shared/destroy.yml just
before it is removed), and prints a Markdown table: wall and CPU time, and the
wall time of create, prepare, converge, idempotence and verify, with the part
of prepare + converge spent in package and Python installs (tasks whose name
says install, package, apt, pip, wheel or virtualenv).
"""

from __future__ import annotations

import os
import re
import sys
import time

LOGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".cache", "molecule-logs")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "<scenario> ➜ converge: Executing" on a terminal, "[<scenario> > converge] Executing" elsewhere (CI).
ACTION = re.compile(r"➜ (\w+): Executing|\[[\w.-]+ > (\w+)\] Executing")
TASK = re.compile(r"TASK \[([^\]]*)\]")
INSTALL = re.compile(r"install|package|\bapt\b|\bpip\b|wheel|virtualenv", re.I)
ACTIONS = ("create", "prepare", "converge", "idempotence", "verify")


def stamp(out):
    with open(out, "w") as handle:
        for line in sys.stdin:
            line = ANSI.sub("", line)
            match = ACTION.search(line)
            task = TASK.search(line)
            if match:
                handle.write("%d action %s\n" % (time.time(), match.group(1) or match.group(2)))
            elif task:
                handle.write("%d task %s\n" % (time.time(), task.group(1)))
            else:
                continue
            handle.flush()


def container_cpu(out, names):
    """Write "name seconds" for each running container: the CPU time of its cgroup (v1 or v2)."""
    import json
    import subprocess

    lines = []
    for name in names:
        inspect = subprocess.run(["docker", "inspect", "--format", "{{json .}}", name], capture_output=True, text=True)
        if inspect.returncode != 0:
            continue  # not created (the destroy before create)
        container = json.loads(inspect.stdout)
        if not container.get("State", {}).get("Running"):
            continue  # a stopped container left by an earlier run: its cgroup is gone
        ident = container["Id"]
        v1 = "/sys/fs/cgroup/cpuacct/docker/%s/cpuacct.usage" % ident
        v2 = "/sys/fs/cgroup/system.slice/docker-%s.scope/cpu.stat" % ident
        if os.path.exists(v1):
            with open(v1) as handle:
                seconds = int(handle.read()) / 1e9
        elif os.path.exists(v2):
            with open(v2) as handle:
                seconds = int(re.search(r"^usage_usec (\d+)$", handle.read(), re.M).group(1)) / 1e6
        else:
            raise SystemExit("timings: no cgroup CPU figure for container %s (%s)" % (name, ident))
        lines.append("%s %.1f\n" % (name, seconds))
    if lines:
        with open(out, "w") as handle:
            handle.writelines(lines)


def spans(path):
    """({action: wall seconds}, seconds of install tasks in prepare + converge) from a .times file.

    An action lasts from its first line to the next action's; a task to the next stamped line."""
    events = []
    with open(path) as handle:
        for line in handle:
            seconds, kind, name = line.rstrip("\n").split(" ", 2)
            events.append((int(seconds), kind, name))
    actions, installs, action = {}, 0, None
    for (at, kind, name), following in zip(events, events[1:] + [None]):
        end = following[0] if following else at
        if kind == "action":
            action = name
        elif action in ("prepare", "converge") and INSTALL.search(name):
            installs += end - at
        if action is not None:
            actions[action] = actions.get(action, 0) + (end - at)
    return actions, installs


def read_time(path):
    """(wall, user, system) seconds from bash's `time` with TIMEFORMAT='%R %U %S'."""
    with open(path) as handle:
        wall, user, system = (float(x) for x in handle.read().split()[-3:])
    return wall, user, system


def read_cpu(path):
    total = 0.0
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 2:
                total += float(parts[1])
    return total


def table(names):
    if not names:
        names = sorted(n[:-len(".times")] for n in os.listdir(LOGS) if n.endswith(".times"))
    print("| scenario | wall s | CPU s (controller + hosts) | create | prepare | converge | of which installs | idempotence | verify |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    total_wall = total_cpu = 0.0
    for name in names:
        base = os.path.join(LOGS, name)
        if not os.path.exists(base + ".times"):
            print("| %s | not run | | | | | | | |" % name)
            continue
        actions, installs = spans(base + ".times")
        wall, user, system = read_time(base + ".time") if os.path.exists(base + ".time") else (0.0, 0.0, 0.0)
        hosts = read_cpu(base + ".cpu") if os.path.exists(base + ".cpu") else 0.0
        total_wall += wall
        total_cpu += user + system + hosts
        print("| %s | %.0f | %.0f (%.0f + %.0f) | %s | %s | %s | %d | %s | %s |" % (
            name, wall, user + system + hosts, user + system, hosts,
            *(str(actions.get(a, 0)) for a in ACTIONS[:3]), installs,
            *(str(actions.get(a, 0)) for a in ACTIONS[3:])))
    print("| all | %.0f | %.0f | | | | | | |" % (total_wall, total_cpu))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "stamp":
        stamp(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "cpu":
        container_cpu(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 2 and sys.argv[1] == "table":
        table(sys.argv[2:])
    else:
        sys.exit(__doc__)
