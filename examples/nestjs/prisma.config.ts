// Prisma 7 configuration: the schema's location. The connection is made by the app through
// @prisma/adapter-pg (src/prisma.service.ts), so generate needs no database URL.
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: 'prisma/schema.prisma',
});
