#!/usr/bin/env bash
# pg_credcrypt demo: builds and installs the extension (release), starts a throwaway
# PostgreSQL cluster on 127.0.0.1 with a fresh local key file, runs the walkthrough in
# scripts/demo.sql (encrypt, decrypt, verify, mask, tampering refused, a protected column
# with decrypted and masked views), then stops and
# removes the cluster. Idempotent; installs what is missing on a fresh Debian 12 machine.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/env.sh
source "$here/lib/env.sh"

bash "$here/setup.sh"
echo "[demo] building and installing pg_credcrypt (release; about 4 minutes the first time, log in target/demo-build.log)…"
mkdir -p "$root/target"
cargo pgrx install --release --pg-config "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" >"$root/target/demo-build.log" 2>&1 ||
    { tail -40 "$root/target/demo-build.log"; exit 1; }

# shellcheck source=lib/cluster.sh
source "$here/lib/cluster.sh"
dir="/var/tmp/pg_credcrypt-demo"
trap 'cluster_stop "$dir"' EXIT
cluster_start "$dir"
echo "[demo] cluster on 127.0.0.1:$CC_PGPORT, key file $CC_KEYDIR/current.key (mode 0600)"

out="$(psql -X -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -f "$here/demo.sql" 2>&1)"
printf '%s\n' "$out"

# The walkthrough must show the refusals it promises.
refused_context=$(grep -c "ERROR:  39000" <<<"$out" || true)
refused_grant=$(grep -c "ERROR:  42501" <<<"$out" || true)
if [ "$refused_context" -lt 3 ] || [ "$refused_grant" -lt 1 ] || grep -q "ERROR:  XX" <<<"$out"; then
    echo "[demo] FAILED: tampering was not refused as expected" >&2
    exit 1
fi
if grep -qE "sk-live-51HxAbCdEf0123456789a1b2|sk-proj-Zq81Lm0123456789abcdefa1b2|sk-ant-api03-77xYz0123456789" "$CC_LOG"; then
    echo "[demo] FAILED: a plaintext reached the server log" >&2
    exit 1
fi
# What the protected column holds: ciphertexts only (the column and the jsonb key).
stored="$(psql -X -At -h "$CC_PGHOST" -p "$CC_PGPORT" -U postgres -d postgres -c \
    "SELECT count(*) FILTER (WHERE credcrypt.is_encrypted(api_key) AND (config->>'apiKey' IS NULL OR credcrypt.is_encrypted(config->>'apiKey')))
            || '/' || count(*) FROM credentials")"
if [ "${stored%/*}" != "${stored#*/}" ] || [ "${stored#*/}" = 0 ]; then
    echo "[demo] FAILED: credentials holds a value that is not a ciphertext ($stored rows encrypted)" >&2
    exit 1
fi
echo "[demo] OK: 3 tamper attempts refused (39000), decrypt without the role refused (42501), protected column stored ciphertext only, server log clean"
