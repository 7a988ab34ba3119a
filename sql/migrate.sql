-- pg_credcrypt: re-encryption migrations and key usage. See docs/migrations.md.

-- One row per CALL credcrypt.reencrypt_column (committed with every batch, so other sessions
-- can watch it through credcrypt.reencrypt_progress).
CREATE TABLE credcrypt.reencrypt_runs (
    run_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid          regclass NOT NULL,
    column_name    name     NOT NULL,
    source_key     text     NOT NULL,
    target_key     text     NOT NULL,
    target_version text     NOT NULL,
    dry_run        boolean  NOT NULL,
    state          text     NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'interrupted', 'failed')),
    total          bigint   NOT NULL,
    done           bigint   NOT NULL DEFAULT 0,
    changed        bigint   NOT NULL DEFAULT 0,
    failed         bigint   NOT NULL DEFAULT 0,
    by_source      jsonb    NOT NULL DEFAULT '{}',
    backend_pid    integer  NOT NULL DEFAULT pg_backend_pid(),
    run_by         name     NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    error          text,
    remaining      bigint,
    complete       boolean,
    -- a column the application encrypts itself (no designation): the context each value was
    -- encrypted with, as a format with {column} placeholders (NULL: no context)
    context_format text,
    app_managed    boolean  NOT NULL DEFAULT false
);
COMMENT ON TABLE credcrypt.reencrypt_runs IS 'pg_credcrypt: re-encryption runs (written by reencrypt_column)';

-- Values a run could not read: left untouched, listed here (never the value).
CREATE TABLE credcrypt.reencrypt_failures (
    run_id   bigint   NOT NULL REFERENCES credcrypt.reencrypt_runs ON DELETE CASCADE,
    relid    regclass NOT NULL,
    row_ctid tid      NOT NULL,
    source   text     NOT NULL,
    reason   text     NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON credcrypt.reencrypt_failures (run_id, relid);

-- state: running (its backend is at work), finished (closed; complete tells whether every
-- value is on the target), failed (a batch failed: error), interrupted (its backend is gone:
-- terminated, crashed). A re-run continues where it stopped.
CREATE VIEW credcrypt.reencrypt_progress AS
SELECT run_id,
       relid::regclass AS table_name,
       column_name,
       CASE WHEN dry_run THEN 'dry run: ' ELSE '' END || source_key || ' -> ' || target_key
           || CASE WHEN target_key = 'local' THEN ' (key id ' || target_version || ')'
                   WHEN target_key LIKE 'envelope:%' THEN '' ELSE ' v' || target_version END AS migration,
       CASE WHEN state = 'running' AND NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity a WHERE a.pid = r.backend_pid)
            THEN 'interrupted' ELSE state END AS state,
       total, done, changed, failed,
       CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) END AS percent,
       round((done / greatest(extract(epoch FROM updated_at - started_at), 0.001))::numeric, 0) AS rows_per_second,
       CASE WHEN state = 'running' AND done > 0 AND total > done
            THEN (updated_at - started_at) * ((total - done)::float8 / done) END AS eta,
       remaining, complete, error,
       by_source, backend_pid, run_by, started_at, updated_at
  FROM credcrypt.reencrypt_runs r;

-- The migration procedure: commits after every batch; a re-run continues where a cancelled or
-- crashed run stopped (values already on the target are skipped). A procedure that commits
-- cannot carry a SET clause, so it pins search_path itself at the start of every transaction,
-- and names only schema-qualified functions, operators and types besides.
CREATE PROCEDURE credcrypt.reencrypt_column(
    tbl regclass, col name, target_key text DEFAULT NULL, batch_size integer DEFAULT 500, dry_run boolean DEFAULT false,
    strict boolean DEFAULT false, context_format text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    run pg_catalog.int8;
    total pg_catalog.int8;
    d record;
    leaf pg_catalog.oid;
    cursor pg_catalog.text;
    r record;
    c record;
    pass pg_catalog.int4;
    changed_in_pass pg_catalog.int8;
    seen pg_catalog.int8 := 0;
    t0 pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    last_notice pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    every pg_catalog.interval;
    elapsed pg_catalog.float8;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 OR batch_size OPERATOR(pg_catalog.>) 10000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The default, 500, keeps row locks short; up to a few thousand is faster for Transit.';
    END IF;
    every := pg_catalog.current_setting('credcrypt.reencrypt_progress_interval')::pg_catalog.interval;
    SELECT p.run_id, p.total INTO run, total
      FROM credcrypt._reencrypt_start(tbl::pg_catalog.oid, col::pg_catalog.text, target_key, coalesce(dry_run, false),
                                      context_format) p;
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR d IN SELECT b.binding_id FROM credcrypt._reencrypt_bindings(run) b LOOP
        FOR leaf IN SELECT l.leaf FROM credcrypt._reencrypt_leaves(tbl::pg_catalog.oid) l LOOP
            pass := 0;
            LOOP
                pass := pass OPERATOR(pg_catalog.+) 1;
                cursor := '(0,0)';
                changed_in_pass := 0;
                LOOP
                    SELECT * INTO r FROM credcrypt._reencrypt_step(run, leaf, d.binding_id, cursor, batch_size);
                    COMMIT;
                    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
                    IF r.error_code IS NOT NULL THEN
                        -- The run is marked failed (committed above); the batch's work was rolled back.
                        r.error_hint := pg_catalog.concat_ws(' ', r.error_hint,
                            'The run is marked failed in credcrypt.reencrypt_progress; CALL credcrypt.reencrypt_column again to continue it.');
                        IF r.error_detail IS NULL THEN
                            RAISE EXCEPTION USING ERRCODE = r.error_code, MESSAGE = r.error_message, HINT = r.error_hint;
                        ELSE
                            RAISE EXCEPTION USING ERRCODE = r.error_code, MESSAGE = r.error_message, HINT = r.error_hint,
                                DETAIL = r.error_detail;
                        END IF;
                    END IF;
                    changed_in_pass := changed_in_pass OPERATOR(pg_catalog.+) r.changed;
                    seen := seen OPERATOR(pg_catalog.+) r.rows_seen;
                    IF r.rows_seen OPERATOR(pg_catalog.>) 0 AND every OPERATOR(pg_catalog.>=) '0'::pg_catalog.interval
                       AND pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) last_notice OPERATOR(pg_catalog.>=) every THEN
                        last_notice := pg_catalog.clock_timestamp();
                        elapsed := GREATEST(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) t0), 0.001);
                        RAISE NOTICE 'pg_credcrypt: %/% values, % rows/s (SELECT * FROM credcrypt.reencrypt_progress WHERE run_id = %)',
                            LEAST(seen, total), total, pg_catalog.round((seen::pg_catalog.float8 OPERATOR(pg_catalog./) elapsed)::pg_catalog.numeric), run;
                    END IF;
                    EXIT WHEN r.finished;
                    cursor := r.next_after;
                END LOOP;
                -- Rows locked by the application were skipped (SKIP LOCKED): another pass.
                EXIT WHEN dry_run OR changed_in_pass OPERATOR(pg_catalog.=) 0 OR pass OPERATOR(pg_catalog.>=) 10
                       OR credcrypt._reencrypt_remaining(run, leaf, d.binding_id) OPERATOR(pg_catalog.=) 0;
                PERFORM pg_catalog.pg_sleep(0.05);
            END LOOP;
        END LOOP;
    END LOOP;
    SELECT * INTO c FROM credcrypt._reencrypt_close(run);
    COMMIT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF c.complete THEN
        RAISE NOTICE '%', c.summary;
    ELSIF strict THEN
        RAISE EXCEPTION '%', c.summary USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'SELECT * FROM credcrypt.reencrypt_failures WHERE run_id = ' OPERATOR(pg_catalog.||) run OPERATOR(pg_catalog.||) ' lists the values that could not be read; CALL again for values written during the run.';
    ELSE
        RAISE WARNING '%', c.summary;
    END IF;
END
$$;
COMMENT ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean, boolean, text) IS
    'pg_credcrypt: re-encrypt a protected column — or one the application encrypts itself, with context_format — in committed batches (plaintext, local, old versions, other keys, vault:, legacy Node values)';

CREATE FUNCTION credcrypt.key_usage(tbl regclass DEFAULT NULL, col name DEFAULT NULL)
RETURNS TABLE (table_name text, column_name text, json_path text[], source text, key_name text, key_version text,
               current boolean, "values" bigint)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT * FROM credcrypt._key_usage_of(tbl::oid, col::text);
END;
COMMENT ON FUNCTION credcrypt.key_usage(regclass, name) IS
    'pg_credcrypt: values per provider, key and version (plaintext and unreadable counted) for each protected column (or one column, also one the application encrypts itself)';

-- The last answer of key_usage() per table, with when it was measured: what the Prometheus
-- queries export (a scrape must not read every protected value). Written by key_usage() as the
-- catalog's owner; schedule `SELECT count(*) FROM credcrypt.key_usage()` (pg_cron, a cron job)
-- to keep it fresh. Not carried by pg_dump (it is measured again after a restore).
CREATE TABLE credcrypt.key_usage_snapshot (
    relid       oid         NOT NULL,
    table_name  text        NOT NULL,
    column_name text        NOT NULL,
    json_path   text[]      NOT NULL,
    source      text        NOT NULL,
    key_name    text,
    key_version text,
    current     boolean,
    "values"    bigint      NOT NULL,
    measured_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE credcrypt.key_usage_snapshot IS
    'pg_credcrypt: the last key_usage() answer per table, for monitoring (refresh by calling key_usage())';

-- Re-encryption for applications that rotate in their own code (columns they encrypt
-- themselves with encrypt_credential(…, context => …)): decrypt with the value's own key and
-- encrypt with target_key (NULL: credcrypt.default_key), same context. Security invoker: the
-- caller needs EXECUTE on both decrypt_credential(s) and encrypt_credential(s) — credcrypt_decryptor
-- and credcrypt_encryptor — and the decryption is audited like any other.
CREATE FUNCTION credcrypt.reencrypt_credential(ciphertext text, context text DEFAULT NULL, target_key text DEFAULT NULL)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
RETURN credcrypt.encrypt_credential(credcrypt.decrypt_credential(ciphertext, context), target_key, context);
COMMENT ON FUNCTION credcrypt.reencrypt_credential(text, text, text) IS
    'pg_credcrypt: decrypt a value and encrypt it again with target_key (same context); needs credcrypt_decryptor and credcrypt_encryptor';
CREATE FUNCTION credcrypt.reencrypt_credentials(ciphertexts text[], contexts text[] DEFAULT NULL, target_key text DEFAULT NULL)
RETURNS text[]
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
RETURN credcrypt.encrypt_credentials(credcrypt.decrypt_credentials(ciphertexts, contexts), target_key, contexts);
COMMENT ON FUNCTION credcrypt.reencrypt_credentials(text[], text[], text) IS
    'pg_credcrypt: reencrypt_credential for arrays (one Transit batch each way)';

-- Envelope data keys (provider envelope:<Transit key>): one row per data key, its plaintext
-- wrapped by Transit. Written by the extension; carried by pg_dump. See docs/architecture.md.
CREATE TABLE credcrypt.data_keys (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    transit_key  text NOT NULL,
    wrapped      text NOT NULL CHECK (wrapped ~ '^vault:v[1-9][0-9]*:'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz,
    -- wrapped with the associated data pg_credcrypt/data-key/v1:<id> (false: a key of 0.1.0,
    -- until rotate_key('envelope:…') wraps it again)
    bound        boolean NOT NULL DEFAULT true
);
CREATE INDEX ON credcrypt.data_keys (transit_key);
COMMENT ON TABLE credcrypt.data_keys IS 'pg_credcrypt: envelope data keys, wrapped by OpenBao Transit (never in plaintext)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.data_keys', '');
