# shellcheck shell=bash
# What every benchmark does first. Source from a bench/*.sh after scripts/lib/env.sh.
#
#   log MSG…                  prints "[bench] MSG"
#   bench_ints VAR…           exits 2 unless every named variable is a positive integer

#   bench_prologue [direct]   runs scripts/setup.sh; builds and installs pg_credcrypt
#                             (release); with `direct`, also builds the direct-load client and
#                             sets $direct; starts a throwaway cluster in DIR and an OpenBao dev
#                             server (scripts/lib/bao.sh), stopped on exit; defines psql_;
#                             creates the extension and logs the versions, cores and commit.
log() { printf '[bench] %s\n' "$*"; }

bench_ints() {
    local v
    for v in "$@"; do
        case "${!v}" in '' | *[!0-9]* | 0) echo "$v must be a positive integer (is '${!v}')" >&2; exit 2 ;; esac
    done
}

# Needs DIR (the run's throwaway directory).
bench_prologue() {
    bash "$root/scripts/setup.sh"
    log "building and installing pg_credcrypt (release)${1:+ and the direct-load client}…"
    cargo pgrx install --release --pg-config "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >/dev/null 2>&1
    if [ "${1:-}" = direct ]; then
        cargo build -q --release -p credcrypt-openbao --example direct_load
        direct="$root/target/release/examples/direct_load"
    fi
    # shellcheck source=../../scripts/lib/cluster.sh
    source "$root/scripts/lib/cluster.sh"
    # shellcheck source=bao.sh
    source "$root/scripts/lib/bao.sh"
    trap 'bao_dev_stop; cluster_stop "$DIR"' EXIT
    cluster_start "$DIR"
    bao_dev_start "$DIR"
    psql_ -c "CREATE EXTENSION pg_credcrypt" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
    log "PostgreSQL $("/usr/lib/postgresql/$PG_MAJOR/bin/postgres" --version | awk '{print $3}'); OpenBao $("$BAO" version | awk '{print $2}'); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
    log "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')"
}

# psql as the superuser on the benchmark cluster, stopping at the first error.
psql_() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres "$@"; }
