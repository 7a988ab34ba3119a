#!/usr/bin/env bash
# Per-row (tenant) keys benchmark (on demand; NOT part of the test suite).
#
# One throwaway cluster and OpenBao dev server, one run:
#   1. INSERT … SELECT of BENCH_ROWS rows spread over BENCH_TENANTS tenants (default 1,000) into
#      a column protected with envelope:tenant-{org_id}, against the same rows into a column
#      protected with one envelope key (target <= 1.2x); median of BENCH_REPEAT after a warm-up
#      round that also creates the tenants' keys (credcrypt.auto_create_keys);
#   2. single-row INSERTs from 16 pgbench clients into a column protected with
#      transit:tenant-{org_id} (100 tenants): rows/s and the worker's mean Transit batch size.
#
#   bash bench/tenants.sh
#   BENCH_ROWS=20000 BENCH_TENANTS=200 BENCH_REPEAT=3 BENCH_SECONDS=5 bash bench/tenants.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
ROWS="${BENCH_ROWS:-100000}"
TENANTS="${BENCH_TENANTS:-1000}"
REPEAT="${BENCH_REPEAT:-5}"
SECS="${BENCH_SECONDS:-10}"
DIR="/var/tmp/pg_credcrypt-bench-tenants"
bench_ints ROWS TENANTS REPEAT SECS
bench_prologue
psql_ -c "ALTER ROLE postgres SET credcrypt.auto_create_keys = on" >/dev/null

log "1. envelope: per-tenant keys ($TENANTS tenants) vs one key, INSERT … SELECT of $ROWS rows, median of $REPEAT (+1 warm-up)"
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -v tenants="$TENANTS" -v repeat="$REPEAT" \
    -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres <<'SQL'
SET jit = off;
CREATE TABLE bench_one (id bigint PRIMARY KEY, org_id text NOT NULL, api_key text);
CREATE TABLE bench_tenant (LIKE bench_one INCLUDING ALL);
SELECT credcrypt.protect_column('bench_one', 'api_key', 'envelope:app', ARRAY['id', 'org_id']);
SELECT credcrypt.protect_column('bench_tenant', 'api_key', 'envelope:tenant-{org_id}', ARRAY['id', 'org_id']);
CREATE TEMP TABLE timings (what text, ms float8);
CREATE PROCEDURE insert_round(rows int, tenants int) LANGUAGE plpgsql AS $$
DECLARE t text; t0 timestamptz;
BEGIN
    FOREACH t IN ARRAY ARRAY['bench_one', 'bench_tenant'] LOOP
        EXECUTE format('TRUNCATE %I', t);
        t0 := clock_timestamp();
        EXECUTE format('INSERT INTO %I SELECT g, ''t'' || (g %% %s), ''sk-live-'' || g || ''-'' || md5(g::text) FROM generate_series(1, %s) g', t, tenants, rows);
        INSERT INTO timings VALUES (t, extract(epoch FROM clock_timestamp() - t0) * 1000);
        COMMIT;
    END LOOP;
END $$;
CALL insert_round(:rows, :tenants);  -- warm-up: creates the tenants' keys
TRUNCATE timings;
SELECT format('CALL insert_round(%s, %s);', :rows, :tenants) FROM generate_series(1, :repeat) \gexec
SELECT what, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_ms,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) * 1000 / :rows)::numeric, 3) AS us_per_row
  FROM timings GROUP BY what ORDER BY what;
WITH m AS (SELECT what, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM timings GROUP BY what)
SELECT format('per-tenant envelope keys (%s tenants) %sx one envelope key (target <= 1.2x: %s)', :tenants,
              round((t.ms / o.ms)::numeric, 2), CASE WHEN t.ms / o.ms <= 1.2 THEN 'PASS' ELSE 'MISS' END) AS result
  FROM m t, m o WHERE t.what = 'bench_tenant' AND o.what = 'bench_one';
SELECT count(DISTINCT split_part(api_key, ':', 3)) AS tenant_keys_used,
       count(*) FILTER (WHERE split_part(api_key, ':', 3) <> 'tenant-' || org_id) AS rows_under_another_key
  FROM bench_tenant;
SQL

log "2. transit:tenant-{org_id} (100 tenants): single-row INSERTs, 16 clients, $SECS s"
psql_ <<'SQL' >/dev/null
CREATE TABLE bench_tr (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, org_id text NOT NULL, api_key text);
SELECT credcrypt.protect_column('bench_tr', 'api_key', 'transit:tenant-{org_id}', ARRAY['id', 'org_id']);
INSERT INTO bench_tr (org_id, api_key) SELECT 't' || g, 'warm-up' FROM generate_series(0, 99) g;
SQL
cat >"$DIR/tr.sql" <<'SQL'
\set n random(0, 99)
INSERT INTO bench_tr (org_id, api_key) VALUES ('t' || CAST(:n AS text), 'sk-live-' || CAST(:n AS text) || '-0123456789abcdef0123456789abcdef');
SQL
before="$(psql_ -c "SELECT requests || ' ' || values_served || ' ' || batches FROM credcrypt.status()")"
out="$(pgbench -n -M prepared -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -f "$DIR/tr.sql" -c 16 -j 4 -T "$SECS" postgres 2>&1)" || {
    echo "$out" >&2
    exit 1
}
after="$(psql_ -c "SELECT requests || ' ' || values_served || ' ' || batches FROM credcrypt.status()")"
read -r _ v0 b0 <<<"$before"
read -r _ v1 b1 <<<"$after"
log "16 clients: $(awk '/^tps = /{print int($3)}' <<<"$out") rows/s; mean Transit batch size $(awk -v v="$((v1 - v0))" -v b="$((b1 - b0))" 'BEGIN{printf "%.1f", (b > 0 ? v / b : 0)}') values per call"
bad="$(psql_ -c "SELECT count(*) FROM bench_tr WHERE split_part(api_key, ':', 3) <> 'tenant-' || org_id")"
[ "$bad" = 0 ] || { echo "rows under another tenant's key: $bad" >&2; exit 1; }
