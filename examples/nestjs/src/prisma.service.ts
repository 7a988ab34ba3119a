// One Prisma client for the app, on node-postgres through @prisma/adapter-pg. The connection
// settings come from the standard libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE,
// PGPASSWORD), which node-postgres reads itself; the role is the application role (encryptor
// and decryptor, no BYPASSRLS).
import { Injectable, OnModuleDestroy } from '@nestjs/common';
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../generated/prisma/client';

@Injectable()
export class PrismaService extends PrismaClient implements OnModuleDestroy {
  constructor() {
    super({ adapter: new PrismaPg({ max: Number(process.env.PG_POOL_MAX ?? 4) }) });
  }

  async onModuleDestroy(): Promise<void> {
    await this.$disconnect();
  }
}
