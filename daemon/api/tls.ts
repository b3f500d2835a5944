import crypto from "node:crypto";
import fs from "node:fs";

export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/**
 * Read and check the server's TLS files before listening, so a bad certificate is a clear start-up error rather
 * than handshakes failing later: each file must parse, the key must match the certificate, and the certificate
 * must be currently valid.
 */
export function loadTlsMaterial(files: { ca: string; cert: string; key: string }): TlsMaterial {
  const read = (what: string, file: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new Error(`${what} ${file}: ${(err as Error).message}`);
    }
  };
  const ca = read("--tls-ca", files.ca);
  const cert = read("--tls-cert", files.cert);
  const key = read("--tls-key", files.key);
  let caCert: crypto.X509Certificate;
  let serverCert: crypto.X509Certificate;
  let privateKey: crypto.KeyObject;
  try {
    caCert = new crypto.X509Certificate(ca);
  } catch (err) {
    throw new Error(`--tls-ca ${files.ca} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    serverCert = new crypto.X509Certificate(cert);
  } catch (err) {
    throw new Error(`--tls-cert ${files.cert} is not a PEM certificate: ${(err as Error).message}`);
  }
  try {
    privateKey = crypto.createPrivateKey(key);
  } catch (err) {
    throw new Error(`--tls-key ${files.key} is not a private key: ${(err as Error).message}`);
  }
  if (!serverCert.checkPrivateKey(privateKey)) throw new Error(`--tls-key ${files.key} does not match the certificate ${files.cert}`);
  const now = Date.now();
  if (Date.parse(serverCert.validTo) < now || Date.parse(serverCert.validFrom) > now) {
    throw new Error(`--tls-cert ${files.cert} is not valid now (valid ${serverCert.validFrom} to ${serverCert.validTo})`);
  }
  if (!caCert.ca) throw new Error(`--tls-ca ${files.ca} is not a CA certificate`);
  return { ca, cert, key };
}
