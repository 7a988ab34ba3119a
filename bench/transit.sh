#!/usr/bin/env bash
# Transit benchmark (on demand; NOT part of the test suite).
#
# One run, one OpenBao dev server, one throwaway PostgreSQL cluster:
#   - pgbench with 1, 8 and 32 clients, each transaction = one encrypt_credential(…, 'transit:app')
#     through the extension (worker + shared-memory queue + coalescing);
#   - the baseline: the same client counts calling Transit directly, one HTTP request per value
#     (crates/openbao/examples/direct_load.rs, the same HTTP client the worker uses) — the pattern
#     applications use today;
#   - bulk: credcrypt.encrypt_credentials over 100,000 values, against raw 499-item Transit batches.
# Prints values/s, latency and ratios. Targets (issue): 1 client within 1.3x the latency of a direct
# call; 32 clients >= 5x the throughput of 32 direct one-per-value clients; bulk >= 100,000 values/s.
#
#   bash bench/transit.sh                 # BENCH_SECONDS=10 per point
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
SECS="${BENCH_SECONDS:-10}"
DIR="/var/tmp/pg_credcrypt-bench-transit"
bench_ints SECS
bench_prologue direct
psql_ -c "SELECT credcrypt.encrypt_credential('warm-up', 'transit:app')" >/dev/null

cat >"$DIR/enc.sql" <<'SQL'
\set id random(1, 1000000000)
SELECT credcrypt.encrypt_credential('sk-live-' || CAST(:id AS text) || '-0123456789abcdef0123456789');
SQL
log "OpenBao $("$BAO" version | awk '{print $2}') dev server on $BAO_ADDR (policy-limited service token); $SECS s per point; $(nproc) cores shared by everything"
printf '\n%-8s %16s %16s %14s %14s %8s\n' clients "ext values/s" "direct values/s" "ext lat ms" "direct lat ms" ratio
declare -A ext_tps direct_tps ext_lat direct_lat
for c in 1 8 32; do
    # -M prepared: parameters bound to a prepared statement, as node-postgres and Prisma send them.
    # The key comes from credcrypt.default_key (pgbench would read ':app' in a literal as a variable).
    out="$(PGOPTIONS='-c credcrypt.default_key=transit:app' pgbench -n -M prepared -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -f "$DIR/enc.sql" -c "$c" -j "$(( c < 4 ? c : 4 ))" -T "$SECS" postgres 2>&1)" || {
        echo "$out" >&2
        exit 1
    }
    ext_tps[$c]="$(awk '/^tps = /{print int($3)}' <<<"$out")"
    ext_lat[$c]="$(awk '/^latency average = /{print $4}' <<<"$out")"
    d="$("$direct" "$BAO_ADDR" "$DIR/keys/bao.token" app "$c" "$SECS")"
    direct_tps[$c]="$(sed -E 's/.*values_per_s=([0-9]+).*/\1/' <<<"$d")"
    direct_lat[$c]="$(sed -E 's/.*mean_latency_ms=([0-9.]+).*/\1/' <<<"$d")"
    ratio="$(awk -v a="${ext_tps[$c]}" -v b="${direct_tps[$c]}" 'BEGIN{printf "%.2fx", a/b}')"
    printf '%-8s %16s %16s %14s %14s %8s\n' "$c" "${ext_tps[$c]}" "${direct_tps[$c]}" "${ext_lat[$c]}" "${direct_lat[$c]}" "$ratio"
done

log "bulk: encrypt_credentials over 100,000 values (one statement) vs raw 499-item Transit batches"
bulk_ms="$(psql_ -c "CREATE TEMP TABLE v AS SELECT array_agg('sk-live-' || g || '-0123456789abcdef0123456789') a FROM generate_series(1, 100000) g" \
    -c "\\timing on" -c "SELECT cardinality(credcrypt.encrypt_credentials(a, 'transit:app')) FROM v" 2>&1 | awk '/^Time:/{print $2}')"
bulk_vps="$(awk -v ms="$bulk_ms" 'BEGIN{printf "%.0f", 100000/(ms/1000)}')"
raw="$("$direct" "$BAO_ADDR" "$DIR/keys/bao.token" app 1 "$SECS" 499)"
raw_vps="$(sed -E 's/.*values_per_s=([0-9]+).*/\1/' <<<"$raw")"
stats="$(psql_ -c "SELECT 'batches=' || batches || ' mean_batch_size=' || round(mean_batch_size::numeric, 1) FROM credcrypt.status()")"

echo
echo "results (values/s; ratio = extension / direct):"
awk -v e="${ext_lat[1]}" -v d="${direct_lat[1]}" 'BEGIN{printf "  1 client latency: extension %.3f ms vs direct %.3f ms = %.2fx (target <= 1.3x): %s\n", e, d, e/d, (e/d <= 1.3 ? "PASS" : "MISS")}'
awk -v e="${ext_tps[32]}" -v d="${direct_tps[32]}" 'BEGIN{printf "  32 clients throughput: extension %d vs direct one-per-value %d = %.2fx (target >= 5x): %s\n", e, d, e/d, (e/d >= 5 ? "PASS" : "MISS")}'
awk -v b="$bulk_vps" -v r="$raw_vps" 'BEGIN{printf "  bulk encrypt_credentials: %d values/s (raw 499-item batches: %d values/s, %.2fx) (target >= 100000): %s\n", b, r, b/r, (b >= 100000 ? "PASS" : "MISS")}'
echo "  worker: $stats"
