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
    state          text     NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'interrupted')),
    total          bigint   NOT NULL,
    done           bigint   NOT NULL DEFAULT 0,
    changed        bigint   NOT NULL DEFAULT 0,
    failed         bigint   NOT NULL DEFAULT 0,
    by_source      jsonb    NOT NULL DEFAULT '{}',
    backend_pid    integer  NOT NULL DEFAULT pg_backend_pid(),
    run_by         name     NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
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

CREATE VIEW credcrypt.reencrypt_progress AS
SELECT run_id,
       relid::regclass AS table_name,
       column_name,
       CASE WHEN dry_run THEN 'dry run: ' ELSE '' END || source_key || ' -> ' || target_key
           || CASE WHEN target_key = 'local' THEN ' (key id ' || target_version || ')' ELSE ' v' || target_version END AS migration,
       state,
       total, done, changed, failed,
       CASE WHEN total > 0 THEN round(100.0 * least(done, total) / total, 1) END AS percent,
       round((done / greatest(extract(epoch FROM updated_at - started_at), 0.001))::numeric, 0) AS rows_per_second,
       CASE WHEN state = 'running' AND done > 0 AND total > done
            THEN (updated_at - started_at) * ((total - done)::float8 / done) END AS eta,
       by_source, backend_pid, run_by, started_at, updated_at
  FROM credcrypt.reencrypt_runs;

-- The migration procedure: commits after every batch; a re-run continues where a cancelled or
-- crashed run stopped (values already on the target are skipped).
CREATE PROCEDURE credcrypt.reencrypt_column(
    tbl regclass, col name, target_key text DEFAULT NULL, batch_size integer DEFAULT 500, dry_run boolean DEFAULT false)
LANGUAGE plpgsql AS $$
DECLARE
    run bigint;
    total bigint;
    d record;
    leaf oid;
    cursor text;
    r record;
    pass integer;
    changed_in_pass bigint;
    seen bigint := 0;
    t0 timestamptz := clock_timestamp();
    elapsed float8;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR batch_size > 10000 THEN
        RAISE EXCEPTION 'batch_size must be between 1 and 10000' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The default, 500, keeps row locks short; up to a few thousand is faster for Transit.';
    END IF;
    SELECT p.run_id, p.total INTO run, total
      FROM credcrypt._reencrypt_prepare(tbl::oid, col::text, target_key, coalesce(dry_run, false)) p;
    COMMIT;
    FOR d IN SELECT binding_id FROM credcrypt.protected_columns
              WHERE relid = tbl AND column_name = col ORDER BY json_path LOOP
        FOR leaf IN SELECT l.leaf FROM credcrypt._reencrypt_leaves(tbl::oid) l LOOP
            pass := 0;
            LOOP
                pass := pass + 1;
                cursor := '(0,0)';
                changed_in_pass := 0;
                LOOP
                    SELECT * INTO r FROM credcrypt._reencrypt_batch(run, leaf, d.binding_id, cursor, batch_size);
                    COMMIT;
                    changed_in_pass := changed_in_pass + r.changed;
                    seen := seen + r.rows_seen;
                    IF r.rows_seen > 0 THEN
                        elapsed := greatest(extract(epoch FROM clock_timestamp() - t0), 0.001);
                        RAISE NOTICE 'pg_credcrypt: %/% values (% changed, % unreadable in this batch), % rows/s, ETA % s',
                            least(seen, total), total, r.changed, r.failed, round((seen / elapsed)::numeric),
                            CASE WHEN seen >= total THEN 0 ELSE round(((total - seen) * elapsed / seen)::numeric) END;
                    END IF;
                    EXIT WHEN r.finished;
                    cursor := r.next_after;
                END LOOP;
                -- Rows locked by the application were skipped (SKIP LOCKED): another pass.
                EXIT WHEN dry_run OR changed_in_pass = 0 OR pass >= 10
                       OR credcrypt._reencrypt_remaining(run, leaf, d.binding_id) = 0;
                PERFORM pg_sleep(0.05);
            END LOOP;
        END LOOP;
    END LOOP;
    RAISE NOTICE '%', credcrypt._reencrypt_finish(run);
    COMMIT;
END
$$;
COMMENT ON PROCEDURE credcrypt.reencrypt_column(regclass, name, text, integer, boolean) IS
    'pg_credcrypt: re-encrypt a protected column in committed batches (plaintext, local, old versions, other keys, vault:, legacy Node values)';

CREATE FUNCTION credcrypt.key_usage(tbl regclass DEFAULT NULL)
RETURNS TABLE (table_name text, column_name text, json_path text[], source text, key_name text, key_version text,
               current boolean, "values" bigint)
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT * FROM credcrypt._key_usage(tbl::oid);
END;
COMMENT ON FUNCTION credcrypt.key_usage(regclass) IS
    'pg_credcrypt: values per provider, key and version (plaintext and unreadable counted) for each protected column';

-- Envelope data keys (provider envelope:<Transit key>): one row per data key, its plaintext
-- wrapped by Transit. Written by the extension; carried by pg_dump. See docs/architecture.md.
CREATE TABLE credcrypt.data_keys (
    id           text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    transit_key  text NOT NULL,
    wrapped      text NOT NULL CHECK (wrapped ~ '^vault:v[1-9][0-9]*:'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    rewrapped_at timestamptz
);
CREATE INDEX ON credcrypt.data_keys (transit_key);
COMMENT ON TABLE credcrypt.data_keys IS 'pg_credcrypt: envelope data keys, wrapped by OpenBao Transit (never in plaintext)';
SELECT pg_catalog.pg_extension_config_dump('credcrypt.data_keys', '');
