#!/usr/bin/env python3
"""One summary of a test run: every scenario's tests and the unit tests.

    tests/testbed/summary.py [--unit FILE.xml] [--not-run NAME]... SCENARIO=RC...

Reads the JUnit XML that pytest wrote for the unit tests (`make unit`) and for
each scenario's testinfra run (.cache/results/scenario-<name>.xml, see
.config/molecule/config.yml). A scenario that failed before its tests ran
(create, converge, idempotence) has no results: it counts as one failure of
its own. Prints each failure and each skip with its reason, then one last
line: "N passed, N failed, N skipped" (and ", N scenarios NOT RUN" when
--not-run names scenarios this run left out: `make test` leaves out those of
SCENARIOS_EXTRA, each named on a line of its own). Exit status 1 when
anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".cache", "results")


def read(path, label):
    """(passed, failed names, skipped (name, reason)) of one JUnit XML file."""
    root = ET.parse(path).getroot()
    passed, failed, skipped = 0, [], []
    for case in root.iter("testcase"):
        name = "%s: %s::%s" % (label, case.get("classname", ""), case.get("name", ""))
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skip = case.find("skipped")
            skipped.append((name, " ".join((skip.get("message") or skip.text or "").split())))
        else:
            passed += 1
    return passed, failed, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", help="JUnit XML of the unit tests")
    parser.add_argument("--not-run", action="append", default=[], metavar="NAME",
                        help="a scenario this run left out (named, never counted as passed)")
    parser.add_argument("scenarios", nargs="*", help="NAME=RC of each scenario run")
    args = parser.parse_args(argv)
    passed, failed, skipped = 0, [], []
    sources = [(args.unit, "unit")] if args.unit else []
    for item in args.scenarios:
        name, _, rc = item.partition("=")
        path = os.path.join(RESULTS, "scenario-%s.xml" % name)
        if os.path.exists(path):
            sources.append((path, "scenario " + name))
            if rc != "0":
                # Its tests may all have passed while a step after them failed (destroy).
                failed.append("scenario %s: exit %s after its tests (see its log)" % (name, rc))
        elif rc == "0":
            failed.append("scenario %s: passed but wrote no test results (%s)" % (name, path))
        else:
            failed.append("scenario %s: failed before its tests ran (exit %s; see its log)" % (name, rc))
    for path, label in sources:
        if not path or not os.path.exists(path):
            failed.append("%s: no results (%s)" % (label, path))
            continue
        p, f, s = read(path, label)
        passed, failed, skipped = passed + p, failed + f, skipped + s
    for name in failed:
        print("failed: %s" % name)
    for name, reason in skipped:
        print("skipped: %s: %s" % (name, reason))
    for name in args.not_run:
        print("NOT RUN: scenario %s: left out of this run (SCENARIOS_EXTRA in the Makefile says why;"
              " make scenarios-all runs it)" % name)
    not_run = ", %d scenario%s NOT RUN" % (len(args.not_run), "" if len(args.not_run) == 1 else "s") \
        if args.not_run else ""
    print("%d passed, %d failed, %d skipped%s" % (passed, len(failed), len(skipped), not_run))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
