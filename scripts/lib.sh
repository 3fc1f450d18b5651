# Shared shell helpers: logging, waiting, and provisioning of the services Switchboard
# needs (installed with apt-get when missing, started when stopped). Sourced by
# scripts/test and deploy/cluster.

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@"; then return 0; fi
    sleep 0.2
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  return 1
}

pg_ok() { psql "$SB_TEST_PG_URL" -Atqc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if pg_ok; then return; fi
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  local ver
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  local hba="/etc/postgresql/$ver/main/pg_hba.conf"
  # Tests run as root against a throwaway local server: trust loopback connections.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null \
    || pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  wait_for 60 "PostgreSQL" pg_ok
}

ensure_rabbitmq() {
  if port_open 5672; then return; fi
  if ! command -v rabbitmq-server >/dev/null; then
    log "installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for 120 "RabbitMQ on 127.0.0.1:5672" port_open 5672
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}


# Debian's Chromium for the browser tests (SB_CHROMIUM overrides the path), and the
# browser tests' one npm package (playwright-core, pinned in tests/browser/package-lock.json).
ensure_chromium() {
  SB_CHROMIUM="${SB_CHROMIUM:-/usr/bin/chromium}"
  export SB_CHROMIUM
  if [ -x "$SB_CHROMIUM" ]; then return; fi
  log "installing Chromium"
  apt_install chromium fonts-dejavu-core
}

ensure_browser_test_deps() {
  ensure_chromium
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing Node.js"
    apt_install nodejs npm
  fi
  if [ ! -d tests/browser/node_modules/playwright-core ]; then
    log "npm ci (tests/browser)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
