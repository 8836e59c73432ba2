#!/usr/bin/env bash
# Runs every test of the workspace against real services: unit tests of the actors crate
# (in-memory fakes, paused clock) and the integration tests in tests/ (PostgreSQL, Redis,
# the Kafka-compatible broker and the real binary). Brings the services up first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }

# Tests need no broker durability: a broker started here keeps its log in memory (faster).
export ENABLEMENT_BROKER_STORAGE="${ENABLEMENT_BROKER_STORAGE:-memory://tansu/}"
./scripts/dev-services.sh

# Each integration test creates its own database t_* (the bench smoke test bench_<scenario>_<pid>);
# drop those of earlier runs.
for db in $(psql -h 127.0.0.1 -U postgres -tAc "select datname from pg_database where datname ~ '^([tm]_[0-9]+_|bench_[a-z]+_[0-9]+$)'" postgres); do
  psql -h 127.0.0.1 -U postgres -qc "drop database if exists \"$db\"" postgres >/dev/null 2>&1 || true
done

cargo test --workspace --all-targets "$@"
