import fs from "node:fs";
import path from "node:path";
import { run } from "./daemon.js";

export interface Certs {
  dir: string;
  ca: string;
  serverCert: string;
  serverKey: string;
  client(cn: string): { cert: string; key: string };
  /** A client certificate signed by another CA (must be rejected). */
  rogue: { cert: string; key: string };
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const r = await run("openssl", args, { cwd: dir });
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

async function makeCa(dir: string, name: string): Promise<void> {
  fs.writeFileSync(path.join(dir, `${name}.ext`), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n");
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`]);
  await openssl(dir, ["req", "-x509", "-new", "-key", `${name}.key`, "-subj", `/CN=${name}`, "-days", "1", "-out", `${name}.crt`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
}

async function issue(dir: string, ca: string, name: string, cn: string, ext: string): Promise<void> {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  await openssl(dir, ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`]);
  await openssl(dir, ["req", "-new", "-key", `${name}.key`, "-subj", `/CN=${cn}`, "-out", `${name}.csr`]);
  await openssl(dir, ["x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-CAcreateserial", "-days", "1", "-extfile", `${name}.ext`, "-out", `${name}.crt`]);
}

/** A private CA, a server certificate for localhost/127.0.0.1, client certificates by CN, and a rogue one. */
export async function makeCerts(dir: string, clientCns: string[]): Promise<Certs> {
  fs.mkdirSync(dir, { recursive: true });
  await makeCa(dir, "ca");
  await makeCa(dir, "rogue-ca");
  await issue(dir, "ca", "server", "tsdmd", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  // A "CN" may carry more subject parts ("a/CN=b": two CNs); file names keep only safe characters.
  for (const cn of clientCns) await issue(dir, "ca", clientFile(cn), cn, "extendedKeyUsage=clientAuth\n");
  await issue(dir, "rogue-ca", "rogue", clientCns[0] ?? "admin", "extendedKeyUsage=clientAuth\n");
  const p = (f: string) => path.join(dir, f);
  return {
    dir,
    ca: p("ca.crt"),
    serverCert: p("server.crt"),
    serverKey: p("server.key"),
    client: (cn) => ({ cert: p(`${clientFile(cn)}.crt`), key: p(`${clientFile(cn)}.key`) }),
    rogue: { cert: p("rogue.crt"), key: p("rogue.key") },
  };
}

const clientFile = (cn: string): string => `client-${cn.replace(/[^A-Za-z0-9_-]/g, "_")}`;
