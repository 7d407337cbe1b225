#!/usr/bin/env bash
# Makes sure Postgres (127.0.0.1:5432, trust auth) and NATS with JetStream
# (127.0.0.1:4222) are up, installing them from Debian's packages when
# missing. Sourced or run by scripts/dev-up.sh, scripts/test.sh and .ci/run.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "installing PostgreSQL..."
    apt_install postgresql postgresql-contrib
  fi
  local version
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h 2>/dev/null | grep -q .; then
    $SUDO pg_createcluster "$version" main >/dev/null
  fi
  local hba
  hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n 1)
  # Local development and CI only: trust connections from this machine.
  if ! grep -q "voice-control-plane trust" "$hba"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # voice-control-plane trust\nhost all all ::1/128 trust # voice-control-plane trust\nlocal all all trust # voice-control-plane trust' "$hba"
  fi
  echo "starting PostgreSQL..."
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
  wait_port 5432 PostgreSQL
}

ensure_nats() {
  if port_open 4222; then return 0; fi
  if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server..."
    apt_install nats-server
  fi
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  $SUDO mkdir -p /var/lib/nats-server /var/log
  echo "starting NATS with JetStream..."
  $SUDO start-stop-daemon --start --oknodo --background --exec "$bin" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port 4222 NATS
}

ensure_postgres
ensure_nats
