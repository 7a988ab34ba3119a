#!/usr/bin/env bash
# kv:<mount> provider benchmark (on demand; NOT part of the test suite).
#
# One run, one OpenBao dev server (KV v2 at secret/), one throwaway PostgreSQL cluster:
#   - reads: pgbench with 1 and 16 clients, each transaction = one decrypt_credential of a kv
#     reference (worker + queue + KV read), against the same numbers of clients reading KV
#     directly, one request per value in sequence (crates/openbao/examples/kv_direct.rs, the
#     HTTP client the worker uses);
#   - bulk: decrypt_credentials over 10,000 kv references in one statement (the worker reads
#     them concurrently) against one client reading the same 10,000 paths in sequence.
# Prints values/s and ratios from the same run.
#
#   bash bench/kv.sh                 # BENCH_SECONDS=10 per point
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
SECS="${BENCH_SECONDS:-10}"
DIR="/var/tmp/pg_credcrypt-bench-kv"
bench_ints SECS
bench_prologue
cargo build -q --release -p credcrypt-openbao --example kv_direct
direct="$root/target/release/examples/kv_direct"

log "writing 10,000 kv values through the extension…"
psql_ -c "CREATE TABLE kv_bench (id int PRIMARY KEY, ref text)" \
      -c "INSERT INTO kv_bench SELECT g, r FROM unnest(credcrypt.encrypt_credentials(
                (SELECT array_agg('sk-live-' || g || '-0123456789abcdef0123456789' ORDER BY g) FROM generate_series(1, 10000) g),
                'kv:secret')) WITH ORDINALITY AS x(r, g)" >/dev/null
psql_ -c "SELECT split_part(ref, ':', 6) || ' ' || split_part(ref, ':', 4) FROM kv_bench ORDER BY id" >"$DIR/paths.txt"
cat >"$DIR/read.sql" <<'SQL'
\set id random(1, 10000)
SELECT credcrypt.decrypt_credential(ref) FROM kv_bench WHERE id = :id;
SQL
log "OpenBao $("$BAO" version | awk '{print $2}') dev server on $BAO_ADDR (policy-limited service token); $SECS s per point; $(nproc) cores shared by everything"
printf '\n%-8s %16s %16s %14s %14s %8s\n' clients "ext values/s" "direct values/s" "ext lat ms" "direct lat ms" ratio
for c in 1 16; do
    out="$(pgbench -n -M prepared -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -f "$DIR/read.sql" -c "$c" -j "$(( c < 4 ? c : 4 ))" -T "$SECS" postgres 2>&1)" || {
        echo "$out" >&2
        exit 1
    }
    tps="$(awk '/^tps = /{print int($3)}' <<<"$out")"
    lat="$(awk '/^latency average = /{print $4}' <<<"$out")"
    d="$("$direct" "$BAO_ADDR" "$DIR/keys/bao.token" secret "$DIR/paths.txt" "$c" "$SECS")"
    dtps="$(sed -E 's/.*values_per_s=([0-9]+).*/\1/' <<<"$d")"
    dlat="$(sed -E 's/.*mean_latency_ms=([0-9.]+).*/\1/' <<<"$d")"
    printf '%-8s %16s %16s %14s %14s %8s\n' "$c" "$tps" "$dtps" "$lat" "$dlat" "$(awk -v a="$tps" -v b="$dtps" 'BEGIN{printf "%.2fx", a/b}')"
done

log "bulk: decrypt_credentials over 10,000 kv references (one statement) vs one client reading them in sequence"
bulk_ms="$(psql_ -c "CREATE TEMP TABLE a AS SELECT array_agg(ref ORDER BY id) r FROM kv_bench" \
    -c "\\timing on" -c "SELECT cardinality(credcrypt.decrypt_credentials(r)) FROM a" 2>&1 | awk '/^Time:/{print $2}')"
bulk_vps="$(awk -v ms="$bulk_ms" 'BEGIN{printf "%.0f", 10000/(ms/1000)}')"
seq="$("$direct" "$BAO_ADDR" "$DIR/keys/bao.token" secret "$DIR/paths.txt" 0 0)"
seq_vps="$(sed -E 's/.*values_per_s=([0-9]+).*/\1/' <<<"$seq")"
echo
echo "results (values/s; ratio = extension / direct, same run):"
awk -v b="$bulk_vps" -v s="$seq_vps" 'BEGIN{printf "  bulk decrypt_credentials of 10,000 kv values: %d values/s; sequential client %d values/s; %.2fx\n", b, s, b/s}'
