import { Module } from '@nestjs/common';
import { CredentialsController } from './credentials.controller';
import { CredentialsService } from './credentials.service';
import { PrismaService } from './prisma.service';

@Module({
  controllers: [CredentialsController],
  providers: [PrismaService, CredentialsService],
})
export class AppModule {}
