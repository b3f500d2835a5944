import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ReflectionService } from "@grpc/reflection";
import type { Server } from "@grpc/grpc-js";

/**
 * gRPC server reflection fed with the real FileDescriptorSet that `npm run gen` writes (buf build), so that
 * `buf curl` and grpcurl can describe and call every service (proto-loader's synthetic descriptors break that).
 */
export function addReflection(server: Server): boolean {
  const file = findDescriptorSet();
  if (!file) return false;
  const reader = new BinaryReader(fs.readFileSync(file));
  const fileDescriptorProtos: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const [field, wire] = reader.tag();
    if (field === 1) fileDescriptorProtos.push(reader.bytes());
    else reader.skip(wire);
  }
  const pkg = { "tsdm.descriptors": { format: "", type: {}, fileDescriptorProtos } };
  new ReflectionService(pkg as never).addToServer(server);
  return true;
}

function findDescriptorSet(): string | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    for (const candidate of [path.join(dir, "gen", "descriptors.binpb"), path.join(dir, "dist", "gen", "descriptors.binpb")]) {
      if (fs.existsSync(candidate)) return candidate;
    }
    dir = path.dirname(dir);
  }
  return undefined;
}
