#!/usr/bin/env bash
# pg_credcrypt per-row cost benchmark (on demand; NOT part of the test suite).
#
# Installs what is missing (scripts/setup.sh), builds and installs the release build, starts a
# throwaway PostgreSQL cluster with a fresh local key file, and runs bench/bench.sql: over
# BENCH_ROWS credentials of 48 characters it times credcrypt.encrypt_credential and
# credcrypt.decrypt_credential (local key) against pgcrypto's encrypt()/decrypt() (AES) and
# md5(), then prints per-row costs, ratios and PASS/MISS against the target (≤ 1.5× pgcrypto
# encrypt() per row). The verdict is informational: the script exits 0 unless something errors
# (including the correctness check). The cluster is stopped and removed on exit.
#
#   bash bench/run.sh                                  # 200,000 rows, median of 5 runs
#   BENCH_ROWS=50000 BENCH_REPEAT=3 bash bench/run.sh  # quicker
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
BENCH_ROWS="${BENCH_ROWS:-200000}"
BENCH_REPEAT="${BENCH_REPEAT:-5}"
BENCH_DIR="${BENCH_DIR:-/var/tmp/pg_credcrypt-bench}"
bench_ints BENCH_ROWS BENCH_REPEAT


bash "$root/scripts/setup.sh"
log "building and installing pg_credcrypt (release)…"
install_log="$(mktemp)"
if ! cargo pgrx install --release --pg-config "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >"$install_log" 2>&1; then
    cat "$install_log" >&2
    rm -f "$install_log"
    log "FAILED: cargo pgrx install" >&2
    exit 1
fi
rm -f "$install_log"

# shellcheck source=../scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
trap 'cluster_stop "$BENCH_DIR"' EXIT
cluster_start "$BENCH_DIR"

log "rows=$BENCH_ROWS repeat=$BENCH_REPEAT (median; plus 1 warm-up run), single backend, max_parallel_workers_per_gather=0, jit=off"
log "PostgreSQL $("/usr/lib/postgresql/$PG_MAJOR/bin/postgres" --version | awk '{print $3}'), cluster $BENCH_DIR on 127.0.0.1:$CC_PGPORT"
log "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')"
log "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') × $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
log "running (a few minutes)…"

start=$SECONDS
psql -X -q -v ON_ERROR_STOP=1 -v rows="$BENCH_ROWS" -v repeat="$BENCH_REPEAT" \
    -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -f "$here/bench.sql"
log "done in $((SECONDS - start)) s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
