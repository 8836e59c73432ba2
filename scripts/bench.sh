#!/usr/bin/env bash
# Runs the benchmark like the quick start runs the service: brings up PostgreSQL, Redis and
# the broker (installing what is missing), builds the release binaries, then
#   enablement-bench --scenario <all|ingest|isolation|ratelimit|aggregate|tenants> [--size smoke]
# (the tools crate's benchmark, which runs the `enablement` binary built beside it),
# printing a table per scenario and writing the same figures to bench-results.json.
# Arguments are passed to `enablement-bench` (default: --scenario all).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
# A broker started here keeps its log in memory: a benchmark needs no durability, and the
# SQLite storage engine of the development broker is slower and has stalled under the
# ingest load (see BENCHMARKS.md). A broker already running is used as it is.
export ENABLEMENT_BROKER_STORAGE="${ENABLEMENT_BROKER_STORAGE:-memory://tansu/}"
./scripts/dev-services.sh
echo "== building (release)"
cargo build --release --quiet --workspace --bins
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--scenario all)
exec "$root/target/release/enablement-bench" --config config.toml "${args[@]}"
