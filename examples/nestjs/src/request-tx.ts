// The Prisma transaction of the current HTTP request, held in AsyncLocalStorage by
// OwnerTransactionInterceptor, so that services need no transaction parameter.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Prisma } from '../generated/prisma/client';

export const requestTx = new AsyncLocalStorage<Prisma.TransactionClient>();

/** The request's transaction; outside the interceptor this is a programming error. */
export function tx(): Prisma.TransactionClient {
  const t = requestTx.getStore();
  if (!t) {
    throw new Error('no request transaction: the handler must run under OwnerTransactionInterceptor');
  }
  return t;
}
