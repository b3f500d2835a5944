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

/** Who is calling: the certificate CN on TLS connections, "local" on the unix socket. */
export function callerOf(call: { getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: { subject?: { CN?: string | string[] } } } }): { tls: boolean; cn: string } {
  const ctx = call.getAuthContext();
  if (ctx.transportSecurityType !== "ssl") return { tls: false, cn: "local" };
  const cn = ctx.sslPeerCertificate?.subject?.CN;
  return { tls: true, cn: Array.isArray(cn) ? (cn[0] ?? "") : (cn ?? "") };
}

export function authzInterceptor(policy: AuthzPolicy | undefined, log: Logger): ServerInterceptor {
  return (methodDescriptor, call) =>
    new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, mdNext) => {
            const who = callerOf(call as never);
            if (who.tls) {
              const role = policy?.roleOf(who.cn);
              if (!role || !allowed(role, methodDescriptor.path)) {
                log.warn("permission denied", { cn: who.cn, role: role ?? "none", method: methodDescriptor.path });
                const md = new Metadata();
                md.set("tsdm-errno", "EACCES");
                call.sendStatus({ code: Code.PERMISSION_DENIED, details: `${who.cn || "(no CN)"} may not call ${methodDescriptor.path}`, metadata: md });
                return;
              }
            }
            mdNext(metadata);
          },
        });
      },
    });
}
