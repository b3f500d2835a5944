import fs from "node:fs";
import { strerror } from "../../ctl/errno.js";
import { FileMetaIo } from "../../daemon/targets/era/pdata/block.js";
import { ToolError } from "./walk.js";

export type EraTool = "era_check" | "era_dump" | "era_invalidate";

/**
 * Open metadata read-only with 0.9.0's words for what is wrong with the path: era_check names the path and the
 * errno, era_dump and era_invalidate (which go through another helper there) say less.
 */
export function openMetadata(path: string, tool: EraTool): FileMetaIo {
  const check = tool === "era_check";
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ToolError(check ? `${path}: ${code ? strerror(code) : (e as Error).message}` : "Couldn't stat path");
  }
  if (!st.isFile() && !st.isBlockDevice()) throw new ToolError(check ? `${path}: Not a block device or regular file` : "bad path");
  const io = FileMetaIo.open(path, false);
  if (io.nrBlocks < 1) {
    void io.close();
    throw new ToolError(check ? "Metadata device/file too small.  Is this binary metadata?" : "Metadata is not large enough for superblock.");
  }
  return io;
}
