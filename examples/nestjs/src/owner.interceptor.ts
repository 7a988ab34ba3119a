// One Prisma interactive transaction per request, owned by the request's user: the first
// statement is credcrypt.set_owner(user), which is transaction-local, so the row-level security
// policies of credcrypt.enable_owner_rls show and accept only that user's rows, and a pooled
// connection carries no owner after COMMIT. The handler runs inside the transaction, which
// AsyncLocalStorage hands to the services (`tx()`); an exception rolls it back.
//
// The user comes from the `x-user-id` header here, standing in for whatever authenticated the
// request (a JWT guard, a session): take it from the verified identity, never from the body.
import { CallHandler, ExecutionContext, Injectable, NestInterceptor, UnauthorizedException } from '@nestjs/common';
import { from, lastValueFrom, Observable } from 'rxjs';
import { PrismaService } from './prisma.service';
import { requestTx } from './request-tx';

@Injectable()
export class OwnerTransactionInterceptor implements NestInterceptor {
  constructor(private readonly prisma: PrismaService) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    const request = context.switchToHttp().getRequest<{ headers: Record<string, string | string[] | undefined> }>();
    const user = request.headers['x-user-id'];
    if (typeof user !== 'string' || user.length === 0) {
      throw new UnauthorizedException('authentication required');
    }
    return from(
      this.prisma.$transaction(async (t) => {
        await t.$executeRaw`SELECT credcrypt.set_owner(${user})`;
        // next.handle() must be called inside run(): the handler starts when it is subscribed.
        return requestTx.run(t, () => lastValueFrom(next.handle(), { defaultValue: undefined }));
      }),
    );
  }
}
