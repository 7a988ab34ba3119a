#!/usr/bin/env bash
# Protected-column benchmark (on demand; NOT part of the test suite).
#
# One throwaway cluster, one OpenBao dev server, one run:
#   1. INSERT … SELECT of BENCH_ROWS rows into a table with a protected api_key column (bound to
#      id, with a mask column) vs the same table unprotected (bench/protect.sql): local key
#      (target <= 1.3x), envelope:app (target <= 1.5x, and >= 20x faster than per-value Transit,
#      measured on a twentieth of the rows), and decrypting every row, envelope vs local (<= 2x);
#      beside the trigger's baselines: the same encryption and mask inline in the INSERT (local
#      protected <= 1.15x of it) and a hand-written PL/pgSQL trigger (>= 1.5x slower than ours);
#      and a Transit column loaded with credcrypt.transit_bulk_threshold = 100 (>= 20x faster
#      than per-value Transit);
#   2. Transit key: single-row INSERTs through pgbench (-M prepared) into a table whose api_key is
#      protected with transit:app, at 1 and 16 clients, beside the same INSERTs into the
#      unprotected table. Rows/s and ratios are printed.
#
#   bash bench/protect.sh                                   # 100,000 rows, median of 5; 10 s per point
#   BENCH_ROWS=20000 BENCH_REPEAT=3 BENCH_SECONDS=5 bash bench/protect.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
ROWS="${BENCH_ROWS:-100000}"
REPEAT="${BENCH_REPEAT:-5}"
SECS="${BENCH_SECONDS:-10}"
DIR="/var/tmp/pg_credcrypt-bench-protect"
bench_ints ROWS REPEAT SECS
bench_prologue

log "1. local / envelope / transit keys: INSERT … SELECT of $ROWS rows, median of $REPEAT (+1 warm-up)"
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -v repeat="$REPEAT" -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -f "$here/protect.sql"

log "2. Transit key: single-row INSERTs, $SECS s per point (pgbench -M prepared)"
psql_ <<'SQL' >/dev/null
CREATE TABLE bench_transit (LIKE bench_plain INCLUDING ALL);
SELECT credcrypt.protect_column('bench_transit', 'api_key', key_name => 'transit:app', bind_columns => ARRAY['id'],
                                mask_column => 'api_key_mask', mask_prefix => 3);
INSERT INTO bench_transit (user_id, provider, api_key) VALUES ('warm', 'up', 'sk-warm-up-0123456789');
SQL
for t in bench_plain bench_transit; do
    cat >"$DIR/$t.sql" <<SQL
\set n random(1, 1000000000)
INSERT INTO $t (user_id, provider, api_key) VALUES ('user-' || CAST(:n AS text), 'openai', 'sk-live-' || CAST(:n AS text) || '-0123456789abcdef0123456789abcdef');
SQL
done
printf '\n%-8s %18s %18s %8s %18s\n' clients "unprotected rows/s" "transit rows/s" ratio "Transit batch size"
served() { psql_ -c "SELECT batches || ' ' || values_served FROM credcrypt.status()"; }
for c in 1 16; do
    declare -A tps=()
    for t in bench_plain bench_transit; do
        [ "$t" = bench_transit ] && read -r b0 v0 <<<"$(served)"
        out="$(pgbench -n -M prepared -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -f "$DIR/$t.sql" -c "$c" -j "$(( c < 4 ? c : 4 ))" -T "$SECS" postgres 2>&1)" || {
            echo "$out" >&2
            exit 1
        }
        tps[$t]="$(awk '/^tps = /{print int($3)}' <<<"$out")"
    done
    read -r b1 v1 <<<"$(served)"
    printf '%-8s %18s %18s %8s %18s\n' "$c" "${tps[bench_plain]}" "${tps[bench_transit]}" \
        "$(awk -v a="${tps[bench_transit]}" -v b="${tps[bench_plain]}" 'BEGIN{printf "%.2fx", a/b}')" \
        "$(awk -v b="$((b1 - b0))" -v v="$((v1 - v0))" 'BEGIN{printf "%.1f", (b > 0 ? v / b : 0)}')"
done
bad="$(psql_ -c "SELECT count(*) FROM bench_transit WHERE api_key NOT LIKE 'cc1:transit:app:%'")"
[ "$bad" = 0 ] || { log "FAILED: $bad Transit rows are not Transit ciphertexts"; exit 1; }
log "worker: $(psql_ -c "SELECT 'batches=' || batches || ' mean_batch_size=' || round(mean_batch_size::numeric, 1) FROM credcrypt.status()")"
