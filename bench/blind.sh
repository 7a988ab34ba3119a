#!/usr/bin/env bash
# Blind-index benchmark (on demand; NOT part of the test suite).
#
# One throwaway cluster (and an OpenBao dev server for the envelope key), one run:
#   1. lookup of one secret among BENCH_LOOKUP_ROWS rows (default 1,000,000) of a local-key
#      protected column: through the blind index (btree, credcrypt.blind_index) against the scan
#      that decrypts every row and compares (what an application without a blind index does);
#      target >= 1,000x faster;
#   2. protected INSERT … SELECT of BENCH_ROWS rows with a blind index column against the same
#      table without one, for the local key and envelope:app (target <= 1.3x), and with the btree
#      over the column as well (what lookups need). Median of BENCH_REPEAT (+1 warm-up), tables
#      interleaved.
#
#   bash bench/blind.sh
#   BENCH_LOOKUP_ROWS=200000 BENCH_ROWS=50000 BENCH_REPEAT=3 bash bench/blind.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../scripts/lib/env.sh
source "$here/../scripts/lib/env.sh"
# shellcheck source=lib/prologue.sh
source "$here/lib/prologue.sh"
LOOKUP_ROWS="${BENCH_LOOKUP_ROWS:-1000000}"
ROWS="${BENCH_ROWS:-100000}"
REPEAT="${BENCH_REPEAT:-5}"
DIR="/var/tmp/pg_credcrypt-bench-blind"
bench_ints LOOKUP_ROWS ROWS REPEAT
bench_prologue
psql -X -q -v ON_ERROR_STOP=1 -v lookup_rows="$LOOKUP_ROWS" -v rows="$ROWS" -v repeat="$REPEAT" \
    -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -f "$here/blind.sql"
