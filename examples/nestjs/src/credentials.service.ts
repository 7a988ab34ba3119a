// The credentials of the request's user. Every method runs in the request's transaction
// (`tx()`, owned by the user), so row-level security limits it to that user's rows.
//
// What the database does: a plaintext written to `api_key` / `token` is encrypted by
// pg_credcrypt's trigger, bound to the row's id (a ciphertext copied into another row is
// refused); `api_key_mask` is computed by the trigger; plaintext is read back only through the
// decrypted views. Secrets travel as bind parameters, never in SQL text.
import { Injectable, NotFoundException } from '@nestjs/common';
import { tx } from './request-tx';

export interface StoredCredential {
  id: string;
  apiKeyMask: string | null;
}

@Injectable()
export class CredentialsService {
  /**
   * Stores the user's key for `provider`, replacing an earlier one: Prisma's upsert on the
   * natural key (user_id, provider). The row keeps its id, and the new value is bound to it.
   */
  async store(userId: string, provider: string, apiKey: string): Promise<StoredCredential> {
    return tx().credential.upsert({
      where: { userId_provider: { userId, provider } },
      create: { userId, provider, apiKey },
      update: { apiKey },
      select: { id: true, apiKeyMask: true },
    });
  }

  /** The user's credentials as masks (never a ciphertext or a plaintext). */
  async list(): Promise<{ id: string; provider: string; apiKeyMask: string | null }[]> {
    return tx().credential.findMany({
      select: { id: true, provider: true, apiKeyMask: true },
      orderBy: { provider: 'asc' },
    });
  }

  /** The plaintext of one of the user's credentials (404 for anybody else's). */
  async get(id: string): Promise<{ id: string; provider: string; apiKey: string }> {
    const rows = await tx().$queryRaw<{ id: string; provider: string; api_key: string }[]>`
      SELECT id::text, provider, api_key FROM public.credentials_decrypted WHERE id = ${id}::uuid`;
    if (rows.length !== 1) {
      throw new NotFoundException();
    }
    return { id: rows[0].id, provider: rows[0].provider, apiKey: rows[0].api_key };
  }

  /** Whether `presented` is the stored key (constant time in the database, no plaintext read). */
  async verify(id: string, presented: string): Promise<boolean> {
    const rows = await tx().$queryRaw<{ ok: boolean }[]>`
      SELECT credcrypt.verify_credential(c.api_key, ${presented},
                                         credcrypt.column_context(p.binding_id, ARRAY[c.id::text])) AS ok
        FROM public.credentials c, credcrypt.protected_columns_info p
       WHERE c.id = ${id}::uuid
         AND p.table_schema = 'public' AND p.table_name = 'credentials' AND p.column_name = 'api_key'`;
    if (rows.length !== 1) {
      throw new NotFoundException();
    }
    return rows[0].ok === true;
  }

  /** Stores the user's token for a git host (the table is protected with a Transit key). */
  async storeGitToken(userId: string, host: string, token: string): Promise<{ id: string }> {
    return tx().gitToken.upsert({
      where: { userId_host: { userId, host } },
      create: { userId, host, token },
      update: { token },
      select: { id: true },
    });
  }

  /** The plaintext of one of the user's git tokens. */
  async gitToken(id: string): Promise<{ id: string; host: string; token: string }> {
    const rows = await tx().$queryRaw<{ id: string; host: string; token: string }[]>`
      SELECT id::text, host, token FROM public.git_tokens_decrypted WHERE id = ${id}::uuid`;
    if (rows.length !== 1) {
      throw new NotFoundException();
    }
    return rows[0];
  }
}
