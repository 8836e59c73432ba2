#!/usr/bin/env bash
# Brings up what the service and its tests need, on loopback only, installing only what is
# missing: build dependencies of the bundled librdkafka, PostgreSQL 15, Redis 7, and the
# Kafka-compatible development broker (tansu, from crates.io) with durable SQLite storage.
# Then creates the `enablement` database. Safe to run again: everything is checked first.
#
# Environment: ENABLEMENT_DEV_DIR (default ./.dev) holds the broker's data and logs;
# ENABLEMENT_BROKER_STORAGE overrides the broker storage URL (e.g. memory://tansu/);
# ENABLEMENT_BROKER_PORT the broker's port (default 9092).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dev_dir="${ENABLEMENT_DEV_DIR:-$root/.dev}"
mkdir -p "$dev_dir"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '[dev-services] %s\n' "$*" >&2; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 i
  for i in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  log "$what did not open 127.0.0.1:$port"; return 1
}

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ $apt_updated -eq 0 ]; then sudo_ apt-get update -qq; apt_updated=1; fi
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# 1. Build dependencies of rdkafka's bundled librdkafka (cmake-build feature).
apt_install cmake libcurl4-openssl-dev libssl-dev zlib1g-dev pkg-config g++ make

# 2. PostgreSQL on 127.0.0.1:5432.
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    # A fresh development install: trust loopback connections, as the default config
    # expects (never do this on a shared host).
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -1)
    sudo_ sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL"
  sudo_ pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432 PostgreSQL
fi

# 3. Redis on 127.0.0.1:6379.
if ! port_open 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$dev_dir" --logfile "$dev_dir/redis.log"
  wait_port 6379 Redis
fi

# 4. The development broker on 127.0.0.1:$ENABLEMENT_BROKER_PORT (default 9092).
# nisshi (the later name of tansu, 0.8.x): it rejoins a consumer group in about a second
# where tansu 0.6.0 can wedge it (see the reliability notes), and it serves TLS and
# SASL/SCRAM users (tests/tls.rs needs them). It needs a newer rustc than the stable
# toolchain: installed with `cargo +nightly` (about 20 minutes, once). Without a nightly
# toolchain, tansu 0.6.0 is installed instead (the Kafka TLS/SASL tests then fail).
broker_port="${ENABLEMENT_BROKER_PORT:-9092}"
if ! command -v nisshi >/dev/null && cargo +nightly --version >/dev/null 2>&1; then
  log "installing the nisshi broker from crates.io (one time, about 20 minutes)"
  cargo +nightly install --locked nisshi --version 0.8.1 >"$dev_dir/nisshi-install.log" 2>&1 \
    || { tail -20 "$dev_dir/nisshi-install.log" >&2; exit 1; }
fi
if command -v nisshi >/dev/null; then
  broker_bin=nisshi
else
  broker_bin=tansu
  if ! command -v tansu >/dev/null; then
    log "installing the tansu broker from crates.io (one time, about 17 minutes)"
    cargo install --locked tansu --version 0.6.0 --features libsql,dynostore >"$dev_dir/tansu-install.log" 2>&1 \
      || { tail -20 "$dev_dir/tansu-install.log" >&2; exit 1; }
  fi
fi
if ! port_open "$broker_port"; then
  # The broker resolves sqlite:// paths against its working directory.
  storage="${ENABLEMENT_BROKER_STORAGE:-sqlite://tansu.db}"
  log "starting $broker_bin on port $broker_port ($storage in $dev_dir)"
  cd "$dev_dir"
  nohup "$broker_bin" broker --listener-url "tcp://127.0.0.1:$broker_port" \
    --advertised-listener-url "tcp://127.0.0.1:$broker_port" \
    --storage-engine "$storage" >"$dev_dir/tansu.log" 2>&1 &
  echo $! >"$dev_dir/tansu.pid"
  cd "$root"
  wait_port "$broker_port" "$broker_bin" || { tail -5 "$dev_dir/tansu.log" >&2; exit 1; }
fi
echo "$broker_bin" >"$dev_dir/broker-bin"

# 5. The database.
if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname = 'enablement'" postgres | grep -q 1; then
  log "creating database enablement"
  psql -h 127.0.0.1 -U postgres -qc "create database enablement" postgres
fi
log "PostgreSQL, Redis and the broker are up on 127.0.0.1"
