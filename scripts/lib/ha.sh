# shellcheck shell=bash
# The PostgreSQL HA harness of scripts/test-ha, all on loopback (free ports): 3 etcd members,
# a 3-node OpenBao raft cluster (static seal, self-initialization on node 0, nodes 1 and 2
# joining; each node restarted 5 s after it dies, as a service manager would), and 3 PostgreSQL
# 15 nodes managed by Patroni (synchronous_mode, pg_credcrypt preloaded, the same local key file
# and OpenBao settings on every node). Source after scripts/lib/cluster.sh (as_pg, free_port).
#
#   ha_start DIR    starts everything in DIR (removed first), waits for a leader and two
#                   streaming replicas, creates the extension and the test roles on the leader;
#                   exports HA_DIR HA_PG_PORTS HA_API_PORTS HA_BAO_ADDRS HA_PATRONI_CONF.
#   ha_stop DIR     stops Patroni (and its PostgreSQL), OpenBao and etcd; idempotent, and also
#                   ends what an interrupted run left (pid files in DIR).
#   ha_remove_data DIR  removes the data directories of a stopped harness, keeping the logs.
#   ha_wait_healthy timeout  waits until the cluster has a leader, a sync standby and a third
#                   replica.
BAO="${BAO:-$root/target/tools/venv/bin/bao}"
# HA_PG_BIN: another PostgreSQL tree's bin directory (a relocated copy of the system's, with a
# locally built pg_credcrypt.so in its lib/: a build tested without installing it system-wide).
PG_BIN="${HA_PG_BIN:-/usr/lib/postgresql/${PG_MAJOR:-15}/bin}"
HA_SCOPE=credcrypt-ha

ha_log() { printf '[ha] %s\n' "$*"; }

# Kills the process whose id is in file $1 (if it is still the one: command line contains $2).
ha_kill_pidfile() {
    local f="$1" want="$2" sig="${3:-TERM}" pid
    [ -f "$f" ] || return 0
    pid="$(head -1 "$f" 2>/dev/null | tr -dc 0-9)"
    if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -- "$want" >/dev/null; then
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

ha_stop() {
    local dir="$1" i pid
    [ -d "$dir" ] || return 0
    touch "$dir/stopping"
    # Patroni first: SIGTERM makes it stop its PostgreSQL (fast) before it exits.
    for i in 0 1 2; do
        if [ -f "$dir/pg$i/patroni.yml" ] && [ ! -s "$dir/pg$i/patroni.pid" ]; then
            { pgrep -u postgres -f "patroni $dir/pg$i/patroni.yml" || true; } | head -1 >"$dir/pg$i/patroni.pid"
        fi
        ha_kill_pidfile "$dir/pg$i/patroni.pid" "patroni"
    done
    for _ in $(seq 60); do
        [ -n "$(pgrep -u postgres -f "patroni $dir/pg[012]/patroni.yml" || true)" ] || break
        sleep 0.5
    done
    for i in 0 1 2; do
        ha_kill_pidfile "$dir/pg$i/patroni.pid" "patroni" KILL
        # A postmaster left behind (Patroni killed, or a test killed it mid-start).
        if [ -f "$dir/pg$i/data/postmaster.pid" ]; then
            ha_kill_pidfile "$dir/pg$i/data/postmaster.pid" "postgres" QUIT
        fi
    done
    for i in 0 1 2; do
        ha_kill_pidfile "$dir/bao/supervisor$i.pid" "ha.sh\|bash"
        ha_kill_pidfile "$dir/bao/node$i.pid" "bao"
        ha_kill_pidfile "$dir/etcd$i.pid" "etcd"
    done
    sleep 0.5
    for i in 0 1 2; do
        ha_kill_pidfile "$dir/bao/node$i.pid" "bao" KILL
        ha_kill_pidfile "$dir/etcd$i.pid" "etcd" KILL
        if [ -f "$dir/pg$i/data/postmaster.pid" ]; then
            ha_kill_pidfile "$dir/pg$i/data/postmaster.pid" "postgres" KILL
        fi
    done
}

# Removes the data directories (about 1 GB after a full run), keeping the logs.
ha_remove_data() {
    local dir="$1"
    [ -d "$dir" ] || return 0
    rm -rf "$dir"/pg[012]/data "$dir"/etcd[012] "$dir"/bao/raft[012]
}

# etcd member i of three.
ha_etcd_start() {
    local dir="$1" i="$2" cluster="$3"
    etcd --name "e$i" --data-dir "$dir/etcd$i" \
        --listen-client-urls "http://127.0.0.1:${ETCD_C[$i]}" --advertise-client-urls "http://127.0.0.1:${ETCD_C[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_P[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_P[$i]}" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "$HA_SCOPE" \
        --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-level warn \
        >"$dir/etcd$i.log" 2>&1 &
    echo $! >"$dir/etcd$i.pid"
}

# OpenBao node i: its configuration, and a supervisor that restarts it 5 s after it exits
# (until DIR/stopping exists).
ha_bao_node() {
    local dir="$1" i="$2" join="" init=""
    mkdir -p "$dir/bao/raft$i"
    if [ "$i" != 0 ]; then join="  retry_join { leader_api_addr = \"http://127.0.0.1:${BAO_API[0]}\" }"; fi
    if [ "$i" = 0 ]; then
        init='initialize "credcrypt" {
  request "mount-transit" {
    operation = "update"
    path      = "sys/mounts/transit"
    data      = { type = "transit" }
  }
  request "key-app" {
    operation = "update"
    path      = "transit/keys/app"
    data      = {}
  }
  request "no-upsert" {
    operation = "update"
    path      = "transit/config/keys"
    data      = { disable_upsert = true }
  }
  request "policy" {
    operation = "update"
    path      = "sys/policies/acl/credcrypt"
    data      = { policy = "path \"transit/encrypt/app\" { capabilities = [\"update\"] }\npath \"transit/decrypt/app\" { capabilities = [\"update\"] }\npath \"transit/rewrap/app\" { capabilities = [\"update\"] }\npath \"transit/datakey/plaintext/app\" { capabilities = [\"update\"] }\npath \"transit/keys/app\" { capabilities = [\"read\"] }\n" }
  }
  request "approle" {
    operation = "update"
    path      = "sys/auth/approle"
    data      = { type = "approle" }
  }
  request "role" {
    operation = "update"
    path      = "auth/approle/role/credcrypt"
    data      = { token_policies = "credcrypt", token_ttl = "1h" }
  }
  request "role-id" {
    operation = "update"
    path      = "auth/approle/role/credcrypt/role-id"
    data      = { role_id = "ha-role" }
  }
  request "secret-id" {
    operation = "update"
    path      = "auth/approle/role/credcrypt/custom-secret-id"
    data      = { secret_id = "ha-secret-0001" }
  }
}'
    fi
    cat >"$dir/bao/node$i.hcl" <<HCL
storage "raft" {
  path = "$dir/bao/raft$i"
  node_id = "n$i"
$join
}
listener "tcp" {
  address = "127.0.0.1:${BAO_API[$i]}"
  cluster_address = "127.0.0.1:${BAO_CL[$i]}"
  tls_disable = true
}
api_addr = "http://127.0.0.1:${BAO_API[$i]}"
cluster_addr = "http://127.0.0.1:${BAO_CL[$i]}"
disable_mlock = true
seal "static" {
  current_key_id = "ha-1"
  current_key = "file://$dir/bao/seal.key"
}
$init
HCL
    (
        while [ ! -e "$dir/stopping" ]; do
            "$BAO" server -config="$dir/bao/node$i.hcl" >>"$dir/bao/node$i.log" 2>&1 &
            echo $! >"$dir/bao/node$i.pid"
            wait $! || true
            [ -e "$dir/stopping" ] && break
            echo "[supervisor] node $i exited; restarting in 5 s" >>"$dir/bao/node$i.log"
            sleep 5
        done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/bao/supervisor$i.pid"
}

ha_bao_unsealed() {
    local out
    out="$(BAO_ADDR="http://127.0.0.1:$1" "$BAO" status -format=json 2>/dev/null || true)"
    [[ "$out" == *'"sealed": false'* ]]
}

# Patroni node i.
ha_patroni_node() {
    local dir="$1" i="$2" etcd_hosts="$3" bao_addrs="$4" n
    n="$dir/pg$i"
    mkdir -p "$n/log"
    cat >"$n/patroni.yml" <<YAML
scope: $HA_SCOPE
namespace: /service/
name: pg$i
log:
  level: INFO
  dir: $n
restapi:
  listen: 127.0.0.1:${API[$i]}
  connect_address: 127.0.0.1:${API[$i]}
etcd3:
  hosts: $etcd_hosts
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 16777216
    primary_start_timeout: 0          # a crashed leader fails over instead of restarting in place
    synchronous_mode: true            # a commit is acknowledged only once a standby has it
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 100
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
    - data-checksums
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:${PGP[$i]}
  connect_address: 127.0.0.1:${PGP[$i]}
  data_dir: $n/data
  bin_dir: $PG_BIN
  pgpass: $n/pgpass
  authentication:
    superuser: {username: postgres, password: ha-test}
    replication: {username: replicator, password: ha-test}
  parameters:
    unix_socket_directories: $dir/run
    logging_collector: "on"
    log_directory: $n/log
    log_filename: postgresql.log
    log_min_error_statement: panic
    # pg_credcrypt: preloaded on every node, the same key file and OpenBao settings everywhere
    shared_preload_libraries: pg_credcrypt
    credcrypt.local_key_file: $dir/keys/current.key
    credcrypt.bao_addr: '$bao_addrs'
    credcrypt.bao_role_id: ha-role
    credcrypt.bao_secret_id_file: $dir/keys/secret.id
    credcrypt.bao_connect_timeout_ms: 500
    credcrypt.bao_request_timeout_ms: 3000
    credcrypt.envelope_max_uses: 20         # new data keys all the time: some made just before a failover
YAML
    chown -R postgres:postgres "$n"
    (cd / && HOME=/var/lib/postgresql exec runuser -u postgres -- patroni "$n/patroni.yml" >"$n/patroni.out" 2>&1 </dev/null) &
    # runuser stays as the parent: the pid file names Patroni itself
    for _ in $(seq 50); do
        { pgrep -u postgres -f "patroni $n/patroni.yml" || true; } | head -1 >"$n/patroni.pid"
        [ -s "$n/patroni.pid" ] && break
        sleep 0.1
    done
}

# Members as JSON (Patroni's /cluster endpoint of any node that answers).
ha_cluster_json() {
    local p
    for p in "${API[@]}"; do
        curl -fsS --max-time 2 "http://127.0.0.1:$p/cluster" 2>/dev/null && return 0
    done
    return 1
}

ha_wait_healthy() {
    local timeout="$1" deadline=$((SECONDS + $1)) j
    while [ $SECONDS -lt $deadline ]; do
        j="$(ha_cluster_json || true)"
        if [ -n "$j" ] && python3 - "$j" <<'PY'
import json, sys
m = json.loads(sys.argv[1])["members"]
leaders = [x for x in m if x["role"] == "leader" and x["state"] == "running"]
# Patroni 3.0 reports replicas as "running" (later versions: "streaming")
sync = [x for x in m if x["role"] == "sync_standby" and x["state"] in ("running", "streaming") and x.get("lag") is not None]
other = [x for x in m if x["role"] == "replica" and x["state"] in ("running", "streaming") and x.get("lag") is not None]
sys.exit(0 if len(leaders) == 1 and len(sync) == 1 and len(other) == 1 else 1)
PY
        then return 0; fi
        sleep 1
    done
    ha_log "cluster not healthy after ${timeout} s: $(ha_cluster_json || echo 'no REST API answers')"
    return 1
}

ha_start() {
    local dir="$1" i cluster etcd_hosts bao_addrs leader_port
    ha_stop "$dir"
    rm -rf "$dir"
    mkdir -p "$dir/bao" "$dir/keys" "$dir/run"
    ETCD_C=() ETCD_P=() BAO_API=() BAO_CL=() PGP=() API=()
    for i in 0 1 2; do
        ETCD_C+=("$(free_port)") ETCD_P+=("$(free_port)") BAO_API+=("$(free_port)") BAO_CL+=("$(free_port)")
        PGP+=("$(free_port)") API+=("$(free_port)")
    done
    # The same local key and AppRole secret id on every node (files readable by postgres only).
    head -c 32 /dev/urandom | base64 >"$dir/keys/current.key"
    printf 'ha-secret-0001' >"$dir/keys/secret.id"
    chown -R postgres:postgres "$dir/keys" "$dir/run"
    chmod 700 "$dir/keys"
    chmod 600 "$dir/keys/current.key" "$dir/keys/secret.id"
    head -c 32 /dev/urandom >"$dir/bao/seal.key"

    cluster="e0=http://127.0.0.1:${ETCD_P[0]},e1=http://127.0.0.1:${ETCD_P[1]},e2=http://127.0.0.1:${ETCD_P[2]}"
    for i in 0 1 2; do ha_etcd_start "$dir" "$i" "$cluster"; done
    etcd_hosts="127.0.0.1:${ETCD_C[0]},127.0.0.1:${ETCD_C[1]},127.0.0.1:${ETCD_C[2]}"
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints="$etcd_hosts" endpoint health >/dev/null 2>&1 && break
        sleep 0.2
    done
    ETCDCTL_API=3 etcdctl --endpoints="$etcd_hosts" endpoint health >/dev/null 2>&1 || { ha_log "etcd did not start"; return 1; }
    ha_log "etcd: 3 members on $etcd_hosts"

    ha_bao_node "$dir" 0
    for _ in $(seq 300); do ha_bao_unsealed "${BAO_API[0]}" && break; sleep 0.2; done
    ha_bao_unsealed "${BAO_API[0]}" || { ha_log "OpenBao node 0 did not initialize"; return 1; }
    ha_bao_node "$dir" 1
    ha_bao_node "$dir" 2
    for _ in $(seq 450); do
        ha_bao_unsealed "${BAO_API[1]}" && ha_bao_unsealed "${BAO_API[2]}" && break
        sleep 0.2
    done
    ha_bao_unsealed "${BAO_API[1]}" && ha_bao_unsealed "${BAO_API[2]}" || { ha_log "OpenBao nodes 1 and 2 did not join"; return 1; }
    bao_addrs="http://127.0.0.1:${BAO_API[0]},http://127.0.0.1:${BAO_API[1]},http://127.0.0.1:${BAO_API[2]}"
    ha_log "OpenBao: 3-node raft cluster $bao_addrs"

    # Node 0 first (it bootstraps with initdb), then the replicas (pg_basebackup).
    ha_patroni_node "$dir" 0 "$etcd_hosts" "$bao_addrs"
    for _ in $(seq 120); do
        curl -fsS --max-time 1 "http://127.0.0.1:${API[0]}/primary" >/dev/null 2>&1 && break
        sleep 0.5
    done
    ha_patroni_node "$dir" 1 "$etcd_hosts" "$bao_addrs"
    ha_patroni_node "$dir" 2 "$etcd_hosts" "$bao_addrs"
    ha_wait_healthy 180 || return 1
    leader_port="$(ha_cluster_json | python3 -c 'import json,sys; print([m["port"] for m in json.load(sys.stdin)["members"] if m["role"]=="leader"][0])')"
    ha_log "Patroni: $(ha_cluster_json | python3 -c 'import json,sys; print(", ".join("%s %s %s :%s" % (m["name"], m["role"], m["state"], m["port"]) for m in json.load(sys.stdin)["members"]))')"
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$leader_port" -U postgres -d postgres >/dev/null <<'SQL'
CREATE EXTENSION pg_credcrypt;
CREATE ROLE ha_app LOGIN;
GRANT credcrypt_encryptor, credcrypt_decryptor TO ha_app;
CREATE ROLE ha_reader LOGIN;
GRANT credcrypt_decryptor TO ha_reader;
ALTER ROLE ha_reader SET credcrypt.audit_decrypt = 'table';
SQL
    export HA_DIR="$dir"
    HA_PG_PORTS="$(IFS=,; echo "${PGP[*]}")"
    HA_API_PORTS="$(IFS=,; echo "${API[*]}")"
    export HA_PG_PORTS HA_API_PORTS HA_BAO_ADDRS="$bao_addrs" HA_PATRONI_CONF="$dir/pg0/patroni.yml"
}
