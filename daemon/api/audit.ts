import fs from "node:fs";
import { ServerInterceptingCall, status as Code, type ServerInterceptor } from "@grpc/grpc-js";
import { callerOf, isMutating } from "./authz.js";

/**
 * The audit log: one JSON line per mutating call (who, what, with which request, and the result), appended
 * to <state-dir>/audit.log. Reads are not audited.
 */
export class AuditLog {
  private readonly fd: number;
  constructor(readonly path: string) {
    this.fd = fs.openSync(path, "a", 0o600);
  }
  write(entry: Record<string, unknown>): void {
    const line = JSON.stringify({ time: new Date().toISOString(), ...entry }, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
    fs.writeSync(this.fd, line + "\n");
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}

export function auditInterceptor(audit: AuditLog): ServerInterceptor {
  return (desc, call) => {
    if (!isMutating(desc.path)) return new ServerInterceptingCall(call);
    let request: unknown;
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMessage: (msg, n) => {
            request = msg;
            n(msg);
          },
        }),
      sendStatus: (st, next) => {
        const who = callerOf(call as never);
        audit.write({
          who: who.cn,
          transport: who.tls ? "tls" : "unix",
          peer: who.peer,
          subject: who.subject,
          serial: who.serial,
          method: desc.path.slice(desc.path.lastIndexOf("/") + 1),
          request,
          result: Code[st.code] ?? st.code,
          details: st.code === Code.OK ? undefined : st.details,
        });
        next(st);
      },
    });
  };
}
