#!/usr/bin/env bash
# The operations checks (run by scripts/test.sh after the cargo tests; needs the tests'
# broker in ENABLEMENT__KAFKA__BROKERS and a built workspace):
#   1. the alert and recording rules: `promtool check rules`, `promtool test rules`;
#   2. the quick start, on a database of its own with JSON logs, saving a /metrics scrape;
#   3. the Grafana dashboard and the rules against that scrape (scripts/check-dashboard.py);
#   4. the quick start's log: JSON lines with the documented fields, no secret, no e-mail
#      address (scripts/check-logs.py);
#   5. schemathesis against the running binary from its /openapi.json, every check on:
#      with the operator token, a tenant's token, and an invalid token.
#   6. two independent SCIM conformance checkers against the provider of a demo tenant:
#      scim2-tester (through scim2-cli; findings compared with the listed deliberate
#      deviations, scripts/scim-conformance-deviations.txt) and scim-sanity's probe.
# Installs what is missing: promtool (Debian package `prometheus`), schemathesis (PyPI) and
# the SCIM checkers (PyPI, pinned, in a virtualenv under ~/.cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
log() { printf '[operations] %s\n' "$*" >&2; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if ! command -v promtool >/dev/null; then
  log "installing promtool (Debian package prometheus)"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
st_version=4.32.5
if [ "$(python3 -c 'import schemathesis; print(schemathesis.__version__)' 2>/dev/null)" != "$st_version" ]; then
  log "installing schemathesis $st_version (PyPI)"
  python3 -m pip install --quiet "schemathesis==$st_version"
fi
st_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"

log "1. alert and recording rules"
promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules tests.yml)

log "2. the quick start (own database, JSON logs, the tests' broker)"
dev="$root/.dev/test-operations"
rm -rf "$dev"
mkdir -p "$dev"
db="qs_$$"
export ENABLEMENT_DEV_DIR="$dev" ENABLEMENT_QUICKSTART_DB="$db"
export ENABLEMENT__POSTGRES__URL="postgres://enablement_app@127.0.0.1:5432/$db"
export ENABLEMENT__POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:5432/$db"
export ENABLEMENT_BROKER_PORT="${ENABLEMENT__KAFKA__BROKERS##*:}"
export ENABLEMENT__KAFKA__TOPIC_PREFIX="qs$$."
export ENABLEMENT__KAFKA__GROUP_ID="enablement-qs-$$"
export ENABLEMENT__HTTP__LISTEN="127.0.0.1:$(free_port)"
export ENABLEMENT__MINDTICKLE__BASE_URL="http://127.0.0.1:$(free_port)"
export ENABLEMENT__LOG__FORMAT=json ENABLEMENT__HTTP__ALLOW_DEV_TOKEN=true
export ENABLEMENT__SECRETS__KEYS="qs-1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cleanup() {
  [ -n "${svc_pid:-}" ] && kill -TERM "$svc_pid" 2>/dev/null || true
  [ -n "${sim_pid:-}" ] && kill -TERM "$sim_pid" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -X -qc "drop database if exists \"$db\" with (force)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT
./scripts/quickstart.sh >"$dev/quickstart.out" 2>&1 || { tail -40 "$dev/quickstart.out" >&2; exit 1; }
grep -q "service exited cleanly" "$dev/quickstart.out"

log "3. dashboard and rules against the live scrape"
python3 scripts/check-dashboard.py --metrics "$dev/metrics.txt"

log "4. the quick start's log"
secrets=("${ENABLEMENT__HTTP__OPERATOR_TOKEN:-dev-operator-token-change-me}" "${ENABLEMENT__SECRETS__KEYS#*:}" sim-acme sim-globex)
for t in "$dev"/token-*; do secrets+=("$(cat "$t")"); done
python3 scripts/check-logs.py "$dev/service.log" "${secrets[@]}"

log "5. schemathesis against the running binary"
bin="$root/target/debug/enablement"
"$root/target/debug/mindtickle-sim" --listen "${ENABLEMENT__MINDTICKLE__BASE_URL#http://}" >"$dev/sim-st.log" 2>&1 &
sim_pid=$!
# The fuzzer sends many bad tokens quickly: the per-client auth-failure limit answers 429
# (documented) sooner than anything else would; raised so every route gets exercised.
ENABLEMENT__HTTP__AUTH_FAILURES_PER_MIN=100000 ENABLEMENT__LOG__FORMAT=text \
  "$bin" serve >"$dev/service-st.log" 2>&1 &
svc_pid=$!
base="http://$ENABLEMENT__HTTP__LISTEN"
op="${ENABLEMENT__HTTP__OPERATOR_TOKEN:-dev-operator-token-change-me}"
for _ in $(seq 1 120); do
  curl -sf -H "Authorization: Bearer $op" "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$svc_pid" 2>/dev/null || { tail -20 "$dev/service-st.log" >&2; exit 1; }
  sleep 0.5
done
# One worker: hypothesis describes strategies with Python's `ast`, which CPython 3.11 does not
# make safe across threads ("AST constructor recursion depth mismatch", seen with 2 workers).
st_run() {
  local name=$1 config="$root/scripts/schemathesis.toml"; shift
  if [ -n "${ENABLEMENT_ST_TENANT:-}" ]; then
    # Every tenant path parameter names this tenant (its own token's), the user one of its
    # demo users.
    config="$dev/schemathesis-$name.toml"
    { cat "$root/scripts/schemathesis.toml"; printf '\n[parameters]\n"path.tenant" = "%s"\n"path.user" = "rep-1"\n' "$ENABLEMENT_ST_TENANT"; } >"$config"
  fi
  log "   schemathesis: $name"
  (cd "$dev" && "$st_bin" --config-file "$config" --no-color run "$base/openapi.json" --checks all \
      --max-examples "${ENABLEMENT_ST_EXAMPLES:-40}" --workers 1 --seed 20261201 \
      --generation-database none --report junit \
      --baseline "$root/scripts/schemathesis-baseline.json" ${ENABLEMENT_ST_BASELINE_UPDATE:+--baseline-update} \
      --report-junit-path "$dev/schemathesis-$name.xml" "$@") >"$dev/schemathesis-$name.out" 2>&1 \
    || { tail -60 "$dev/schemathesis-$name.out" >&2; exit 1; }
  tail -3 "$dev/schemathesis-$name.out" >&2
}
st_run operator -H "Authorization: Bearer $op"
ENABLEMENT_ST_TENANT=acme st_run tenant -H "Authorization: Bearer $(cat "$dev/token-acme")"
st_run invalid-token -H "Authorization: Bearer acme.not-a-valid-token"

log "6. SCIM conformance: scim2-tester (through scim2-cli) and scim-sanity, against globex"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/enablement-scim-checkers"
scim_pins=(scim2-cli==0.6.0 scim2-tester==0.5.2 scim2-client==0.13.2 scim2-models==0.12.3 scim-sanity==0.7.4)
if ! "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qx "scim-sanity==0.7.4"; then
  log "   installing ${scim_pins[*]} (PyPI) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "${scim_pins[@]}"
fi
scim_token="$("$bin" tenant scim-token globex 2>/dev/null)"
# The token travels in the environment (scim2-cli reads SCIM_CLI_HEADERS), not in argv.
SCIM_CLI_HEADERS="Authorization: Bearer $scim_token" \
  "$venv/bin/scim" --url "$base/scim/v2/globex" test >"$dev/scim2-tester.out" 2>&1 || true
python3 "$root/scripts/check-scim-conformance.py" "$dev/scim2-tester.out" \
  "$root/scripts/scim-conformance-deviations.txt" 120 >&2 \
  || { grep -A2 '^ERROR' "$dev/scim2-tester.out" | head -40 >&2; exit 1; }
"$venv/bin/scim-sanity" probe "$base/scim/v2/globex" --token "$scim_token" \
  --i-accept-side-effects >"$dev/scim-sanity.out" 2>&1 \
  || { tail -40 "$dev/scim-sanity.out" >&2; exit 1; }
grep -E "passed, .* total" "$dev/scim-sanity.out" >&2
grep -q "Result: All tests passed." "$dev/scim-sanity.out" || { tail -40 "$dev/scim-sanity.out" >&2; exit 1; }
kill -TERM "$svc_pid"
wait "$svc_pid" || { log "service exit status $?"; exit 1; }
svc_pid=
log "operations checks passed"
