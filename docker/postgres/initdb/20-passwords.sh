#!/usr/bin/env bash
# Run once by the postgres image's entrypoint: login passwords of the application roles from
# compose secrets (files), passed to psql as variables (never in the statement text log).
set -euo pipefail
for role in app app_owner reporting monitor; do
    file="/run/secrets/pg_${role}_password"
    [ -r "$file" ] || continue
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
        -v role="$role" -v pw="$(cat "$file")" <<'SQL'
ALTER ROLE :"role" PASSWORD :'pw';
SQL
done
