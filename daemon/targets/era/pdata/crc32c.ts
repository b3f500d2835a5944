/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven, slice-by-4. persistent-data checksums
 * a block as `crc32c(~0, data) ^ salt` on the raw register, which equals `crc32cStd(data) ^ 0xFFFFFFFF ^ salt`.
 */
const T = (() => {
  const t = new Uint32Array(4 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 4; s++) t[s * 256 + i] = ((t[(s - 1) * 256 + i]! >>> 8) ^ t[t[(s - 1) * 256 + i]! & 0xff]!) >>> 0;
  }
  return t;
})();

/** The raw CRC register after feeding `data` to `seed` (no final inversion). */
export function crc32cRaw(seed: number, data: Uint8Array, start = 0, end = data.length): number {
  let c = seed >>> 0;
  let i = start;
  for (; i + 4 <= end; i += 4) {
    c ^= data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    c = T[768 + (c & 0xff)]! ^ T[512 + ((c >>> 8) & 0xff)]! ^ T[256 + ((c >>> 16) & 0xff)]! ^ T[c >>> 24]!;
  }
  for (; i < end; i++) c = T[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** Standard CRC-32C (init ~0, final ~). crc32cStd("123456789") = 0xE3069283. */
export const crc32cStd = (data: Uint8Array): number => (crc32cRaw(0xffffffff, data) ^ 0xffffffff) >>> 0;
