# shellcheck shell=bash
# OpenBao dev server for the benchmarks, the on-demand suites and the example apps' tests.
# Source after scripts/lib/cluster.sh and cluster_start.
#
#   bao_dev_start DIR   starts `bao server -dev` on a free loopback port (log in DIR/keys/bao-dev.log,
#                       where the log-leak check looks),
#                       mounts transit, creates key `app`, writes a policy-limited service
#                       token (key `app`, and the per-row keys `tenant-*`, which it may create)
#                       to DIR/keys/bao.token (0600, postgres) and points the cluster's
#                       worker at it (DIR/data/credcrypt.conf). Exports BAO_ADDR, BAO_TOKEN, BAO.
#   bao_dev_stop        kills it.
BAO="${BAO:-$root/target/tools/venv/bin/bao}"
bao_pid=""

bao_dev_start() {
    local dir="$1" port
    port="$(free_port)"
    export BAO BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN="bench-root-$$"
    "$BAO" server -dev -dev-no-store-token -dev-root-token-id="$BAO_TOKEN" -dev-listen-address="127.0.0.1:$port" >"$dir/keys/bao-dev.log" 2>&1 &
    bao_pid=$!
    for _ in $(seq 100); do "$BAO" status >/dev/null 2>&1 && break; sleep 0.1; done
    "$BAO" secrets enable transit >/dev/null
    "$BAO" write -f transit/keys/app >/dev/null
    printf 'path "transit/encrypt/app" { capabilities = ["update"] }\npath "transit/decrypt/app" { capabilities = ["update"] }\npath "transit/keys/app" { capabilities = ["read"] }\npath "transit/datakey/plaintext/app" { capabilities = ["update"] }\npath "transit/rewrap/app" { capabilities = ["update"] }\n' >"$dir/policy.hcl"
    # Per-row (tenant) keys tenant-*, as docs/openbao.md gives them (bench/tenants.sh).
    printf 'path "transit/encrypt/tenant-*" { capabilities = ["update"] }\npath "transit/decrypt/tenant-*" { capabilities = ["update"] }\npath "transit/datakey/plaintext/tenant-*" { capabilities = ["update"] }\npath "transit/keys/tenant-*" { capabilities = ["read", "create", "update"] }\n' >>"$dir/policy.hcl"
    # The kv:<mount> provider (docs/openbao.md): KV v2 at secret/ (dev mode), under the prefix.
    printf 'path "secret/data/pg_credcrypt/*" { capabilities = ["create", "update", "read"] }\npath "secret/metadata/pg_credcrypt/*" { capabilities = ["read", "list", "delete"] }\npath "secret/destroy/pg_credcrypt/*" { capabilities = ["update"] }\n' >>"$dir/policy.hcl"
    "$BAO" policy write credcrypt "$dir/policy.hcl" >/dev/null
    "$BAO" token create -policy=credcrypt -ttl=2h -field=token >"$dir/keys/bao.token"
    chown postgres:postgres "$dir/keys/bao.token"
    chmod 600 "$dir/keys/bao.token"
    cat >>"$dir/data/credcrypt.conf" <<CONF
credcrypt.bao_addr = '$BAO_ADDR'
credcrypt.bao_token_file = '$dir/keys/bao.token'
CONF
}

bao_dev_stop() {
    if [ -n "$bao_pid" ]; then kill "$bao_pid" 2>/dev/null || true; fi
    bao_pid=""
}
