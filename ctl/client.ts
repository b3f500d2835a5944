import fs from "node:fs";
import tls from "node:tls";
import { credentials, Metadata, status, type ChannelCredentials, type ServiceError } from "@grpc/grpc-js";
import {
  DeviceMapperServiceClient,
  type ClearTableRequest,
  type ClearTableResponse,
  type CreateDeviceRequest,
  type CreateDeviceResponse,
  type GetDepsRequest,
  type GetDepsResponse,
  type GetInfoRequest,
  type GetInfoResponse,
  type GetNbdUriRequest,
  type GetNbdUriResponse,
  type GetStatusRequest,
  type GetStatusResponse,
  type GetTableRequest,
  type GetTableResponse,
  type GetVersionResponse,
  type ListDevicesResponse,
  type ListTargetsResponse,
  type LoadTableRequest,
  type LoadTableResponse,
  type MakeNodesRequest,
  type RemoveAllRequest,
  type RemoveAllResponse,
  type RemoveDeviceRequest,
  type RemoveDeviceResponse,
  type RenameDeviceRequest,
  type RenameDeviceResponse,
  type ResumeDeviceRequest,
  type ResumeDeviceResponse,
  type SendMessageRequest,
  type SendMessageResponse,
  type SetGeometryRequest,
  type SuspendDeviceRequest,
  type SuspendDeviceResponse,
  type WaitEventRequest,
  type WaitEventResponse,
} from "../gen/tsdm/v1/tsdm.js";
import { defaultSocketPath } from "./defaults.js";

/** Where and how to reach tsdmd: a unix socket (default) or TCP with mutual TLS. */
export type Endpoint =
  | { kind: "unix"; path: string }
  | { kind: "tls"; host: string; ca: Buffer; cert: Buffer; key: Buffer };

/** A failed call, reduced to what dmsetup's output needs. */
export class DaemonError extends Error {
  constructor(
    readonly code: number,
    /** errno name from `tsdm-errno` (EIO when the daemon sent none). */
    readonly errno: string,
    /** dm ioctl step from `tsdm-op`, if sent. */
    readonly op: string | undefined,
    /** `tsdm-devno` ("253:4") for failures inside create after the device got its number. */
    readonly devno: { major: number; minor: number } | undefined,
    readonly details: string,
  ) {
    super(details);
  }

  /** Refused by the daemon's authorization (no errno of its own). */
  get denied(): boolean {
    return (this.code === status.PERMISSION_DENIED || this.code === status.UNAUTHENTICATED) && this.op === undefined;
  }

  /** The daemon could not be reached at all. */
  get unreachable(): boolean {
    return this.code === status.UNAVAILABLE && this.op === undefined;
  }
}

export class EndpointError extends Error {}

/** --socket / --host... flags, else TSDM_* environment, else the default socket. */
export function resolveEndpoint(flags: { socket?: string; host?: string; ca?: string; cert?: string; key?: string }, env: NodeJS.ProcessEnv): Endpoint {
  const host = flags.host ?? env.TSDM_HOST;
  if (host && flags.socket === undefined) {
    const read = (what: string, p: string | undefined): Buffer => {
      if (!p) throw new EndpointError(`--host needs --${what} (or TSDM_${what.toUpperCase()}).`);
      try {
        return fs.readFileSync(p);
      } catch (e) {
        throw new EndpointError(`Couldn't read ${what} file '${p}': ${(e as Error).message}`);
      }
    };
    const ca = read("ca", flags.ca ?? env.TSDM_CA);
    const cert = read("cert", flags.cert ?? env.TSDM_CERT);
    const key = read("key", flags.key ?? env.TSDM_KEY);
    checkTlsFiles(ca, cert, key);
    return { kind: "tls", host, ca, cert, key };
  }
  return { kind: "unix", path: flags.socket ?? env.TSDM_SOCKET ?? defaultSocketPath() };
}

/** Load the TLS material once up front, so that a wrong file is reported as such rather than as a crash. */
function checkTlsFiles(ca: Buffer, cert: Buffer, key: Buffer): void {
  try {
    tls.createSecureContext({ ca, cert, key });
  } catch (e) {
    const why = (e as Error).message;
    const plain = /no start line|bad base64|PEM/i.test(why)
      ? "a file is not a PEM certificate or key"
      : /key values mismatch/i.test(why)
        ? "the key does not belong to the certificate"
        : why;
    throw new EndpointError(`Couldn't use the TLS files (--ca, --cert, --key): ${plain}.`);
  }
}

export const describeEndpoint = (e: Endpoint): string => (e.kind === "unix" ? e.path : e.host);

type Callback<Res> = (err: ServiceError | null, res: Res) => void;
type Unary<Req, Res> = (req: Req, md: Metadata, opts: object, cb: Callback<Res>) => unknown;

/** A gRPC failure as dmsetup needs it: errno, dm step, device number (trailers set by tsdmd). */
export function toDaemonError(err: ServiceError): DaemonError {
  const get = (k: string): string | undefined => {
    const v = err.metadata?.get(k)?.[0];
    return v === undefined ? undefined : String(v);
  };
  const devnoText = get("tsdm-devno");
  const m = devnoText ? /^(\d+):(\d+)$/.exec(devnoText) : null;
  const devno = m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
  // Refusals by the daemon's authorization layer carry no errno: the kernel's answer would be EACCES.
  // A daemon without the call answers like a kernel without the ioctl.
  const denied = err.code === status.PERMISSION_DENIED || err.code === status.UNAUTHENTICATED;
  const fallback = denied ? "EACCES" : err.code === status.UNIMPLEMENTED ? "ENOTTY" : "EIO";
  return new DaemonError(err.code, get("tsdm-errno") ?? fallback, get("tsdm-op"), devno, err.details ?? err.message);
}

/** The gRPC client with promise-returning calls; every failure becomes a DaemonError. */
export class Tsdm {
  readonly raw: DeviceMapperServiceClient;

  constructor(readonly endpoint: Endpoint) {
    let creds: ChannelCredentials;
    let address: string;
    if (endpoint.kind === "unix") {
      creds = credentials.createInsecure();
      address = `unix://${endpoint.path.startsWith("/") ? endpoint.path : fs.realpathSync.native(".") + "/" + endpoint.path}`;
    } else {
      creds = credentials.createSsl(endpoint.ca, endpoint.key, endpoint.cert);
      address = endpoint.host;
    }
    this.raw = new DeviceMapperServiceClient(address, creds);
  }

  call<Req, Res>(method: Unary<Req, Res>, req: Req, opts: { deadlineMs?: number } = {}): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      const callOpts = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
      method.call(this.raw, req, new Metadata(), callOpts, (err: ServiceError | null, res: Res) => (err ? reject(toDaemonError(err)) : resolve(res)));
    });
  }

  close(): void {
    this.raw.close();
  }

  private u<Req, Res>(method: keyof DeviceMapperServiceClient): (req: Req) => Promise<Res> {
    return (req) => this.call(this.raw[method] as unknown as Unary<Req, Res>, req);
  }

  readonly createDevice = this.u<CreateDeviceRequest, CreateDeviceResponse>("createDevice");
  readonly loadTable = this.u<LoadTableRequest, LoadTableResponse>("loadTable");
  readonly clearTable = this.u<ClearTableRequest, ClearTableResponse>("clearTable");
  readonly suspendDevice = this.u<SuspendDeviceRequest, SuspendDeviceResponse>("suspendDevice");
  readonly resumeDevice = this.u<ResumeDeviceRequest, ResumeDeviceResponse>("resumeDevice");
  readonly removeDevice = this.u<RemoveDeviceRequest, RemoveDeviceResponse>("removeDevice");
  readonly removeAll = this.u<RemoveAllRequest, RemoveAllResponse>("removeAll");
  readonly renameDevice = this.u<RenameDeviceRequest, RenameDeviceResponse>("renameDevice");
  readonly sendMessage = this.u<SendMessageRequest, SendMessageResponse>("sendMessage");
  readonly getStatus = this.u<GetStatusRequest, GetStatusResponse>("getStatus");
  readonly getTable = this.u<GetTableRequest, GetTableResponse>("getTable");
  readonly getInfo = this.u<GetInfoRequest, GetInfoResponse>("getInfo");
  readonly listDevices = this.u<Record<string, never>, ListDevicesResponse>("listDevices");
  readonly getDeps = this.u<GetDepsRequest, GetDepsResponse>("getDeps");
  readonly listTargets = this.u<Record<string, never>, ListTargetsResponse>("listTargets");
  readonly getVersion = this.u<Record<string, never>, GetVersionResponse>("getVersion");
  readonly waitEvent = this.u<WaitEventRequest, WaitEventResponse>("waitEvent");
  readonly setGeometry = this.u<SetGeometryRequest, Record<string, never>>("setGeometry");
  readonly makeNodes = this.u<MakeNodesRequest, Record<string, never>>("makeNodes");
  readonly getNbdUri = this.u<GetNbdUriRequest, GetNbdUriResponse>("getNbdUri");
}
