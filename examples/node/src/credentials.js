'use strict';
// A credentials service as a NestJS provider would implement it, with node-postgres (`pg`).
// The table app.integration_credentials has its secrets protected by pg_credcrypt:
//   - the service INSERTs plaintext; the database stores ciphertext bound to the row;
//   - every call runs in a transaction that first calls credcrypt.set_owner(userId), so the
//     row-level security policies of credcrypt.enable_owner_rls show only that user's rows
//     (a pooled connection carries no owner after COMMIT);
//   - values travel as bind parameters ($1, $2 …), never in SQL text (so never in server logs).

/** Runs `fn(client)` in a transaction owned by `userId`. */
async function asOwner(pool, userId, fn) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT credcrypt.set_owner($1)', [String(userId)]);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK');
    throw err;
  } finally {
    client.release();
  }
}

/** Stores a credential (plaintext in, ciphertext stored). Returns the new row id. */
async function storeCredential(pool, userId, provider, apiKey, config = null) {
  return asOwner(pool, userId, async (c) => {
    const { rows } = await c.query(
      `INSERT INTO app.integration_credentials (user_id, provider, api_key, config)
       VALUES ($1, $2, $3, $4) RETURNING id`,
      [String(userId), provider, apiKey, config],
    );
    return rows[0].id;
  });
}

/** Reads a credential back in plaintext, as its owner (NULL for another user's row). */
async function getCredential(pool, userId, id) {
  return asOwner(pool, userId, async (c) => {
    const { rows } = await c.query(
      'SELECT provider, api_key, config FROM app.integration_credentials_decrypted WHERE id = $1',
      [id],
    );
    return rows[0] ?? null;
  });
}

/** Checks a presented secret against the stored one without reading it back (constant time). */
async function verifyCredential(pool, userId, id, presented) {
  return asOwner(pool, userId, async (c) => {
    const { rows } = await c.query(
      `SELECT credcrypt.verify_credential(t.api_key, $2, credcrypt.column_context(p.binding_id, ARRAY[t.id::text])) AS ok
         FROM app.integration_credentials t, credcrypt.protected_columns_info p
        WHERE t.id = $1 AND p.table_schema = 'app' AND p.table_name = 'integration_credentials'
          AND p.column_name = 'api_key'`,
      [id, presented],
    );
    return rows.length === 1 && rows[0].ok === true;
  });
}

/** What a reporting role sees: masks, never ciphertext or plaintext. */
// The masked view shows every owner's masks (it is the reporting surface across owners): no
// owner needs to be set, and none of its columns holds a ciphertext or a plaintext.
async function listMasked(pool) {
  const { rows } = await pool.query(
    'SELECT id, user_id, provider, api_key_mask FROM app.integration_credentials_masked ORDER BY id',
  );
  return rows;
}

module.exports = { asOwner, storeCredential, getCredential, verifyCredential, listMasked };
