#!/usr/bin/env bash
# Re-encryption benchmark (on demand; NOT part of the test suite).
#
# One throwaway cluster and one OpenBao dev server: a table of BENCH_ROWS rows whose protected
# column holds local-key ciphertexts is migrated to Transit (CALL credcrypt.reencrypt_column …
# 'transit:app'), then the Transit key is rotated and the column re-encrypted v1 → v2. Prints
# rows/s for each, beside the raw Transit batch throughput measured in the same run
# (crates/openbao/examples/direct_load.rs, 499-item batches). Target: >= 50,000 rows/s.
#
#   bash bench/migrate.sh                          # 100,000 rows, batch_size 2000
#   BENCH_ROWS=20000 BENCH_BATCH=500 bash bench/migrate.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
ROWS="${BENCH_ROWS:-100000}"
BATCH="${BENCH_BATCH:-2000}"
DIR="/var/tmp/pg_credcrypt-bench-migrate"
bench_ints ROWS BATCH
bench_prologue direct
printf 'path "transit/keys/app/rotate" { capabilities = ["update"] }\n' >>"$DIR/policy.hcl"
"$BAO" policy write credcrypt "$DIR/policy.hcl" >/dev/null
log "rows=$ROWS batch_size=$BATCH"

psql_ <<SQL >/dev/null
CREATE TABLE creds (id bigint PRIMARY KEY, user_id text NOT NULL, api_key text);
SELECT credcrypt.protect_column('creds', 'api_key', key_name => 'local', bind_columns => ARRAY['id'], mask_column => 'api_key_mask');
INSERT INTO creds (id, user_id, api_key) SELECT g, 'user-' || g, 'sk-live-' || g || '-0123456789abcdef0123456789' FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE creds;
SQL
timed_call() {  # timed_call LABEL SQL… : prints LABEL, seconds and rows/s
    local label="$1" start end secs
    shift
    start=$(date +%s.%N)
    psql -X -q -v ON_ERROR_STOP=1 -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -c "$*" 2>&1 | grep -v "rows/s, ETA" | sed 's/^/  /'
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.2f", b-a}')
    printf '%-28s %8s s %10s rows/s\n' "$label" "$secs" "$(awk -v n="$ROWS" -v s="$secs" 'BEGIN{printf "%.0f", n/s}')"
    echo "$label $(awk -v n="$ROWS" -v s="$secs" 'BEGIN{printf "%.0f", n/s}')" >>"$DIR/results"
}
: >"$DIR/results"
timed_call "local -> transit:app v1" "CALL credcrypt.reencrypt_column('creds', 'api_key', 'transit:app', batch_size => $BATCH)"
psql_ -c "SELECT credcrypt.rotate_key('transit:app')" >/dev/null
timed_call "transit v1 -> v2" "CALL credcrypt.reencrypt_column('creds', 'api_key', batch_size => $BATCH)"
usage="$(psql_ -c "SELECT string_agg(source || ' ' || key_name || ' v' || key_version || ': ' || \"values\", ', ') FROM credcrypt.key_usage('creds')")"
[ "$usage" = "transit transit:app v2: $ROWS" ] || { log "FAILED: key usage after the runs: $usage"; exit 1; }
raw="$("$direct" "$BAO_ADDR" "$DIR/keys/bao.token" app 1 5 499)"
raw_vps="$(sed -E 's/.*values_per_s=([0-9]+).*/\1/' <<<"$raw")"
echo
echo "results (key usage after the runs: $usage):"
while read -r a b c d rate; do
    label="$a $b $c${d:+ $d}"
    awk -v l="$label" -v r="$rate" -v raw="$raw_vps" 'BEGIN{printf "  %-26s %7d rows/s (target >= 50000: %s); raw Transit encrypt batches %d values/s (%.2fx)\n", l, r, (r >= 50000 ? "PASS" : "MISS"), raw, r/raw}'
done <"$DIR/results"
echo "  (each migrated row costs one Transit decrypt or local decrypt, one Transit encrypt and one Transit decrypt for verification, and an UPDATE)"
