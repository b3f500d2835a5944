import fs from "node:fs";
import {
  Metadata,
  ServerInterceptingCall,
  status as Code,
  type ServerInterceptor,
} from "@grpc/grpc-js";
import type { Logger } from "../core/log.js";

/**
 * Authorization for remote (mTLS) callers: the client certificate's subject CN is looked up in the authz file,
 * which grants one of two roles:
 *   reader — status, table, info, ls, deps, targets, version, wait, watch, nbd-uri, health, reflection
 *   admin  — everything
 * File format (JSON): { "admin": ["ops-admin", ...], "reader": ["monitoring", ...] }.
 * Callers on the unix socket are trusted by filesystem permissions (the socket is 0600/0660) and are admins.
 */
export type Role = "admin" | "reader";

export interface AuthzPolicy {
  roleOf(cn: string): Role | undefined;
}

export function loadAuthz(file: string): AuthzPolicy {
  const raw = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<Record<Role, unknown>>;
  const roles = new Map<string, Role>();
  for (const role of ["reader", "admin"] as const) {
    const list = raw[role] ?? [];
    if (!Array.isArray(list) || list.some((x) => typeof x !== "string")) throw new Error(`${file}: "${role}" must be a list of certificate CNs`);
    for (const cn of list as string[]) roles.set(cn, role);
  }
  for (const key of Object.keys(raw)) if (key !== "admin" && key !== "reader") throw new Error(`${file}: unknown role "${key}"`);
  return { roleOf: (cn) => roles.get(cn) };
}

const READ_ONLY_METHODS = new Set([
  "GetStatus",
  "GetTable",
  "GetInfo",
  "ListDevices",
  "GetDeps",
  "ListTargets",
  "GetVersion",
  "WaitEvent",
  "WatchEvents",
  "GetNbdUri",
]);

/** True for calls that change state (these are audited). */
export function isMutating(method: string): boolean {
  if (!method.startsWith("/tsdm.v1.")) return false;
  return !READ_ONLY_METHODS.has(method.slice(method.lastIndexOf("/") + 1));
}

function allowed(role: Role, method: string): boolean {
  if (role === "admin") return true;
  if (method.startsWith("/grpc.health.v1.") || method.startsWith("/grpc.reflection.")) return true;
  return method.startsWith("/tsdm.v1.") && READ_ONLY_METHODS.has(method.slice(method.lastIndexOf("/") + 1));
}

export interface Caller {
  readonly tls: boolean;
  /** The certificate's CN ("" when it has none, or more than one: no role can match); "local" on the unix socket. */
  readonly cn: string;
  /** Where the call came from: "ip:port" over TCP, "uid=U,gid=G,pid=P" on the unix socket. */
  readonly peer: string;
  /** TLS only: the certificate's full subject and serial, for the audit log. */
  readonly subject?: string;
  readonly serial?: string;
}

type CertName = Record<string, string | string[] | undefined>;
interface CallIdentity {
  getPeer(): string;
  getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: { subject?: CertName; serialNumber?: string } };
}

/** Who is calling: the certificate's identity on TLS connections, the local peer on the unix socket. */
export function callerOf(call: CallIdentity): Caller {
  const ctx = call.getAuthContext();
  const peer = call.getPeer();
  if (ctx.transportSecurityType !== "ssl") return { tls: false, cn: "local", peer };
  const cert = ctx.sslPeerCertificate;
  const cn = cert?.subject?.CN;
  return {
    tls: true,
    // A subject with several CNs is ambiguous: rather no identity than the first one silently.
    cn: typeof cn === "string" ? cn : "",
    peer,
    subject: cert?.subject ? formatSubject(cert.subject) : undefined,
    serial: cert?.serialNumber,
  };
}

function formatSubject(subject: CertName): string {
  return Object.entries(subject)
    .flatMap(([k, v]) => (Array.isArray(v) ? v : v === undefined ? [] : [v]).map((x) => `${k}=${x}`))
    .join(",");
}

export function authzInterceptor(policy: AuthzPolicy | undefined, log: Logger): ServerInterceptor {
  return (methodDescriptor, call) =>
    new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          // Decided when the request arrives rather than on the headers, so that the audit log (the outer
          // interceptor) has seen what a refused caller asked for. No handler runs before either.
          onReceiveMessage: (message, msgNext) => {
            const who = callerOf(call as never);
            if (who.tls) {
              const role = who.cn ? policy?.roleOf(who.cn) : undefined;
              if (!role || !allowed(role, methodDescriptor.path)) {
                log.warn("permission denied", { cn: who.cn, subject: who.subject, peer: who.peer, role: role ?? "none", method: methodDescriptor.path });
                const md = new Metadata();
                md.set("tsdm-errno", "EACCES");
                call.sendStatus({ code: Code.PERMISSION_DENIED, details: `${who.cn || "(no usable CN)"} may not call ${methodDescriptor.path}`, metadata: md });
                return;
              }
            }
            msgNext(message);
          },
        });
      },
    });
}
