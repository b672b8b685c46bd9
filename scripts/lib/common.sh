# Shared by scripts/run and scripts/test: make sure what wsmq needs on this machine is there.
# shellcheck shell=bash

AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}

log() { printf '==> %s\n' "$*" >&2; }

amqp_port_open() {
  (exec 3<>"/dev/tcp/${AMQP_HOST}/${AMQP_PORT}") 2>/dev/null
}

# Starts the local RabbitMQ if it is not answering, installing it first (Debian, as root) if
# it is missing. Waits until the AMQP port accepts connections.
ensure_rabbitmq() {
  if amqp_port_open; then
    return 0
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing rabbitmq-server (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
    else
      log "RabbitMQ is not installed: run 'sudo apt-get install rabbitmq-server' (Debian/Ubuntu)"
      return 1
    fi
  fi
  if ! amqp_port_open; then
    log "starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached || true
  fi
  for _ in $(seq 1 120); do
    if amqp_port_open; then
      # The port opens a moment before the node accepts logins; let it finish booting.
      rabbitmqctl await_startup >/dev/null 2>&1 || sleep 1
      log "RabbitMQ is up on ${AMQP_HOST}:${AMQP_PORT}"
      return 0
    fi
    sleep 1
  done
  log "RabbitMQ did not come up on ${AMQP_HOST}:${AMQP_PORT} within 120 s"
  return 1
}

# The Python worker in the test suite uses pika.
ensure_pika() {
  if python3 -c 'import pika' 2>/dev/null; then
    return 0
  fi
  log "installing pika for the Python worker test"
  python3 -m pip install --quiet --disable-pip-version-check pika 2>/dev/null \
    || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq python3-pika; }
}

# The Python worker SDK (clients/python), installed as a user installs it (with pika). The e2e
# tests run this tree's copy (PYTHONPATH), so a copy installed from another checkout does no harm.
ensure_wsmq_worker() {
  if python3 -c 'import wsmq_worker, pika' 2>/dev/null; then
    return 0
  fi
  log "installing the Python worker SDK (pip install -e clients/python)"
  # Where pip may not install (a distribution's externally managed Python), the tests still run
  # the tree's copy through PYTHONPATH, with the pika that ensure_pika installed.
  python3 -m pip install --quiet --disable-pip-version-check -e clients/python \
    || log "could not pip install clients/python; the tests use it from the tree (PYTHONPATH)"
}

ensure_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    return 0
  fi
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
}

# Node.js 20+ runs the JavaScript client's tests and the browser test.
ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing nodejs and npm (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else
    log "Node.js 20+ is not installed: run 'sudo apt-get install nodejs npm'"
    return 1
  fi
}

# The browser test drives Debian's chromium with playwright-core (clients/js/package-lock.json);
# it never downloads a browser of its own. The Node worker SDK (clients/js/worker) runs on
# amqplib (clients/js/worker/package-lock.json).
ensure_js_deps() {
  if [ ! -d clients/js/node_modules/playwright-core ]; then
    log "installing the JavaScript test dependencies (npm ci in clients/js)"
    (cd clients/js && npm ci --no-audit --no-fund --silent)
  fi
  if [ ! -d clients/js/worker/node_modules/amqplib ]; then
    log "installing the Node worker SDK's dependencies (npm ci in clients/js/worker)"
    (cd clients/js/worker && npm ci --no-audit --no-fund --silent)
  fi
}

ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing chromium for the browser test (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    log "chromium is not installed: run 'sudo apt-get install chromium'"
    return 1
  fi
}

# The Python client example uses the websockets package.
ensure_websockets() {
  if python3 -c 'import websockets' 2>/dev/null; then
    return 0
  fi
  log "installing websockets for the Python client example"
  python3 -m pip install --quiet --disable-pip-version-check websockets 2>/dev/null \
    || { [ "$(id -u)" -eq 0 ] && apt-get install -y -qq python3-websockets; }
}
