import net from "node:net";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { adoptSocket, drainReadable, whenWritten } from "../../daemon/nbd/adopt-socket.js";
import { tempDir } from "../helpers/registry.js";

/**
 * The handover of an accepted connection to a Socket that reads into buffers of the caller's choosing: bytes
 * land in order in exactly the buffers handed out, data the old socket had buffered is not lost, writes work,
 * and the server is not left counting a connection that is gone.
 */
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir("tsdm-adopt-");
});
afterAll(() => tmp.cleanup());

function serverAndClient(sock: string): Promise<{ server: net.Server; accepted: net.Socket; client: net.Socket }> {
  return new Promise((resolve) => {
    const server = net.createServer((accepted) => resolve({ server, accepted, client }));
    let client!: net.Socket;
    server.listen(sock, () => (client = net.connect(sock)));
  });
}

describe("adoptSocket", () => {
  it("reads into the buffers handed out, keeps what the old socket held, writes, and closes cleanly", async () => {
    const { server, accepted, client } = await serverAndClient(path.join(tmp.dir, "a.sock"));
    // Something the old socket reads before the handover (as the handshake's socket does).
    const early = new Promise<void>((resolve) => accepted.once("data", () => resolve()));
    client.write("early;");
    await early;
    accepted.pause();
    client.write("buffered;");
    await new Promise((r) => setTimeout(r, 50));
    await whenWritten(accepted);
    const held = Buffer.concat(drainReadable(accepted)).toString();
    expect(held).toBe("buffered;");

    // Hand out a 4-byte buffer first, then a large one: the first read must stop at 4 bytes.
    const small = Buffer.alloc(4);
    const large = Buffer.alloc(1 << 16);
    const handed: Buffer[] = [];
    const got: string[] = [];
    let gotAll!: () => void;
    const all = new Promise<void>((r) => (gotAll = r));
    const adopted = adoptSocket(accepted, {
      buffer: () => {
        const b = handed.length === 0 ? small : large;
        handed.push(b);
        return b;
      },
      callback: (n, buf) => {
        expect(buf === small || buf === large).toBe(true);
        got.push(buf.subarray(0, n).toString());
        if (got.join("") === "0123456789") gotAll();
        return true;
      },
    });
    expect(adopted).toBeDefined();
    client.write("0123456789");
    await all;
    expect(got[0]).toBe("0123");
    expect(got.join("")).toBe("0123456789");

    const echoed = new Promise<string>((resolve) => client.once("data", (d) => resolve(d.toString())));
    adopted!.write("reply");
    expect(await echoed).toBe("reply");

    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    client.end();
    adopted!.on("end", () => adopted!.end());
    await closed; // the server no longer counts the handed-over connection once it has ended
  });

  it("refuses a socket with a write still in flight (its completion would land on the new socket)", async () => {
    const { server, accepted, client } = await serverAndClient(path.join(tmp.dir, "b.sock"));
    client.pause(); // the client reads nothing: a big write stays in flight
    accepted.write(Buffer.alloc(32 << 20));
    expect(accepted.writableLength).toBeGreaterThan(0);
    expect(adoptSocket(accepted, { buffer: () => Buffer.alloc(16), callback: () => true })).toBeUndefined();
    client.destroy();
    accepted.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});
