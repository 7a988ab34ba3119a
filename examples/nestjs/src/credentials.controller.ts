// HTTP surface: arguments and status codes only; the work is in CredentialsService.
import { BadRequestException, Body, Controller, Get, Headers, HttpCode, Param, ParseUUIDPipe, Post, UseInterceptors } from '@nestjs/common';
import { CredentialsService } from './credentials.service';
import { OwnerTransactionInterceptor } from './owner.interceptor';

/** A non-empty string field of a JSON body, or 400. */
function field(body: unknown, name: string): string {
  const v = (body as Record<string, unknown> | null)?.[name];
  if (typeof v !== 'string' || v.length === 0) {
    throw new BadRequestException(`${name} must be a non-empty string`);
  }
  return v;
}

@Controller()
@UseInterceptors(OwnerTransactionInterceptor)
export class CredentialsController {
  constructor(private readonly credentials: CredentialsService) {}

  @Post('credentials')
  store(@Headers('x-user-id') user: string, @Body() body: unknown) {
    return this.credentials.store(user, field(body, 'provider'), field(body, 'apiKey'));
  }

  @Get('credentials')
  list() {
    return this.credentials.list();
  }

  @Post('credentials/verify')
  @HttpCode(200)
  async verify(@Body() body: unknown) {
    return { ok: await this.credentials.verify(field(body, 'id'), field(body, 'apiKey')) };
  }

  @Get('credentials/:id')
  get(@Param('id', ParseUUIDPipe) id: string) {
    return this.credentials.get(id);
  }

  @Post('git-tokens')
  storeGitToken(@Headers('x-user-id') user: string, @Body() body: unknown) {
    return this.credentials.storeGitToken(user, field(body, 'host'), field(body, 'token'));
  }

  @Get('git-tokens/:id')
  gitToken(@Param('id', ParseUUIDPipe) id: string) {
    return this.credentials.gitToken(id);
  }
}
