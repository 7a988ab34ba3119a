# shellcheck shell=bash
# Throwaway PostgreSQL clusters on loopback for the demo and the black-box tests.
# Source this file; it defines cluster_start and cluster_stop.
#
#   cluster_start DIR      initdb (as postgres) in DIR/data, write a local key file
#                          (DIR/keys/current.key, mode 0600) and credcrypt settings into
#                          postgresql.conf, start on a free loopback port; exports
#                          CC_PGDATA CC_PGHOST CC_PGPORT CC_KEYDIR CC_LOG CC_PGBIN
#   cluster_stop DIR       stop it (fast) and remove DIR
PG_MAJOR="${PG_MAJOR:-15}"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

# runuser as root (no sudo: no "unable to resolve host" noise); sudo otherwise.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && HOME=/var/lib/postgresql runuser -u postgres -- "$@")
    else
        sudo -u postgres -H -- "$@"
    fi
}

free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

cluster_stop() {
    local dir="$1"
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

cluster_start() {
    local dir="$1"
    cluster_stop "$dir"
    mkdir -p "$dir/keys" "$dir/sock"
    chown -R postgres:postgres "$dir"
    chmod 700 "$dir" "$dir/keys"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # A fresh random local key, as a file readable by the server's user only.
    head -c 32 /dev/urandom | base64 > "$dir/keys/current.key"
    chown postgres:postgres "$dir/keys/current.key"
    chmod 600 "$dir/keys/current.key"
    CC_PGPORT="$(free_port)"
    cat >> "$dir/data/postgresql.conf" <<CONF
# --- throwaway cluster for pg_credcrypt ---
listen_addresses = '127.0.0.1'
port = $CC_PGPORT
unix_socket_directories = '$dir/sock'
log_min_messages = ${CC_LOG_MIN_MESSAGES:-info}
log_error_verbosity = ${CC_LOG_VERBOSITY:-default}
log_min_error_statement = panic
shared_preload_libraries = 'pg_credcrypt'
max_prepared_transactions = 8
include_if_exists = 'credcrypt.conf'
CONF
    cat > "$dir/data/credcrypt.conf" <<CONF
credcrypt.local_key_file = '$dir/keys/current.key'
CONF
    chown postgres:postgres "$dir/data/credcrypt.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    export CC_PGDATA="$dir/data" CC_PGHOST="$dir/sock" CC_PGPORT CC_KEYDIR="$dir/keys" CC_LOG="$dir/server.log" CC_PGBIN="$PG_BIN"
}
