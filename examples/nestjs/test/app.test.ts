// End-to-end tests of the example app: the app starts on 127.0.0.1 as the application role and
// is driven over HTTP. scripts/test.sh runs them against its cluster (CC_PGHOST / CC_PGPORT)
// with a dev OpenBao the worker is pointed at (the git_tokens table uses Transit).
// Every plaintext carries the word MARKER, for the log-leak check that runs afterwards.
import 'reflect-metadata';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { INestApplication } from '@nestjs/common';
import { Client } from 'pg';
import { createApp } from '../src/main';

const host = process.env.CC_PGHOST;
const port = Number(process.env.CC_PGPORT);
const database = 'nestjs_example';
let app: INestApplication;
let base: string;

/** A superuser connection to the example database (inspection only). */
async function superuser<T>(fn: (c: Client) => Promise<T>, db = database): Promise<T> {
  const c = new Client({ host, port, user: 'postgres', database: db });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function call(method: string, url: string, user?: string, body?: unknown): Promise<{ status: number; json: any }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (user !== undefined) {
    headers['x-user-id'] = user;
  }
  const res = await fetch(base + url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

before(async () => {
  assert.ok(host && port, 'CC_PGHOST and CC_PGPORT must point at a pg_credcrypt cluster');
  await superuser(async (c) => {
    await c.query(`DROP DATABASE IF EXISTS ${database}`);
    await c.query(`CREATE DATABASE ${database}`);
    const { rows } = await c.query('SELECT active_address FROM credcrypt.status()').catch(() => ({ rows: [] as any[] }));
    assert.ok(rows[0]?.active_address, 'the worker must be pointed at an OpenBao with transit key `app` (scripts/test.sh does this)');
  }, 'postgres');
  await superuser((c) => c.query(fs.readFileSync(path.join(__dirname, '../../sql/schema.sql'), 'utf8')));
  Object.assign(process.env, { PGHOST: host, PGPORT: String(port), PGUSER: 'nest_app', PGDATABASE: database });
  app = await createApp();
  await app.listen(0, '127.0.0.1');
  base = await app.getUrl();
});

after(async () => {
  await app?.close();
});

test('no identity, no access: 401', async () => {
  assert.equal((await call('GET', '/credentials')).status, 401);
  assert.equal((await call('POST', '/credentials', undefined, { provider: 'openai', apiKey: 'sk-NESTMARKER-0' })).status, 401);
  assert.equal((await call('GET', '/credentials', '')).status, 401);
});

test('the owner reads its key back, another user gets 404, the table holds only ciphertext', async () => {
  const stored = await call('POST', '/credentials', 'u1', { provider: 'openai', apiKey: 'sk-proj-NESTMARKER-a1b2' });
  assert.equal(stored.status, 201, JSON.stringify(stored.json));
  assert.equal(stored.json.apiKeyMask, 'sk-…a1b2');
  const id = stored.json.id;
  const mine = await call('GET', `/credentials/${id}`, 'u1');
  assert.deepEqual(mine.json, { id, provider: 'openai', apiKey: 'sk-proj-NESTMARKER-a1b2' });
  assert.equal((await call('GET', `/credentials/${id}`, 'u2')).status, 404);
  assert.equal((await call('GET', '/credentials/not-a-uuid', 'u1')).status, 400);
  const raw = await superuser((c) => c.query('SELECT api_key FROM public.credentials'));
  assert.ok(raw.rows.length > 0);
  for (const r of raw.rows) {
    assert.match(r.api_key, /^cc1:local:local:[0-9a-f]{16}:c:/);
    assert.ok(!r.api_key.includes('NESTMARKER'));
  }
});

test("the masked list shows the user's own masks only", async () => {
  await call('POST', '/credentials', 'u3', { provider: 'anthropic', apiKey: 'sk-ant-NESTMARKER-9z9z' });
  await call('POST', '/credentials', 'u3', { provider: 'github', apiKey: 'ghp_NESTMARKER_77c3' });
  const list = await call('GET', '/credentials', 'u3');
  assert.equal(list.status, 200);
  assert.deepEqual(
    list.json.map((r: any) => [r.provider, r.apiKeyMask]),
    [['anthropic', 'sk-…9z9z'], ['github', 'ghp…77c3']],
  );
  assert.deepEqual((await call('GET', '/credentials', 'nobody')).json, []);
});

test("Prisma's upsert on the natural key replaces the value and keeps the row bound to its id", async () => {
  const first = await call('POST', '/credentials', 'u4', { provider: 'openai', apiKey: 'sk-first-NESTMARKER-1111' });
  const before = await superuser((c) => c.query('SELECT api_key FROM public.credentials WHERE id = $1', [first.json.id]));
  const second = await call('POST', '/credentials', 'u4', { provider: 'openai', apiKey: 'sk-second-NESTMARKER-2222' });
  assert.equal(second.status, 201, JSON.stringify(second.json));
  assert.equal(second.json.id, first.json.id, 'the same row');
  assert.equal(second.json.apiKeyMask, 'sk-…2222');
  assert.equal((await call('GET', `/credentials/${first.json.id}`, 'u4')).json.apiKey, 'sk-second-NESTMARKER-2222');
  const after = await superuser((c) =>
    c.query("SELECT count(*)::int AS n, min(api_key) AS v FROM public.credentials WHERE user_id = 'u4'"),
  );
  assert.equal(after.rows[0].n, 1);
  assert.notEqual(after.rows[0].v, before.rows[0].api_key, 'a new ciphertext');
});

test('concurrent requests of many users on a small pool: each sees only its own rows', async () => {
  const users = Array.from({ length: 12 }, (_, i) => `c${i}`);
  await Promise.all(
    users.flatMap((u) => [
      call('POST', '/credentials', u, { provider: 'openai', apiKey: `sk-${u}-NESTMARKER-aaaa` }),
      call('POST', '/credentials', u, { provider: 'openai', apiKey: `sk-${u}-NESTMARKER-bbbb` }),
    ]),
  );
  for (const u of users) {
    const list = (await call('GET', '/credentials', u)).json;
    assert.equal(list.length, 1, `${u}: ${JSON.stringify(list)}`);
    const got = (await call('GET', `/credentials/${list[0].id}`, u)).json.apiKey;
    assert.match(got, new RegExp(`^sk-${u}-NESTMARKER-(aaaa|bbbb)$`));
    assert.equal(list[0].apiKeyMask, `sk-…${got.slice(-4)}`);
  }
  // Outside a request's transaction the application role has no owner: it sees nothing.
  const c = new Client({ host, port, user: 'nest_app', database });
  await c.connect();
  try {
    assert.equal((await c.query('SELECT count(*)::int AS n FROM public.credentials')).rows[0].n, 0);
  } finally {
    await c.end();
  }
});

test('verify compares in the database: right key true, wrong key false, other user 404', async () => {
  const { json } = await call('POST', '/credentials', 'u5', { provider: 'stripe', apiKey: 'sk_live_NESTMARKER_5555' });
  assert.deepEqual((await call('POST', '/credentials/verify', 'u5', { id: json.id, apiKey: 'sk_live_NESTMARKER_5555' })).json, { ok: true });
  assert.deepEqual((await call('POST', '/credentials/verify', 'u5', { id: json.id, apiKey: 'sk_live_NESTMARKER_5556' })).json, { ok: false });
  assert.equal((await call('POST', '/credentials/verify', 'u6', { id: json.id, apiKey: 'sk_live_NESTMARKER_5555' })).status, 404);
  assert.equal((await call('POST', '/credentials/verify', 'u5', { id: json.id })).status, 400);
});

test('a Transit-protected table works through the same app', async () => {
  const stored = await call('POST', '/git-tokens', 'u7', { host: 'github.com', token: 'ghp_NESTMARKER_transit_01' });
  assert.equal(stored.status, 201, JSON.stringify(stored.json));
  const again = await call('POST', '/git-tokens', 'u7', { host: 'github.com', token: 'ghp_NESTMARKER_transit_02' });
  assert.equal(again.json.id, stored.json.id);
  assert.deepEqual((await call('GET', `/git-tokens/${stored.json.id}`, 'u7')).json, {
    id: stored.json.id,
    host: 'github.com',
    token: 'ghp_NESTMARKER_transit_02',
  });
  assert.equal((await call('GET', `/git-tokens/${stored.json.id}`, 'u8')).status, 404);
  const raw = await superuser((c) => c.query('SELECT token FROM public.git_tokens'));
  assert.match(raw.rows[0].token, /^cc1:transit:app:1:c:vault:v1:/);
});
