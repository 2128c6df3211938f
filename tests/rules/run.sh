#!/usr/bin/env bash
# Unit tests of the prometheus role's alerting content:
#   1. render templates/rules/matcraft.rules.yml.j2 and
#      templates/mtail/nginx_matcraft.mtail.j2 with the role's defaults (render.py);
#   2. promtool check rules on the rendered rules;
#   3. promtool test rules: each test group of matcraft.test.yml on its own,
#      so that every group counts (and fails) separately;
#   4. mtail_test.sh on the rendered mtail program.
#
# Usage: tests/rules/run.sh [-k] [-e VARS.yml ...]
#   -k  keep the temporary directory (its path is printed)
#   -e  extra variables for render.py (the unit tests expect the defaults)
# Needs: promtool (Debian package `prometheus`), mtail (Debian package
# `mtail`), python3 with jinja2 and PyYAML (the repository's .venv has them).
# Last line: "N passed, M failed"; exit status 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

keep=0
render_args=()
while getopts "ke:" opt; do
  case "$opt" in
    k) keep=1 ;;
    e) render_args+=(--extra-vars "$OPTARG") ;;
    *) echo "usage: $0 [-k] [-e VARS.yml ...]" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
summary() { echo "$passed passed, $failed failed"; }

missing=0
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: install the Debian package 'prometheus' (apt-get install prometheus)" >&2
  missing=1
fi
if ! command -v mtail >/dev/null 2>&1; then
  echo "mtail not found: install the Debian package 'mtail' (apt-get install mtail)" >&2
  missing=1
fi
if ! "$python" -c 'import jinja2, yaml' 2>/dev/null; then
  echo "$python lacks jinja2 or PyYAML: run 'make venv' or set PYTHON" >&2
  missing=1
fi
if [[ "$missing" -ne 0 ]]; then
  failed=1
  summary
  exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/matcraft-rules-test.XXXXXX")"
if [[ "$keep" -eq 1 ]]; then
  echo "keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi

# 1. Render.
if "$python" "$here/render.py" --out "$work" "${render_args[@]}" >"$work/render.log" 2>&1; then
  ok "render templates with the role's defaults"
else
  not_ok "render templates with the role's defaults"
  sed 's/^/    /' "$work/render.log"
  summary
  exit 1
fi
rules="$work/rules/matcraft.rules.yml"

# 2. Syntax and PromQL of the rendered rules.
if promtool check rules "$rules" >"$work/check.log" 2>&1; then
  ok "promtool check rules: $(grep -o '[0-9]* rules found' "$work/check.log" || echo 'SUCCESS')"
else
  not_ok "promtool check rules"
  sed 's/^/    /' "$work/check.log"
fi

# 3. Unit tests, one promtool run per test group (the file's other top-level
#    keys are copied; rule_files stay relative to the rendered rules).
"$python" - "$here/matcraft.test.yml" "$work/rules" <<'PY'
import pathlib
import sys

import yaml

source, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
document = yaml.safe_load(source.read_text(encoding="utf-8"))
groups = document.pop("tests")
names = []
for number, group in enumerate(groups, start=1):
    name = group.get("name", f"test group {number}")
    part = dict(document, tests=[group])
    (target / f"test_{number:03d}.yml").write_text(yaml.safe_dump(part, sort_keys=False), encoding="utf-8")
    names.append(f"{number:03d}\t{name}")
(target / "test_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
PY
while IFS=$'\t' read -r number name; do
  if promtool test rules "$work/rules/test_$number.yml" >"$work/test_$number.log" 2>&1; then
    ok "promtool test rules: $name"
  else
    not_ok "promtool test rules: $name"
    sed 's/^/    /' "$work/test_$number.log"
  fi
done <"$work/rules/test_names.txt"

# 4. mtail program.
if "$here/mtail_test.sh" "$work/mtail" >"$work/mtail.log" 2>&1; then
  status=0
else
  status=$?
fi
grep -E '^(ok|not ok) - ' "$work/mtail.log" | sed 's/^\(not \)\{0,1\}ok - /&mtail: /' || true
grep -E '^    ' "$work/mtail.log" || true
line="$(tail -n 1 "$work/mtail.log")"
if [[ "$line" =~ ^mtail:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  passed=$((passed + BASH_REMATCH[1]))
  failed=$((failed + BASH_REMATCH[2]))
  if [[ "$status" -ne 0 && "${BASH_REMATCH[2]}" -eq 0 ]]; then
    not_ok "mtail_test.sh exited $status"
  fi
else
  not_ok "mtail_test.sh (no summary line; exit status $status)"
  sed 's/^/    /' "$work/mtail.log"
fi

summary
[[ "$failed" -eq 0 ]]
