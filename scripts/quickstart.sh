#!/usr/bin/env bash
# The main job, end to end: brings up PostgreSQL, Redis and the durable development broker,
# builds the service, migrates, registers two demo tenants, starts the service, pushes the
# sample SCIM events (good ones, a replay, a stale update and malformed ones) and prints
# what happened per tenant: users in PostgreSQL, user_changed records, DLQ records with
# their reasons, security events and the service's own metrics, then each tenant's team
# readiness report (provisional while syncs are queued, then final), and `enablement status`
# (saved with a /metrics scrape in $ENABLEMENT_DEV_DIR). Stops the service cleanly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
dev="${ENABLEMENT_DEV_DIR:-$root/.dev}"
./scripts/dev-services.sh

echo "== building"
cargo build --quiet --workspace --bins
bin="$root/target/debug/enablement"
sim="$root/target/debug/mindtickle-sim"
export ENABLEMENT__HTTP__LISTEN="${ENABLEMENT__HTTP__LISTEN:-127.0.0.1:3000}"
# A development run on loopback: the operator token config.toml ships is accepted only so.
export ENABLEMENT__HTTP__ALLOW_DEV_TOKEN="${ENABLEMENT__HTTP__ALLOW_DEV_TOKEN:-true}"
# The demo tenants' MindTickle secrets are sealed with a key made once for this checkout.
if [ -z "${ENABLEMENT__SECRETS__KEYS:-}" ]; then
  mkdir -p "$root/.dev"
  [ -s "$root/.dev/secrets.key" ] || ( umask 077; echo "dev-1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")" >"$root/.dev/secrets.key" )
  export ENABLEMENT__SECRETS__KEYS_FILE="$root/.dev/secrets.key"
fi
base="http://$ENABLEMENT__HTTP__LISTEN"
# ENABLEMENT_QUICKSTART_DB runs it on a database of its own (the operations checks of
# scripts/test.sh do, on the tests' broker): created here, the service pointed at it.
db="${ENABLEMENT_QUICKSTART_DB:-enablement}"
if [ "$db" != enablement ]; then
  psql -h 127.0.0.1 -U postgres -X -qc "create database \"$db\"" postgres 2>/dev/null || true
  export ENABLEMENT__POSTGRES__URL="postgres://enablement_app@127.0.0.1:5432/$db"
  export ENABLEMENT__POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:5432/$db"
fi
psql_() { psql -h 127.0.0.1 -U postgres -X -q "$db" "$@"; }

echo "== migrating"
"$bin" migrate 2>/dev/null

tenants=(acme globex)
names=("Acme Corp" "Globex")
mkdir -p "$dev"
for i in "${!tenants[@]}"; do
  t=${tenants[$i]}
  if "$bin" tenant list 2>/dev/null | grep -q "\"tenant_id\":\"$t\""; then
    echo "== tenant $t already registered (token in $dev/token-$t)"
  else
    ( umask 077; "$bin" tenant add "$t" --name "${names[$i]}" 2>/dev/null >"$dev/token-$t" )
    echo "== registered tenant $t (API token saved to $dev/token-$t)"
  fi
done

sim_base="${ENABLEMENT__MINDTICKLE__BASE_URL:-http://127.0.0.1:4010}"
echo "== starting the MindTickle simulator on $sim_base"
"$sim" --listen "${sim_base#http://}" >"$dev/simulator.log" 2>&1 &
sim_pid=$!
for i in "${!tenants[@]}"; do
  # The simulator's development credential of an organisation is sim-<org>.
  echo "sim-${tenants[$i]}" | "$bin" tenant set-upstream "${tenants[$i]}" --client-id "${tenants[$i]}" 2>/dev/null
done

# /metrics and the detailed /readyz answer the operator token (or http.internal_listen).
op=(-H "Authorization: Bearer ${ENABLEMENT__HTTP__OPERATOR_TOKEN:-dev-operator-token-change-me}")

echo "== starting the service on $base"
"$bin" serve >"$dev/service.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid $sim_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "${op[@]}" "$base/readyz" 2>/dev/null | grep -q '"running":2'; then break; fi
  kill -0 $pid 2>/dev/null || { tail -20 "$dev/service.log"; exit 1; }
  sleep 0.5
done
curl -s "${op[@]}" "$base/readyz"; echo

for t in "${tenants[@]}"; do
  echo "== pushing demo/$t.jsonl to tenant.$t.scim"
  "$bin" events push --tenant "$t" <"demo/$t.jsonl" 2>&1 | grep -v INFO || true
done

echo "== waiting for every pushed event to be applied or dead-lettered"
for t in "${tenants[@]}"; do
  want=$(grep -c . "demo/$t.jsonl")
  for _ in $(seq 1 120); do
    seen=$(curl -s "${op[@]}" "$base/metrics" | awk -v t="tenant=\"$t\"" 'index($0, t) && /^enablement_scim_(events|dlq)_total/ {s += $NF} END {print s + 0}')
    [ "$seen" -ge "$want" ] && break
    sleep 0.5
  done
done

for t in "${tenants[@]}"; do
  echo
  echo "################ tenant $t ################"
  echo "-- users (PostgreSQL, RLS-scoped table)"
  psql_ -c "select user_id, email, role, manager_id, active, version from users where tenant_id = '$t' order by user_id"
  echo "-- tenant.$t.user_changed (one record per effective change)"
  "$bin" events tail --tenant "$t" --topic user_changed --from-beginning --exit 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    r=json.loads(l); p=r["payload"]
    print("  offset %-3s %-10s %-8s user=%s version=%s active=%s" % (r["offset"], p["eventId"], p["operation"], p["userId"], p["version"], p["active"]))'
  echo "-- tenant.$t.scim.dlq (rejected payloads, original bytes kept)"
  "$bin" events tail --tenant "$t" --topic dlq --from-beginning --exit 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    r=json.loads(l); h=r["headers"]
    print("  source offset %-3s reason=%-18s %s" % (h.get("dlq.source.offset"), h.get("dlq.reason"), h.get("dlq.detail")))'
  echo "-- security events"
  psql_ -c "select kind, detail->>'detail' as detail, occurred_at from security_events where tenant_id = '$t' order by id"
  token=$(cat "$dev/token-$t")
  echo "-- GET /api/tenants/$t/users (roster, twice: the second answer comes from Redis)"
  for _ in 1 2; do
    curl -s -o /dev/null -w "  HTTP %{http_code} x-cache=%header{x-cache}\n" -H "Authorization: Bearer $token" "$base/api/tenants/$t/users"
  done
  echo "-- POST /api/tenants/$t/users/rep-1/sync-progress (through $t's rate budget, from the simulator)"
  curl -s -X POST -H "Authorization: Bearer $token" "$base/api/tenants/$t/users/rep-1/sync-progress" \
    | python3 -c 'import json,sys
p=json.load(sys.stdin)
if "courses" not in p: print("  ", p); sys.exit()
for c in p["courses"]:
    print("  %-4s %-22s %-12s score=%-5s completed=%s" % (c["courseId"], c["title"], c["status"], c["quizScore"], c["completedAt"]))'
  echo "-- POST /api/tenants/$t/quiz-results (recorded once; a replay is a no-op)"
  quiz='{"submissionId":"demo-'$t'-1","userId":"rep-1","courseId":"c2","quizId":"q1","answers":[{"questionId":"a","selected":"x","correct":true},{"questionId":"b","selected":"y","correct":true},{"questionId":"c","selected":"z","correct":false},{"questionId":"d","selected":"w","correct":true}],"score":75,"submittedAt":"2026-11-20T10:00:00Z"}'
  for _ in 1 2; do
    curl -s -w "  HTTP %{http_code} " -H "Authorization: Bearer $token" -H 'content-type: application/json' -d "$quiz" "$base/api/tenants/$t/quiz-results"; echo
  done
  echo "-- another tenant's token on $t's path (expect 404)"
  other=$(cat "$dev/token-$( [ "$t" = acme ] && echo globex || echo acme )")
  curl -s -o /dev/null -w "  HTTP %{http_code}\n" -H "Authorization: Bearer $other" "$base/api/tenants/$t/users"
  echo "-- metrics"
  curl -s "${op[@]}" "$base/metrics" | grep "tenant=\"$t\"" | grep -E "^enablement_scim_(events|dlq)_total|^enablement_outbox|^enablement_cache" | sed 's/^/  /'
done
# Team readiness: queue a full progress sync of each tenant, aggregate at once (provisional:
# syncs are queued), then wait for the automatic re-aggregation once they drained (final).
print_report() {
  python3 -c 'import json,sys
r=json.load(sys.stdin)
if "tenantId" not in r: print("  ", r); sys.exit()
f=lambda v: "-" if v is None else ("%.3f" % v if isinstance(v, float) else str(v))
print("  %s report #%s for %s: %s  reasons=%s  trigger=%s" % ("PROVISIONAL" if r["provisional"] else "FINAL", r["reportId"], r["tenantId"], "avgScore=%s completionRate=%s" % (f(r["avgScore"]), f(r["completionRate"])), ",".join(r["provisionalReasons"]) or "none", r["trigger"]))
print("    active users=%s assigned=%s completed=%s pending syncs=%s stale rows=%s computed %s, inputs as of %s" % (r["activeUsers"], r["assigned"], r["completed"], r["pendingSyncJobs"], r["staleProgressRows"], r["computedAt"], r["inputsAsOf"]))
for c in r["byCourse"]:
    print("    course %-4s %-22s assigned=%-3s completion=%-6s avgScore=%s" % (c["courseId"], c["title"], c["assigned"], f(c["completionRate"]), f(c["avgScore"])))
for t in r["byTeam"]:
    print("    team of %-10s size=%-3s assigned=%-3s completion=%-6s avgScore=%s" % (t["managerId"], t["teamSize"], t["assigned"], f(t["completionRate"]), f(t["avgScore"])))'
}
for t in "${tenants[@]}"; do
  token=$(cat "$dev/token-$t")
  echo "== readiness of $t"
  echo "-- POST /api/tenants/$t/sync-progress (a full sync of every active user, queued)"
  curl -s -X POST -H "Authorization: Bearer $token" "$base/api/tenants/$t/sync-progress"; echo
  echo "-- POST /api/tenants/$t/readiness/aggregate (now, while the syncs are queued)"
  curl -s -X POST -H "Authorization: Bearer $token" "$base/api/tenants/$t/readiness/aggregate" | print_report
done
for t in "${tenants[@]}"; do
  token=$(cat "$dev/token-$t")
  echo "-- GET /api/tenants/$t/readiness once the syncs drained (the re-aggregation is automatic)"
  final=""
  for _ in $(seq 1 240); do
    r=$(curl -s -H "Authorization: Bearer $token" "$base/api/tenants/$t/readiness")
    if echo "$r" | grep -q '"provisional":false'; then final="$r"; break; fi
    sleep 0.5
  done
  if [ -n "$final" ]; then echo "$final" | print_report; else echo "  still provisional after 120 s:"; echo "$r" | print_report; fi
done
curl -s "${op[@]}" "$base/metrics" | grep -E "^enablement_readiness_(reports|reaggregations)" | sed 's/^/  /'

curl -s "$sim_base/admin/stats" | python3 -c 'import json,sys
for org, s in json.load(sys.stdin)["organisations"].items():
    print("simulator: %-8s served=%s limit_violations=%s" % (org, s["served"], s["limit_violations"]))'

echo
echo "== enablement status (one row per tenant; --json for scripts, --watch to follow)"
"$bin" status 2>/dev/null | tee "$dev/status.txt"
# The metrics as Prometheus would scrape them now (deploy/grafana's check reads this file),
# once the owner's sampled gauges (every 15 s) include the readiness reports just made.
for _ in $(seq 1 40); do
  curl -s "${op[@]}" "$base/metrics" >"$dev/metrics.txt"
  [ "$(grep -c '^enablement_readiness_report_age_seconds{' "$dev/metrics.txt")" -ge ${#tenants[@]} ] && break
  sleep 0.5
done

echo
echo "== stopping the service (SIGTERM: drain, flush, commit)"
kill -TERM $pid
wait $pid && echo "service exited cleanly" || { echo "service exit status $?"; exit 1; }
kill -TERM $sim_pid 2>/dev/null || true
trap - EXIT
echo "Run it yourself: $bin --config config.toml serve   (logs of this run: $dev/service.log)"
