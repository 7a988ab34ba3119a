#!/usr/bin/env bash
# The whole pg_credcrypt test suite, from a fresh Debian 12 machine (idempotent):
#   1. installs what is missing (scripts/setup.sh)
#   2. rustfmt and clippy (-D warnings)
#   3. pure-Rust unit and property tests of the format and crypto (crates/core)
#   4. independent cross-check of the published test vectors (Python `cryptography`)
#   5. #[pg_test]s inside a real PostgreSQL 15 (cargo pgrx test, as user postgres)
#   6. black-box tests (pgrx-tests/) against a throwaway cluster with the release build:
#      SQL functions, protected columns, RLS, migrations, Transit (real OpenBao), docker/ pieces,
#      every SQL example of the docs
#   7. the node-postgres example's tests (examples/node) and the NestJS + Prisma example's
#      (examples/nestjs: generate, tsc, HTTP tests; a dev OpenBao for its Transit table) against
#      the same cluster
#   8. the upgrade tests: each release in sql/releases (built once per machine from the commit
#      recorded there) on a cluster of its own, populated, then this build, a restart and
#      ALTER EXTENSION UPDATE
# Prints each runner's own summary, then one total line.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/env.sh
source "$here/lib/env.sh"
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
work="/var/tmp/pg_credcrypt-test"
logs="$root/target/test-logs"
step() { printf '\n==> %s\n' "$*"; }
# run_suite NAME CMD…: runs a test runner into target/test-logs/NAME.log, shows its per-test
# and summary lines, and stops the script (showing the log's tail) if the runner failed.
run_suite() {
    local name="$1" rc=0
    shift
    "$@" >"$logs/$name.log" 2>&1 || rc=$?
    grep -E "^test .* \.\.\. |^test result|panicked at" "$logs/$name.log" | grep -vE "^test result: ok\. 0 passed" || true
    if [ "$rc" -ne 0 ]; then
        echo "!! $name failed (exit $rc); last lines of $logs/$name.log:"
        tail -80 "$logs/$name.log"
        exit 1
    fi
}

bash "$here/setup.sh"
mkdir -p "$logs" "$work"
rm -f "$logs"/*.log

step "rustfmt + clippy + module layers"
"$here/check-layers"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features "pg$PG_MAJOR pg_test" --no-default-features -q -- -D warnings

step "core + openbao client: unit, property and real-OpenBao tests"
run_suite core cargo test -p credcrypt-core -p credcrypt-openbao -p credcrypt-test-support

step "test vectors cross-checked with Python cryptography"
"$root/target/tools/venv/bin/python" "$here/check_vectors.py"

step "pg_test: SQL functions inside PostgreSQL $PG_MAJOR"
chown postgres:postgres "$work"
run_suite pgtest cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$work/pgtest-data"

step "black-box: release build on a throwaway cluster"
# shellcheck source=lib/releases.sh
source "$here/lib/releases.sh"
new_pkg="$root/target/release/pg_credcrypt-pg$PG_MAJOR"
cargo pgrx package --pg-config "$PG_CONFIG" >"$logs/install.log" 2>&1 || { tail -40 "$logs/install.log"; exit 1; }
install_package "$new_pkg"
# shellcheck source=lib/cluster.sh
source "$here/lib/cluster.sh"
trap 'cluster_stop "$work/blackbox"; cluster_stop "$work/upgrade"; install_package "$new_pkg"' EXIT
# The project's Node.js (scripts/setup.sh) for the legacy-value fixtures and the examples.
export PATH="$root/target/tools/node/bin:$PATH"
# The server log is written at debug1 with verbose error fields and the recommended
# statement-logging settings, for the log-leak check after the suites and the example.
CC_LOG_MIN_MESSAGES=debug1 CC_LOG_VERBOSITY=verbose cluster_start "$work/blackbox"
run_suite blackbox cargo test -p credcrypt-blackbox -- --test-threads=1

# node_suite NAME DIR CMD: runs an example's npm commands into target/test-logs/NAME.log, shows
# its per-test lines and appends node:test's own summary (TAP "# pass N" or the spec reporter's
# "ℹ pass N", whichever Node chose) in the form the total below adds up; no summary at all is
# a failure.
node_suite() {
    local name="$1" dir="$2" cmd="$3"
    ( cd "$dir" && eval "$cmd" ) >"$logs/$name.log" 2>&1 || {
        tail -60 "$logs/$name.log"
        exit 1
    }
    grep -E "^(not )?ok [0-9]+ - |^[✔✖] " "$logs/$name.log" || true
    awk -v n="$name" '/^(# |ℹ )pass /{p=$3; seen=1} /^(# |ℹ )fail /{f=$3} END {if (!seen) {print n ": no test summary in the log" > "/dev/stderr"; f=1}
         printf "test result: %s. %d passed; %d failed;\n", (f ? "FAILED" : "ok"), p, f}' \
        "$logs/$name.log" >>"$logs/$name.log"
}

step "node-postgres example (examples/node) against the same cluster"
node_suite node "$root/examples/node" "npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm test"

step "NestJS 12 + Prisma 7 example (examples/nestjs) against the same cluster, Transit on a dev OpenBao"
# shellcheck source=lib/bao.sh
source "$here/lib/bao.sh"
trap 'bao_dev_stop; cluster_stop "$work/blackbox"; cluster_stop "$work/upgrade"; install_package "$new_pkg"' EXIT
bao_dev_start "$work/blackbox"
cc_psql() { as_pg "$PG_BIN/psql" -h "$CC_PGHOST" -p "$CC_PGPORT" -d postgres -XAtq -c "$1"; }
cc_psql "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 150); do
    [ "$(cc_psql "SELECT coalesce(active_address, '') FROM credcrypt.status()")" = "$BAO_ADDR" ] && break
    sleep 0.1
done
node_suite nestjs "$root/examples/nestjs" \
    "npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run -s generate >/dev/null && npm run -s build && npm test"
bao_dev_stop

step "log-leak check: no plaintext, key or token in any server or OpenBao log so far"
run_suite logleak cargo test -p credcrypt-blackbox --test log_leak -- --ignored --test-threads=1

cluster_stop "$work/blackbox"
: >"$logs/upgrade.log"
for from in $(awk '!/^#/ && NF { print $1 }' "$root/sql/releases"); do
    step "upgrade from $from with live data (a cluster of its own)"
    old_pkg="$(release_package "$from")"
    install_package "$old_pkg"
    cluster_start "$work/upgrade"
    CC_UPGRADE_FROM="$from" CC_UPGRADE_NEW_PKG="$new_pkg" run_suite "upgrade-$from" \
        cargo test -p credcrypt-blackbox --test upgrade -- --ignored --test-threads=1
    cat "$logs/upgrade-$from.log" >>"$logs/upgrade.log"
    cluster_stop "$work/upgrade"
    install_package "$new_pkg"
done

step "summary"
for f in core pgtest blackbox node nestjs logleak upgrade; do
    grep -E "^test result:" "$logs/$f.log" | grep -vE "^test result: ok\. 0 passed" | sed "s/^/  $f: /" || true
done
cat "$logs"/{core,pgtest,blackbox,node,nestjs,logleak,upgrade}.log | grep -E "^test result:" |
    awk '{p+=$4; f+=$6} END {printf "\nall suites: %d passed, %d failed\n", p, f; exit (f > 0)}'
