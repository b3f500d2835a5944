import net from "node:net";

/** How the transmission phase reads: into buffers it chooses (net.Socket's `onread` option). */
export interface ReadInto {
  /** The buffer the next read goes into (asked again after every read). */
  buffer(): Buffer;
  /** `n` bytes arrived at the start of `buf`; return false to stop reading (resume() starts again). */
  callback(n: number, buf: Buffer): boolean;
}

/** The part of Node's internal stream handle (libuv Pipe/TCP wrap) this module touches. */
interface StreamHandle {
  readStop(): number;
  reading: boolean;
}
interface HandleOwner {
  _handle: StreamHandle | null;
}

/**
 * Move a connection accepted by net.Server (whose sockets read into a fresh 64 KiB buffer per read, each an
 * external allocation that drives V8 into major GCs on a stream of 1 MiB writes) onto a Socket that reads where
 * the transmission phase says: WRITE payloads straight into their final buffer, requests into one reused buffer.
 * Node offers `onread` only to sockets it constructs, so the handle is handed over: reading stops, the old
 * Socket object lets go of the handle (closing nothing, releasing the server's connection count), and a new
 * Socket takes it. The caller waits until the old socket has no write in flight (its completion would land on
 * the new one) and collects what it had buffered. Returns undefined where there is no handle to move.
 */
export function adoptSocket(old: net.Socket, readInto: ReadInto): net.Socket | undefined {
  const owner = old as unknown as HandleOwner;
  const handle = owner._handle;
  if (!handle || typeof handle.readStop !== "function" || old.writableLength > 0) return undefined;
  handle.readStop();
  handle.reading = false;
  old.removeAllListeners();
  owner._handle = null;
  old.destroy();
  return new net.Socket({
    handle: handle as never,
    readable: true,
    writable: true,
    onread: { buffer: () => readInto.buffer(), callback: (n: number, buf: Uint8Array) => readInto.callback(n, buf as Buffer) },
  } as net.SocketConstructorOpts);
}

/** Resolves once `socket` has no write in flight or buffered (the handshake's last reply has gone out). */
export function whenWritten(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    const check = (): void => {
      if (socket.writableLength === 0 || socket.destroyed) resolve();
      else setImmediate(check);
    };
    check();
  });
}

/** Stop reading `socket` and take what it had read but not yet delivered. */
export function drainReadable(socket: net.Socket): Buffer[] {
  socket.pause();
  const out: Buffer[] = [];
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) out.push(chunk);
  return out;
}
