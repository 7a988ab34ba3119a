#!/usr/bin/env bash
# Creates the secrets the compose deployment mounts (idempotent: existing files are kept):
#   secrets/bao_seal_key          OpenBao static seal key (32 random bytes)
#   secrets/bao_secret_id         the AppRole secret id of pg_credcrypt's worker
#   secrets/openbao.hcl           OpenBao's configuration (the template with the secret id)
#   secrets/pg_superuser_password, secrets/pg_{app,app_owner,reporting,monitor}_password
# Usage: bash docker/gen-secrets.sh [DIR]   (DIR defaults to docker/secrets)
# File modes: 0640, group 999 (the postgres and openbao users' group in the official images),
# so the containers can read them and other host users cannot. Run as root, or fix the
# ownership yourself (chown 0:999).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-$here/secrets}"
umask 077
mkdir -p "$dir"
new() {  # new NAME COMMAND…: writes the command's output to DIR/NAME unless it exists
    local name="$1"
    shift
    [ -s "$dir/$name" ] || "$@" >"$dir/$name"
}
new bao_seal_key head -c 32 /dev/urandom
new bao_secret_id sh -c 'printf "%s" "$(cat /proc/sys/kernel/random/uuid)"'
for f in pg_superuser_password pg_app_password pg_app_owner_password pg_reporting_password pg_monitor_password; do
    new "$f" sh -c 'head -c 24 /dev/urandom | base64 | tr -d "/+=\n"'
done
secret_id="$(cat "$dir/bao_secret_id")"
case "$secret_id" in *[!A-Za-z0-9-]*) echo "unexpected characters in $dir/bao_secret_id" >&2; exit 1 ;; esac
sed "s/@SECRET_ID@/$secret_id/" "$here/openbao/openbao.hcl.template" >"$dir/openbao.hcl.tmp"
mv "$dir/openbao.hcl.tmp" "$dir/openbao.hcl"
chmod 0640 "$dir"/*
if [ "$(id -u)" = 0 ]; then chown 0:999 "$dir"/*; fi
echo "secrets in $dir"
