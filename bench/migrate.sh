#!/usr/bin/env bash
# Re-encryption benchmark (on demand; NOT part of the test suite).
#
# One throwaway cluster and one OpenBao dev server. For each batch size (BENCH_BATCHES, default
# "500 2000 5000"), a fresh, vacuumed table of BENCH_ROWS rows whose protected column holds
# local-key ciphertexts (bound to id, with a mask) is migrated local -> transit:app, then the
# Transit key is rotated, the table vacuumed and the column re-encrypted to the new version
# (Transit -> Transit); another fresh table is migrated local -> envelope:app. Every run verifies every value (the procedure decrypts each new
# ciphertext before writing it) and the script checks key_usage after each.
#
# Baseline, same run: raw Transit encrypt batches from one client, one request at a time
# (crates/openbao/examples/direct_load.rs, 449-item batches: one request each, the largest
# without associated data) — what the issue's ratios are against. Printed beside it: the same
# client with 4 threads (what OpenBao gives on all its cores), and the same client doing the
# OpenBao work of a migrated row (encrypt with associated data, decrypt the answer again; with
# associated data 449 values are two requests, sent together): the most any migration to
# Transit can reach here.
#
# Targets: local -> Transit >= 0.4x raw; Transit -> Transit >= 0.28x raw; to envelope
# >= 100,000 rows/s.
#
#   bash bench/migrate.sh                                  # 100,000 rows, batch sizes 500 2000 5000
#   BENCH_ROWS=20000 BENCH_BATCHES=2000 bash bench/migrate.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
ROWS="${BENCH_ROWS:-100000}"
BATCHES="${BENCH_BATCHES:-500 2000 5000}"
DIR="/var/tmp/pg_credcrypt-bench-migrate"
bench_ints ROWS
for b in $BATCHES; do bench_ints b; done
bench_prologue direct
printf 'path "transit/keys/app/rotate" { capabilities = ["update"] }\n' >>"$DIR/policy.hcl"
"$BAO" policy write credcrypt "$DIR/policy.hcl" >/dev/null
log "rows=$ROWS batch sizes: $BATCHES"

raw_of() {  # raw_of CLIENTS [MODE]: values/s of raw 449-item batches (MODE encrypt or roundtrip-ad)
    "$direct" "$BAO_ADDR" "$DIR/keys/bao.token" app "$1" 5 449 "${2:-encrypt}" | sed -E 's/.*values_per_s=([0-9]+).*/\1/'
}
timed_call() {  # timed_call SQL… : prints rows/s
    local start end
    start=$(date +%s.%N)
    psql -X -q -v ON_ERROR_STOP=1 -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -c "$*" 2>&1 | grep -v "rows/s, ETA" | sed 's/^/  /' >&2
    end=$(date +%s.%N)
    awk -v n="$ROWS" -v a="$start" -v b="$end" 'BEGIN{printf "%.0f", n/(b-a)}'
}
usage_is() {  # usage_is EXPECTED : fails the run unless key_usage says exactly that
    local usage
    usage="$(psql_ -c "SELECT string_agg(source || ' ' || key_name || ' v' || key_version || ': ' || \"values\", ', ') FROM credcrypt.key_usage('creds')")"
    [ "$usage" = "$1" ] || { log "FAILED: key usage after the run: $usage (expected $1)"; exit 1; }
}

raw1="$(raw_of 1)"
raw4="$(raw_of 4)"
rawrt="$(raw_of 1 roundtrip-ad)"
: >"$DIR/results"
version=1
fresh_table() {  # a new table of ROWS local-key values, vacuumed (every migration starts from one)
    psql_ <<SQL >/dev/null
DROP TABLE IF EXISTS creds;
CREATE TABLE creds (id bigint PRIMARY KEY, user_id text NOT NULL, api_key text, api_key_mask text);
SELECT credcrypt.protect_column('creds', 'api_key', key_name => 'local', bind_columns => ARRAY['id'], mask_column => 'api_key_mask');
INSERT INTO creds (id, user_id, api_key) SELECT g, 'user-' || g, 'sk-live-' || g || '-0123456789abcdef0123456789' FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE creds;
SQL
}
for batch in $BATCHES; do
    log "batch_size $batch"
    fresh_table
    a="$(timed_call "CALL credcrypt.reencrypt_column('creds', 'api_key', 'transit:app', batch_size => $batch)")"
    usage_is "transit transit:app v$version: $ROWS"
    psql_ -c "SELECT credcrypt.rotate_key('transit:app')" -c "VACUUM ANALYZE creds" >/dev/null
    version=$((version + 1))
    b="$(timed_call "CALL credcrypt.reencrypt_column('creds', 'api_key', batch_size => $batch)")"
    usage_is "transit transit:app v$version: $ROWS"
    fresh_table
    c="$(timed_call "CALL credcrypt.reencrypt_column('creds', 'api_key', 'envelope:app', batch_size => $batch)")"
    [ "$(psql_ -c "SELECT count(*) FROM credcrypt.key_usage('creds') WHERE source = 'envelope' AND key_name = 'envelope:app'")" = 1 ] \
        || { log "FAILED: not every value is under envelope:app"; exit 1; }
    [ "$(psql_ -c "SELECT count(*) FROM creds WHERE credcrypt.decrypt_credential(api_key, context => credcrypt.column_context((SELECT binding_id FROM credcrypt.protected_columns WHERE relid = 'creds'::regclass), ARRAY[id::text])) = 'sk-live-' || id || '-0123456789abcdef0123456789'")" = "$ROWS" ] \
        || { log "FAILED: a value changed"; exit 1; }
    echo "$batch $a $b $c" >>"$DIR/results"
done

echo
echo "results ($ROWS rows; raw Transit encrypt batches, same run: $raw1 values/s from one client, $raw4 from 4 threads):"
printf '  %-10s %-34s %-34s %s\n' "batch_size" "local -> transit (>= 0.4x raw)" "transit v(n) -> v(n+1) (>= 0.28x)" "local -> envelope (>= 100,000 rows/s)"
while read -r batch a b c; do
    awk -v batch="$batch" -v a="$a" -v b="$b" -v c="$c" -v raw="$raw1" 'BEGIN{
        printf "  %-10d %7d rows/s %.2fx %-13s %7d rows/s %.2fx %-13s %7d rows/s %s\n", batch,
            a, a/raw, (a/raw >= 0.4 ? "PASS" : "MISS"), b, b/raw, (b/raw >= 0.28 ? "PASS" : "MISS"), c, (c >= 100000 ? "PASS" : "MISS")}'
done <"$DIR/results"
echo "  (a row migrated to Transit costs a source decrypt, a Transit encrypt, a Transit decrypt to verify it and an UPDATE;"
echo "   to envelope the same with local AES-GCM; ratios are to raw batches from one client)"
echo
echo "the OpenBao work of one row migrated to Transit (encrypt with associated data, decrypt to verify), from a bare"
echo "client with no database, same run: $rawrt rows/s = $(awk -v r="$rawrt" -v raw="$raw1" 'BEGIN{printf "%.2f", r/raw}')x raw — what the 0.4x target would need exceeds it on this machine."
echo "local -> transit as a share of it:"
while read -r batch a _ _; do
    awk -v batch="$batch" -v a="$a" -v rt="$rawrt" 'BEGIN{printf "  %-10d %.2fx\n", batch, a/rt}'
done <"$DIR/results"
