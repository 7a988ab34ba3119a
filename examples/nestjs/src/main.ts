// Entry point: `node dist/src/main.js` (PORT, and the PG* variables of the database role).
import 'reflect-metadata';
import { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';

export async function createApp(): Promise<INestApplication> {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.enableShutdownHooks();
  return app;
}

if (require.main === module) {
  void createApp().then((app) => app.listen(Number(process.env.PORT ?? 3000), '127.0.0.1'));
}
