'use strict';
// Runs against a cluster with pg_credcrypt (scripts/test.sh passes CC_PGHOST / CC_PGPORT).
// Sets up database `node_example` with docker/postgres/initdb/10-credcrypt.sql's schema on the
// local key, then exercises the service as the roles `app` and `reporting`.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Client, Pool } = require('pg');
const svc = require('../src/credentials');

const host = process.env.CC_PGHOST;
const port = Number(process.env.CC_PGPORT);
const database = 'node_example';
let app;
let reporting;

before(async () => {
  assert.ok(host && port, 'CC_PGHOST and CC_PGPORT must point at a pg_credcrypt cluster');
  const admin = new Client({ host, port, user: 'postgres', database: 'postgres' });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${database}`);
  await admin.query(`CREATE DATABASE ${database}`);
  await admin.end();
  // The deployment's init SQL, with the local key instead of Transit (no OpenBao here).
  const init = fs
    .readFileSync(path.join(__dirname, '../../../docker/postgres/initdb/10-credcrypt.sql'), 'utf8')
    .replaceAll("key_name => 'transit:app'", "key_name => 'local'");
  const db = new Client({ host, port, user: 'postgres', database });
  await db.connect();
  await db.query(init);
  await db.end();
  app = new Pool({ host, port, user: 'app', database, max: 2 });
  reporting = new Pool({ host, port, user: 'reporting', database, max: 1 });
});

after(async () => {
  await app?.end();
  await reporting?.end();
});

test('stores plaintext as ciphertext and reads it back as its owner only', async () => {
  const id = await svc.storeCredential(app, 'user-1', 'openai', 'sk-proj-NODEMARKER-a1b2', { apiKey: 'sk-ant-NODEJSON-9', model: 'gpt-4o' });
  const stored = await svc.asOwner(app, 'user-1', (c) =>
    c.query('SELECT api_key, config FROM app.integration_credentials WHERE id = $1', [id]));
  assert.match(stored.rows[0].api_key, /^cc1:local:local:[0-9a-f]{16}:c:/);
  assert.match(stored.rows[0].config.apiKey, /^cc1:local:/);
  assert.equal(stored.rows[0].config.model, 'gpt-4o');
  const mine = await svc.getCredential(app, 'user-1', id);
  assert.equal(mine.api_key, 'sk-proj-NODEMARKER-a1b2');
  assert.equal(mine.config.apiKey, 'sk-ant-NODEJSON-9');
  assert.equal(await svc.getCredential(app, 'user-2', id), null, "another user's row is invisible");
});

test('a pooled connection carries no owner after the transaction', async () => {
  await svc.storeCredential(app, 'user-3', 'github', 'ghp_NODEMARKER000003');
  const { rows } = await app.query('SELECT count(*)::int AS n FROM app.integration_credentials');
  assert.equal(rows[0].n, 0);
});

test('verifies a presented client secret without reading it', async () => {
  const id = await svc.storeCredential(app, 'user-4', 'client', 'cs_live_NODEMARKER_4444');
  assert.equal(await svc.verifyCredential(app, 'user-4', id, 'cs_live_NODEMARKER_4444'), true);
  assert.equal(await svc.verifyCredential(app, 'user-4', id, 'cs_live_wrong'), false);
});

test('the reporting role sees masks only, across owners, and cannot decrypt', async () => {
  const id = await svc.storeCredential(app, 'user-5', 'openai', 'sk-proj-NODEMARKER-5555');
  const rows = await svc.listMasked(reporting);
  const mine = rows.filter((r) => r.id === id);
  assert.deepEqual(mine.map((r) => [r.user_id, r.api_key_mask]), [['user-5', 'sk-…5555']]);
  assert.ok(new Set(rows.map((r) => r.user_id)).size > 1, 'masks of every owner');
  const text = JSON.stringify(rows);
  assert.ok(!text.includes('cc1:') && !text.includes('NODEMARKER'), text);
  await assert.rejects(
    reporting.query('SELECT api_key FROM app.integration_credentials'),
    (e) => e.code === '42501',
  );
  await assert.rejects(
    reporting.query("SELECT credcrypt.decrypt_credential('cc1:local:local:0000000000000000:n:AAAA')"),
    (e) => e.code === '42501',
  );
});

test('errors carry a SQLSTATE and never the value', async () => {
  const err = await svc
    .asOwner(app, 'user-6', (c) =>
      c.query("INSERT INTO app.integration_credentials (user_id, provider, config) VALUES ('user-6', 'x', $1)", [
        { apiKey: 12345 },
      ]))
    .catch((e) => e);
  assert.equal(err.code, '22023');
  assert.ok(err.hint, 'has a hint');
});
