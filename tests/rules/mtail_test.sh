#!/usr/bin/env bash
# Test the mtail program of the prometheus role (templates/mtail/nginx_matcraft.mtail.j2):
# feed a sample nginx JSON access log through `mtail --one_shot` and compare
# the exported counters and histogram with the expected values.
#
# Usage: tests/rules/mtail_test.sh [PROGS_DIR]
#   PROGS_DIR holds the rendered nginx_matcraft.mtail (run.sh passes it);
#   without it the template is rendered with the role's defaults first.
# Needs: mtail (Debian package `mtail`), python3 with jinja2 and PyYAML.
# Last line: "mtail: N passed, M failed"; exit status 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

if ! command -v mtail >/dev/null 2>&1; then
  echo "mtail not found: install the Debian package 'mtail' (apt-get install mtail)" >&2
  echo "mtail: 0 passed, 1 failed"
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

progs="${1:-}"
if [[ -z "$progs" ]]; then
  "$python" "$here/render.py" --out "$work/rendered" >/dev/null
  progs="$work/rendered/mtail"
fi
# mtail loads every file of the directory: give it only the program.
mkdir -p "$work/progs"
cp "$progs/nginx_matcraft.mtail" "$work/progs/"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }

# Sample log: the log_format of the program's header (keys in that order),
# plus variations the program must cope with.
cat >"$work/access.json" <<'EOF'
{"time":"2025-01-01T00:00:00+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"GET","uri":"/health","status":"200","body_bytes_sent":"15","request_time":"0.004","upstream_response_time":"0.004","request_id":"a1"}
{"time":"2025-01-01T00:00:01+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"POST","uri":"/api/v1/campaigns","status":"201","body_bytes_sent":"120","request_time":"0.500","upstream_response_time":"0.499","request_id":"a2"}
{"time":"2025-01-01T00:00:02+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"GET","uri":"/api/v1/campaigns","status":"502","body_bytes_sent":"150","request_time":"2.000","upstream_response_time":"2.000","request_id":"a3"}
{"time":"2025-01-01T00:00:03+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"DELETE","uri":"/api/v1/campaigns/7","status":"503","body_bytes_sent":"150","request_time":"2.001","upstream_response_time":"0.010, 1.990","request_id":"a4"}
{"time":"2025-01-01T00:00:04+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"PROPFIND","uri":"/","status":"500","body_bytes_sent":"0","request_time":"0.010","upstream_response_time":"-","request_id":"a5"}
{"request_id":"a6","status": 404, "request_time": 0.030, "request_method": "GET", "host": "matcraft.example.org", "upstream_response_time": ""}
{"time":"2025-01-01T00:00:06+00:00","remote_addr":"192.0.2.1","host":"matcraft.example.org","request_method":"GET","uri":"/search?q=\"status\":\"500\",\"request_time\":\"9.9\"","status":"200","body_bytes_sent":"10","request_time":"0.200","upstream_response_time":"0.199","request_id":"a7"}
192.0.2.1 - - [01/Jan/2025:00:00:07 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.0"
{"time":"2025-01-01T00:00:08+00:00","host":"matcraft.example.org","request_method":"GET","uri":"/"}
EOF

# Expected exposition lines (prometheus format, prog label off).
expected=(
  'matcraft_http_requests_total{method="GET",status="200"} 2'
  'matcraft_http_requests_total{method="POST",status="201"} 1'
  'matcraft_http_requests_total{method="GET",status="502"} 1'
  'matcraft_http_requests_total{method="DELETE",status="503"} 1'
  'matcraft_http_requests_total{method="OTHER",status="500"} 1'
  'matcraft_http_requests_total{method="GET",status="404"} 1'
  'matcraft_http_log_lines_skipped_total 2'
  'matcraft_http_request_duration_seconds_bucket{le="0.005"} 1'
  'matcraft_http_request_duration_seconds_bucket{le="0.01"} 2'
  'matcraft_http_request_duration_seconds_bucket{le="0.025"} 2'
  'matcraft_http_request_duration_seconds_bucket{le="0.05"} 3'
  'matcraft_http_request_duration_seconds_bucket{le="0.1"} 3'
  'matcraft_http_request_duration_seconds_bucket{le="0.25"} 4'
  'matcraft_http_request_duration_seconds_bucket{le="0.5"} 5'
  'matcraft_http_request_duration_seconds_bucket{le="1"} 5'
  'matcraft_http_request_duration_seconds_bucket{le="2"} 6'
  'matcraft_http_request_duration_seconds_bucket{le="5"} 7'
  'matcraft_http_request_duration_seconds_bucket{le="10"} 7'
  'matcraft_http_request_duration_seconds_bucket{le="+Inf"} 7'
  'matcraft_http_request_duration_seconds_sum 4.745'
  'matcraft_http_request_duration_seconds_count 7'
)
# Series the program must not export (the escaped URI text is no key).
unexpected=(
  'matcraft_http_requests_total{method="GET",status="500"}'
)
# Exact number of requests_total series (no stray label combinations).
expected_request_series=6

if mtail --compile_only --logtostderr --progs "$work/progs" >"$work/compile.log" 2>&1; then
  ok "mtail compiles nginx_matcraft.mtail"
else
  not_ok "mtail compiles nginx_matcraft.mtail"
  sed 's/^/    /' "$work/compile.log"
fi

if mtail --one_shot --one_shot_format prometheus --emit_prog_label=false \
    --logtostderr --address 127.0.0.1 --port 0 \
    --progs "$work/progs" --logs "$work/access.json" >"$work/metrics.txt" 2>"$work/mtail.log"; then
  ok "mtail --one_shot runs"
else
  not_ok "mtail --one_shot runs"
  sed 's/^/    /' "$work/mtail.log"
fi

for line in "${expected[@]}"; do
  if grep -qxF -- "$line" "$work/metrics.txt"; then
    ok "exports: $line"
  else
    not_ok "exports: $line"
    got="$(grep -F -- "${line% *}" "$work/metrics.txt" || true)"
    echo "    got: ${got:-<no such series>}"
  fi
done
for series in "${unexpected[@]}"; do
  if grep -qF -- "$series" "$work/metrics.txt"; then
    not_ok "does not export: $series"
  else
    ok "does not export: $series"
  fi
done
count="$(grep -c '^matcraft_http_requests_total{' "$work/metrics.txt" || true)"
if [[ "$count" == "$expected_request_series" ]]; then
  ok "exactly $expected_request_series matcraft_http_requests_total series"
else
  not_ok "exactly $expected_request_series matcraft_http_requests_total series (got $count)"
  grep '^matcraft_http_requests_total{' "$work/metrics.txt" | sed 's/^/    /' || true
fi

if [[ "$failed" -gt 0 ]]; then
  echo "--- mtail output ---"
  sed 's/^/    /' "$work/metrics.txt"
fi
echo "mtail: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
