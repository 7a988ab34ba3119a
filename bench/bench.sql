-- pg_credcrypt per-row cost benchmark (run by bench/run.sh on a throwaway cluster).
-- psql variables: rows (number of credentials), repeat (timed runs per operation).
--
-- Every operation is an aggregate over the whole table, so no rows travel to the client,
-- and is timed server-side with clock_timestamp(). The bare scan is timed the same way and
-- subtracted, so "net" is the function's own cost per row.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset footer off

-- Single-core, no JIT: measure the per-row cost of the functions, nothing else.
SET max_parallel_workers_per_gather = 0;
SET jit = off;
SET client_min_messages = warning;

CREATE EXTENSION pg_credcrypt;
CREATE EXTENSION pgcrypto;

-- A fixed 32-byte key for pgcrypto's AES (32 bytes → AES-256, same as credcrypt's local key).
CREATE FUNCTION bench_pgkey() RETURNS bytea IMMUTABLE LANGUAGE sql
    AS $$ SELECT '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f'::bytea $$;

-- 1. The credentials: 'sk-live-' || 40 hex chars = 48 characters each.
-- 2. With them, ciphertexts for the decrypt measurements, computed once here so that the
--    decrypt timings exclude encryption.
CREATE TABLE creds (id int PRIMARY KEY, x text NOT NULL, ct_cc text NOT NULL, ct_pg bytea NOT NULL);
INSERT INTO creds
SELECT i, x, credcrypt.encrypt_credential(x), encrypt(convert_to(x, 'UTF8'), bench_pgkey(), 'aes')
  FROM (SELECT i, 'sk-live-' || left(md5(random()::text) || md5(random()::text), 40) AS x
          FROM generate_series(1, :rows) AS i) AS s;
VACUUM (FREEZE, ANALYZE) creds;

-- 3. Correctness, once: every stored ciphertext decrypts to its plaintext, a fresh round trip
--    does too, and the random nonce makes every ciphertext distinct.
CREATE TABLE correctness AS
SELECT count(*) AS n,
       count(*) FILTER (WHERE credcrypt.decrypt_credential(ct_cc) = x) AS ok_stored,
       count(*) FILTER (WHERE credcrypt.decrypt_credential(credcrypt.encrypt_credential(x)) = x) AS ok_roundtrip,
       count(*) FILTER (WHERE convert_from(decrypt(ct_pg, bench_pgkey(), 'aes'), 'UTF8') = x) AS ok_pgcrypto,
       count(DISTINCT ct_cc) AS distinct_ct,
       count(*) FILTER (WHERE octet_length(x) = 48) AS len48
  FROM creds;
DO $$
DECLARE c correctness;
BEGIN
    SELECT * INTO c FROM correctness;
    IF c.n <> c.ok_stored OR c.n <> c.ok_roundtrip OR c.n <> c.ok_pgcrypto OR c.n <> c.distinct_ct OR c.n <> c.len48 THEN
        RAISE EXCEPTION 'correctness check FAILED: %', row_to_json(c);
    END IF;
END $$;
\pset tuples_only on
SELECT format('correctness OK: %s rows of 48 chars; decrypt(stored ciphertext) = x: %s, decrypt(encrypt(x)) = x: %s, '
              'pgcrypto round trip = x: %s, distinct credcrypt ciphertexts: %s',
              n, ok_stored, ok_roundtrip, ok_pgcrypto, distinct_ct)
  FROM correctness;
\pset tuples_only off

-- 4. The operations. Each query returns one number; the functions' results are consumed by
--    octet_length() (a header read), so the aggregate adds almost nothing per row.
CREATE TABLE ops (ord int PRIMARY KEY, op text NOT NULL, q text NOT NULL);
INSERT INTO ops VALUES
 (0, 'scan (baseline)',                $q$SELECT sum(octet_length(x)) FROM creds$q$),
 (1, 'md5(x)',                         $q$SELECT sum(octet_length(md5(x))) FROM creds$q$),
 (2, 'pgcrypto encrypt(aes)',          $q$SELECT sum(octet_length(encrypt(convert_to(x, 'UTF8'), bench_pgkey(), 'aes'))) FROM creds$q$),
 (3, 'pgcrypto decrypt(aes)',          $q$SELECT sum(octet_length(convert_from(decrypt(ct_pg, bench_pgkey(), 'aes'), 'UTF8'))) FROM creds$q$),
 (4, 'credcrypt.encrypt_credential',   $q$SELECT sum(octet_length(credcrypt.encrypt_credential(x))) FROM creds$q$),
 (5, 'credcrypt.decrypt_credential',   $q$SELECT sum(octet_length(credcrypt.decrypt_credential(ct_cc))) FROM creds$q$);

CREATE TABLE timings (ord int NOT NULL, run int NOT NULL, ms float8 NOT NULL);

-- Run every operation once to warm up, then `reps` rounds; a round runs each operation once,
-- so slow drift (another process on the machine) hits all operations alike.
CREATE PROCEDURE bench_run(reps int) LANGUAGE plpgsql AS $$
DECLARE
    o record; r int; t0 timestamptz; dummy bigint;
BEGIN
    FOR r IN 0..reps LOOP
        FOR o IN SELECT * FROM ops ORDER BY ord LOOP
            t0 := clock_timestamp();
            EXECUTE o.q INTO dummy;
            IF r > 0 THEN   -- run 0 is the warm-up
                INSERT INTO timings VALUES (o.ord, r,
                    extract(epoch FROM clock_timestamp() - t0) * 1000);
            END IF;
        END LOOP;
    END LOOP;
END $$;

CALL bench_run(:repeat);

-- 5. Results: median over the runs; net = median − median of the bare scan.
CREATE TEMP VIEW results AS
WITH med AS (
    SELECT ord, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms,
           min(ms) AS min_ms, max(ms) AS max_ms
      FROM timings GROUP BY ord
), base AS (
    SELECT m.ord, o.op, m.ms, m.min_ms, m.max_ms,
           m.ms * 1000 / :rows AS us_raw,
           (m.ms - (SELECT ms FROM med WHERE ord = 0)) * 1000 / :rows AS us_net
      FROM med m JOIN ops o USING (ord)
)
SELECT b.*,
       b.us_net / (SELECT us_net FROM base WHERE ord = 2) AS x_pgenc_net,
       b.us_raw / (SELECT us_raw FROM base WHERE ord = 2) AS x_pgenc_raw,
       b.us_net / (SELECT us_net FROM base WHERE ord = 1) AS x_md5_net
  FROM base b;

\echo
\echo 'Per-row cost (median of runs; net = minus the bare scan; ratios use net µs/row unless marked raw)'
SELECT op                                           AS operation,
       round(ms::numeric, 1)                        AS "median ms",
       round(min_ms::numeric, 1) || '–' || round(max_ms::numeric, 1) AS "range ms",
       round(us_raw::numeric, 3)                    AS "µs/row raw",
       CASE WHEN ord = 0 THEN '-' ELSE round(us_net::numeric, 3)::text END      AS "µs/row net",
       CASE WHEN ord = 0 THEN '-' ELSE round(x_pgenc_net::numeric, 2)::text END AS "× pgcrypto enc",
       CASE WHEN ord = 0 THEN '-' ELSE round(x_pgenc_raw::numeric, 2)::text END AS "× pgcrypto enc (raw)",
       CASE WHEN ord = 0 THEN '-' ELSE round(x_md5_net::numeric, 2)::text END   AS "× md5"
  FROM results ORDER BY ord;

\echo 'Targets (informational): credcrypt encrypt and decrypt each ≤ 1.5× pgcrypto encrypt() per row (net)'
\pset tuples_only on
SELECT format('  %-42s %5s× (raw %s×)  %s',
              op || ' ≤ 1.5× pgcrypto encrypt()',
              round(x_pgenc_net::numeric, 2), round(x_pgenc_raw::numeric, 2),
              CASE WHEN x_pgenc_net <= 1.5 THEN 'PASS' ELSE 'MISS' END)
  FROM results WHERE ord IN (4, 5) ORDER BY ord;
\pset tuples_only off
