import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { DeviceMapperServiceClient } from "../../gen/tsdm/v1/tsdm.js";

export type ApiClient = DeviceMapperServiceClient;

export function connect(socket: string): ApiClient {
  return new DeviceMapperServiceClient(`unix://${socket}`, credentials.createInsecure());
}

type UnaryMethod<Req, Res> = (req: Req, md: Metadata, opts: object, cb: (err: ServiceError | null, res: Res) => void) => unknown;

/** Promisified unary call with a deadline. */
export function call<Req, Res>(client: ApiClient, method: UnaryMethod<Req, Res>, req: Req, timeoutMs = 10_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The failure of a call: gRPC code plus the daemon's errno/op metadata. */
export async function failure(p: Promise<unknown>): Promise<{ code: number; errno: string; op: string; devno: string; details: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as ServiceError;
    const get = (k: string) => String(err.metadata?.get(k)[0] ?? "");
    return { code: err.code, errno: get("tsdm-errno"), op: get("tsdm-op"), devno: get("tsdm-devno"), details: err.details };
  }
  throw new Error("expected the call to fail");
}
