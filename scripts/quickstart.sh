#!/usr/bin/env bash
# The main job, end to end: brings up PostgreSQL, Redis and the durable development broker,
# builds the service, migrates, registers two demo tenants, starts the service, pushes the
# sample SCIM events (good ones, a replay, a stale update and malformed ones) and prints
# what happened per tenant: users in PostgreSQL, user_changed records, DLQ records with
# their reasons, security events and the service's own metrics. Stops the service cleanly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
dev="${ENABLEMENT_DEV_DIR:-$root/.dev}"
./scripts/dev-services.sh

echo "== building"
cargo build --quiet --bin enablement
bin="$root/target/debug/enablement"
export ENABLEMENT__HTTP__LISTEN="${ENABLEMENT__HTTP__LISTEN:-127.0.0.1:3000}"
base="http://$ENABLEMENT__HTTP__LISTEN"
psql_() { psql -h 127.0.0.1 -U postgres -X -q enablement "$@"; }

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

echo "== starting the service on $base"
"$bin" serve >"$dev/service.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "$base/readyz" 2>/dev/null | grep -q '"running":2'; then break; fi
  kill -0 $pid 2>/dev/null || { tail -20 "$dev/service.log"; exit 1; }
  sleep 0.5
done
curl -s "$base/readyz"; echo

for t in "${tenants[@]}"; do
  echo "== pushing demo/$t.jsonl to tenant.$t.scim"
  "$bin" events push --tenant "$t" <"demo/$t.jsonl" 2>&1 | grep -v INFO || true
done

echo "== waiting for every pushed event to be applied or dead-lettered"
for t in "${tenants[@]}"; do
  want=$(grep -c . "demo/$t.jsonl")
  for _ in $(seq 1 120); do
    seen=$(curl -s "$base/metrics" | awk -v t="tenant=\"$t\"" 'index($0, t) && /^enablement_scim_(events|dlq)_total/ {s += $NF} END {print s + 0}')
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
  echo "-- metrics"
  curl -s "$base/metrics" | grep "tenant=\"$t\"" | grep -E "^enablement_scim_(events|dlq)_total|^enablement_outbox" | sed 's/^/  /'
done

echo
echo "== stopping the service (SIGTERM: drain, flush, commit)"
kill -TERM $pid
wait $pid && echo "service exited cleanly" || { echo "service exit status $?"; exit 1; }
trap - EXIT
echo "Run it yourself: $bin --config config.toml serve   (logs of this run: $dev/service.log)"
