#!/usr/bin/env bash
# Runs every test of the workspace against real services: unit tests of the actors crate
# (in-memory fakes, paused clock) and the integration tests in tests/ (PostgreSQL, Redis,
# the Kafka-compatible broker and the real binary). Brings the services up first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }

# The tests own their broker: a fresh one with in-memory storage on a free port of its
# own, never whatever the quick start left on 9092 (a durable log grown by earlier runs
# serves fetches slowly enough to expire consumer sessions). Stopped when the tests end.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
test_dir="$root/.dev/test-broker"
mkdir -p "$test_dir"
if [ -f "$test_dir/tansu.pid" ]; then kill "$(cat "$test_dir/tansu.pid")" 2>/dev/null || true; fi
broker_port=$(free_port)
ENABLEMENT_DEV_DIR="$test_dir" ENABLEMENT_BROKER_PORT="$broker_port" \
  ENABLEMENT_BROKER_STORAGE=memory://tansu/ ./scripts/dev-services.sh
trap 'kill "$(cat "$test_dir/tansu.pid")" 2>/dev/null || true' EXIT
export ENABLEMENT__KAFKA__BROKERS="127.0.0.1:$broker_port"
# Brokers the tests start themselves (tests/faults.rs) use the same binary.
export ENABLEMENT_TEST_BROKER="$(cat "$test_dir/broker-bin")"

# Each integration test creates its own database t_* (the bench smoke test bench_<scenario>_<pid>);
# drop those of earlier runs.
for db in $(psql -h 127.0.0.1 -U postgres -tAc "select datname from pg_database where datname ~ '^([tm]_[0-9]+_|bench_[a-z]+_[0-9]+$)'" postgres); do
  psql -h 127.0.0.1 -U postgres -qc "drop database if exists \"$db\"" postgres >/dev/null 2>&1 || true
done

# The house stays one-way (scripts/layers.txt): no import cycle between modules and no import
# from a lower layer to a higher one, checked on the source before anything is compiled.
python3 scripts/module-graph.py --self-test
python3 scripts/module-graph.py --check

# The cargo tests, then the operations checks (rules, dashboard, logs, API fuzzing against
# the running binary: scripts/check-operations.sh); both run, either failing fails.
status=0
cargo test --workspace --all-targets "$@" || status=$?
./scripts/check-operations.sh || status=$?
exit $status
