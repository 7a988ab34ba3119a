-- bench/blind.sh: blind-index lookups and the cost of indexing on INSERT. Figures are ratios
-- against a baseline measured in the same run.
\set ON_ERROR_STOP 1
SET max_parallel_workers_per_gather = 0;
SET jit = off;

-- 1. Lookup of one secret among :lookup_rows rows.
CREATE TABLE bench_lookup (id bigint PRIMARY KEY, api_key text);
SELECT credcrypt.protect_column('bench_lookup', 'api_key', 'local', ARRAY['id'], blind_index_column => 'api_key_bidx');
INSERT INTO bench_lookup SELECT g, 'sk-live-' || g || '-' || md5(g::text) FROM generate_series(1, :lookup_rows) g;
CREATE INDEX bench_lookup_bidx ON bench_lookup (api_key_bidx);
ANALYZE bench_lookup;
SELECT credcrypt.create_decrypted_view('bench_lookup', 'bench_lookup_plain');
SELECT 'sk-live-' || (:lookup_rows / 2) || '-' || md5((:lookup_rows / 2)::text) AS needle \gset

CREATE TEMP TABLE timings (what text, ms float8);
CREATE PROCEDURE time_it(what text, q text, n int) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz; r bigint;
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        EXECUTE q INTO r;
        IF r IS DISTINCT FROM 1 THEN
            RAISE EXCEPTION '% found % rows, not 1', what, r;
        END IF;
        INSERT INTO timings VALUES (what, extract(epoch FROM clock_timestamp() - t0) * 1000);
    END LOOP;
END $$;
CALL time_it('blind index lookup', format('SELECT count(*) FROM bench_lookup WHERE api_key_bidx = credcrypt.blind_index(%L, %L, %L)', 'bench_lookup', 'api_key', :'needle'), 200);
CALL time_it('decrypt-and-compare scan', format('SELECT count(*) FROM bench_lookup_plain WHERE api_key = %L', :'needle'), 3);
SELECT what, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3) AS median_ms, count(*) AS runs
  FROM timings GROUP BY what ORDER BY 2;
SELECT format('lookup of 1 secret in %s rows: blind index %s x faster than decrypting every row (target >= 1000x: %s)',
              :lookup_rows, round((s / b)::numeric), CASE WHEN s / b >= 1000 THEN 'PASS' ELSE 'MISS' END) AS result
  FROM (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE what = 'blind index lookup') AS b,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE what = 'decrypt-and-compare scan') AS s
          FROM timings) x;
DROP TABLE bench_lookup CASCADE;

-- 2. INSERT … SELECT of :rows rows, with and without a blind index.
CREATE TABLE bench_l_plain (id bigint PRIMARY KEY, user_id text, api_key text);
CREATE TABLE bench_l_bidx (LIKE bench_l_plain INCLUDING ALL);
CREATE TABLE bench_e_plain (LIKE bench_l_plain INCLUDING ALL);
CREATE TABLE bench_e_bidx (LIKE bench_l_plain INCLUDING ALL);
CREATE TABLE bench_l_col (LIKE bench_l_plain INCLUDING ALL);
CREATE TABLE bench_e_col (LIKE bench_l_plain INCLUDING ALL);
SELECT credcrypt.protect_column('bench_l_plain', 'api_key', 'local', ARRAY['id'], mask_column => 'api_key_mask');
SELECT credcrypt.protect_column('bench_l_bidx', 'api_key', 'local', ARRAY['id'], mask_column => 'api_key_mask', blind_index_column => 'api_key_bidx');
SELECT credcrypt.protect_column('bench_e_plain', 'api_key', 'envelope:app', ARRAY['id'], mask_column => 'api_key_mask');
SELECT credcrypt.protect_column('bench_e_bidx', 'api_key', 'envelope:app', ARRAY['id'], mask_column => 'api_key_mask', blind_index_column => 'api_key_bidx');
-- *_col: the index column without the btree over it (the extension's own cost); *_bidx: with it
-- (what lookups need; a btree over random 18-byte keys costs what it costs for any random key).
SELECT credcrypt.protect_column('bench_l_col', 'api_key', 'local', ARRAY['id'], mask_column => 'api_key_mask', blind_index_column => 'api_key_bidx');
SELECT credcrypt.protect_column('bench_e_col', 'api_key', 'envelope:app', ARRAY['id'], mask_column => 'api_key_mask', blind_index_column => 'api_key_bidx');
CREATE INDEX ON bench_l_bidx (api_key_bidx);
CREATE INDEX ON bench_e_bidx (api_key_bidx);
TRUNCATE timings;
CREATE PROCEDURE insert_round(rows int) LANGUAGE plpgsql AS $$
DECLARE t text; t0 timestamptz;
BEGIN
    FOREACH t IN ARRAY ARRAY['bench_l_plain', 'bench_l_col', 'bench_l_bidx', 'bench_e_plain', 'bench_e_col', 'bench_e_bidx'] LOOP
        EXECUTE format('TRUNCATE %I', t);
        t0 := clock_timestamp();
        EXECUTE format('INSERT INTO %I (id, user_id, api_key) SELECT g, ''u'' || g, ''sk-live-'' || g || ''-'' || md5(g::text) FROM generate_series(1, %s) g', t, rows);
        INSERT INTO timings VALUES (t, extract(epoch FROM clock_timestamp() - t0) * 1000);
        COMMIT;
    END LOOP;
END $$;
CALL insert_round(:rows);  -- warm-up
TRUNCATE timings;
SELECT format('CALL insert_round(%s);', :rows) FROM generate_series(1, :repeat) \gexec
SELECT what, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_ms,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) * 1000 / :rows)::numeric, 3) AS us_per_row
  FROM timings GROUP BY what ORDER BY what;
WITH m AS (SELECT what, percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS ms FROM timings GROUP BY what)
SELECT format('%s: protected INSERT with a blind index column %sx the same without (target <= 1.3x: %s); with the btree over it as well %sx', k,
              round((b.ms / p.ms)::numeric, 2), CASE WHEN b.ms / p.ms <= 1.3 THEN 'PASS' ELSE 'MISS' END,
              round((i.ms / p.ms)::numeric, 2)) AS result
  FROM (VALUES ('local', 'bench_l_plain', 'bench_l_col', 'bench_l_bidx'), ('envelope', 'bench_e_plain', 'bench_e_col', 'bench_e_bidx')) v(k, plain, col, bidx)
  JOIN m p ON p.what = v.plain JOIN m b ON b.what = v.col JOIN m i ON i.what = v.bidx;
SELECT count(*) AS rows_without_index FROM bench_l_bidx WHERE api_key_bidx IS NULL;
