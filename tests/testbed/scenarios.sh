#!/usr/bin/env bash
# Run Molecule scenarios, several at a time, and print one summary.
#
#   tests/testbed/scenarios.sh [-j JOBS] [--summary] SCENARIO...
#
# Every scenario has its own containers (names prefixed by the scenario) and
# its own Docker network, so scenarios can run side by side. Each one's full
# output goes to .cache/molecule-logs/<scenario>.log; when it ends, its
# outcome and duration are printed, and for a failure the last 150 lines of
# its log. Scenarios are started in the order given (put the longest first
# to finish sooner). With --summary, the last lines count every test of
# these scenarios (and the unit tests' when MATCRAFT_SUMMARY_UNIT=1, as in
# `make test`): each failure and skip named, each scenario of
# MATCRAFT_SCENARIOS_NOT_RUN named NOT RUN, then "N passed, N failed, N
# skipped" (tests/testbed/summary.py). Before it, a table of where each
# scenario's wall and CPU time went (tests/testbed/timings.py). Exit status:
# 0 when every scenario passed.
set -uo pipefail

jobs=2
summary=0
if [ "${1:-}" = "-j" ]; then jobs=$2; shift 2; fi
if [ "${1:-}" = "--summary" ]; then summary=1; shift; fi
[ "$#" -gt 0 ] || { echo "usage: $0 [-j JOBS] SCENARIO..." >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "scenarios.sh: -j needs a positive number, got '$jobs'" >&2; exit 2; }

root=$(cd "$(dirname "$0")/../.." && pwd)
logs="$root/.cache/molecule-logs"
mkdir -p "$logs" "$root/.cache/results"
rm -f "$logs"/*.log "$logs"/*.result "$logs"/*.times "$logs"/*.time "$logs"/*.cpu
for name in "$@"; do rm -f "$root/.cache/results/scenario-$name.xml"; done

run_one() {
  local name=$1 start rc
  start=$(date +%s)
  echo "=== scenario $name: started" >&2
  # The full output goes to the log; a copy to timings.py, which notes when each
  # action and task started; bash's time notes wall and controller CPU time,
  # destroy.yml the hosts' CPU time (MATCRAFT_CPU_FILE).
  local TIMEFORMAT='%R %U %S'
  { time (cd "$root" && MATCRAFT_CPU_FILE="$logs/$name.cpu" molecule test -s "$name" 2>&1 \
            | tee "$logs/$name.log" | python3 "$root/tests/testbed/timings.py" stamp "$logs/$name.times"
          exit "${PIPESTATUS[0]}"); } 2>"$logs/$name.time"
  rc=$?
  echo "$rc $(( $(date +%s) - start ))" >"$logs/$name.result"
  if [ "$rc" -eq 0 ]; then
    echo "=== scenario $name: passed in $(( $(date +%s) - start )) s" >&2
  else
    {
      echo "=== scenario $name: FAILED (exit $rc) in $(( $(date +%s) - start )) s; last lines of $logs/$name.log:"
      tail -n 150 "$logs/$name.log"
      echo "=== end of scenario $name"
    } >&2
  fi
}

declare -A pids=()
for name in "$@"; do
  [ -f "$root/molecule/$name/molecule.yml" ] || { echo "scenarios.sh: no scenario '$name' under molecule/" >&2; exit 2; }
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  run_one "$name" &
  pids[$name]=$!
done
wait

passed=0 failed=0 failed_names=""
for name in "$@"; do
  read -r rc seconds <"$logs/$name.result" 2>/dev/null || { rc=1; seconds=0; }
  printf '  %-12s %-7s %5s s\n' "$name" "$([ "$rc" -eq 0 ] && echo passed || echo FAILED)" "$seconds"
  if [ "$rc" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failed_names+=" $name"; fi
done
[ -z "$failed_names" ] || echo "failed scenarios:$failed_names (logs in $logs)"
echo "scenarios: $passed passed, $failed failed"
echo "=== where the time went (tests/testbed/timings.py; docs/testing.md explains the columns)"
python3 "$root/tests/testbed/timings.py" table "$@" || failed=$((failed + 1))
if [ "$summary" = 1 ]; then
  results=()
  for name in "$@"; do
    read -r rc _ <"$logs/$name.result" 2>/dev/null || rc=1
    results+=("$name=$rc")
  done
  unit=()
  [ "${MATCRAFT_SUMMARY_UNIT:-0}" != 1 ] || unit=(--unit "$root/.cache/results/unit.xml")
  echo "=== summary of the tests${unit:+ (unit tests and scenarios)}"
  not_run=()
  for name in ${MATCRAFT_SCENARIOS_NOT_RUN:-}; do not_run+=(--not-run "$name"); done
  python3 "$root/tests/testbed/summary.py" "${unit[@]}" "${not_run[@]}" "${results[@]}" || failed=$((failed + 1))
fi
[ "$failed" -eq 0 ]
