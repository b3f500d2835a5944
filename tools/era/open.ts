import fs from "node:fs";
import { FileMetaIo } from "../../daemon/targets/era/pdata/block.js";

/** Open metadata read-only, with the tools' errors for a missing path or a wrong file type. */
export function openMetadata(path: string): FileMetaIo {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw new Error(`${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "No such file or directory" : (e as Error).message}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${path}: Not a block device or regular file`);
  return FileMetaIo.open(path, false);
}
