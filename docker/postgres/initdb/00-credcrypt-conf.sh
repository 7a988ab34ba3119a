#!/usr/bin/env bash
# Run once by the postgres image's entrypoint on an empty data directory: include the
# pg_credcrypt settings (they take effect when the entrypoint restarts the server).
set -euo pipefail
conf="${PGDATA:?}/postgresql.conf"
grep -q "credcrypt.conf" "$conf" || echo "include '/etc/postgresql/credcrypt.conf'" >>"$conf"
