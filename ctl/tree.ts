/**
 * `ls --tree`: dmsetup's dependency-tree drawing (pstree-derived), including its ascii/utf/vt100 glyphs,
 * compact and inverted layouts, attribute suffixes and truncation at the terminal width.
 */

export interface TreeNode {
  /** Map name for mapped devices, "" for other block devices. */
  name: string;
  major: number;
  minor: number;
  blkdevname?: string;
  /** Mapped devices only (attributes are shown for those). */
  info?: { suspended: boolean; readOnly: boolean; openCount: number; uuid: string };
  uses: TreeNode[];
  usedBy: TreeNode[];
}

export interface TreeOptions {
  device: boolean;
  blkdevname: boolean;
  active: boolean;
  rw: boolean;
  open: boolean;
  uuid: boolean;
  compact: boolean;
  truncate: boolean;
  inverted: boolean;
  symbols: "ascii" | "utf" | "vt100";
  /** Output width limit (dmsetup: terminal columns - 3, else 80). */
  width: number;
}

export class TreeOptionError extends Error {}

/** Parse `-o` tree options with dmsetup's prefix matching (`d` means device). */
export function parseTreeOptions(spec: string | undefined, defaults: { utf: boolean; width: number }): TreeOptions {
  const o: TreeOptions = {
    device: true,
    blkdevname: false,
    active: false,
    rw: false,
    open: false,
    uuid: false,
    compact: false,
    truncate: true,
    inverted: false,
    symbols: defaults.utf ? "utf" : "ascii",
    width: defaults.width,
  };
  if (spec) {
    let s = 0;
    while (s < spec.length) {
      let end = spec.indexOf(",", s);
      if (end < 0) end = spec.length;
      const word = spec.slice(s, end);
      const is = (full: string): boolean => full.startsWith(word);
      if (is("device")) o.device = true;
      else if (is("blkdevname")) o.blkdevname = true;
      else if (is("nodevice")) o.device = false;
      else if (is("status") || is("table")) {
        // accepted; dmsetup draws nothing for them either
      } else if (is("active")) o.active = true;
      else if (is("open")) o.open = true;
      else if (is("uuid")) o.uuid = true;
      else if (is("rw")) o.rw = true;
      else if (is("utf")) o.symbols = "utf";
      else if (is("vt100")) o.symbols = "vt100";
      else if (is("ascii")) o.symbols = "ascii";
      else if (is("inverted")) o.inverted = true;
      else if (is("compact")) o.compact = true;
      else if (is("notrunc")) o.truncate = false;
      else throw new TreeOptionError(`Tree options not recognised: ${spec.slice(s)}.`);
      if (end >= spec.length) break;
      s = end + 1;
    }
  }
  return o;
}

const SYMBOLS = {
  ascii: { empty2: "  ", branch2: "|-", vert2: "| ", last2: "`-", single3: "---", first3: "-+-" },
  utf: { empty2: "  ", branch2: "\u251c\u2500", vert2: "\u2502 ", last2: "\u2514\u2500", single3: "\u2500\u2500\u2500", first3: "\u2500\u252c\u2500" },
  vt100: {
    empty2: "  ",
    branch2: "\x1b(0\x0ftq\x1b(B",
    vert2: "\x1b(0\x0fx\x1b(B ",
    last2: "\x1b(0\x0fmq\x1b(B",
    single3: "\x1b(0\x0fqqq\x1b(B",
    first3: "\x1b(0\x0fqwq\x1b(B",
  },
} as const;

const MAX_DEPTH = 100;

/** Draw the forest whose top-level nodes are `roots` (children follow uses, or usedBy when inverted). */
export function drawTree(roots: readonly TreeNode[], o: TreeOptions): string {
  const sym = SYMBOLS[o.symbols];
  const out: number[] = [];
  const width: number[] = [];
  const more: boolean[] = [];
  let curX = 1;
  let lastChar = 0;
  const printAttr = o.active || o.rw || o.open || o.uuid;
  const compact = o.compact && !printAttr;

  const outByte = (c: number): void => {
    curX += (c & 0xc0) !== 0x80 ? 1 : 0;
    if (!o.truncate) {
      out.push(c);
      return;
    }
    if (curX <= o.width) out.push(c);
    if (curX === o.width + 1 && (c & 0xc0) !== 0x80) {
      if (lastChar || c & 0x80) out.push(0x2e, 0x2e, 0x2e);
      else {
        lastChar = c;
        curX--;
      }
    }
  };
  const outStr = (s: string): void => {
    for (const b of Buffer.from(s, "utf8")) outByte(b);
  };
  const newline = (): void => {
    if (lastChar && curX === o.width) out.push(lastChar);
    lastChar = 0;
    out.push(0x0a);
    curX = 1;
  };
  const prefix = (depth: number): void => {
    for (let d = 0; d < depth; d++) {
      for (let x = (width[d] ?? 0) + 1; x > 0; x--) outByte(0x20);
      outStr(d === depth - 1 ? (!more[depth] ? sym.last2 : sym.branch2) : more[d + 1] ? sym.vert2 : sym.empty2);
    }
  };
  const children = (n: TreeNode): TreeNode[] => (o.inverted ? n.usedBy : n.uses);

  const node = (n: TreeNode, depth: number, last: boolean, hasChildren: boolean): void => {
    if (depth + 2 > MAX_DEPTH) return;
    if (!n.name && !o.device && !o.blkdevname) return;
    more[depth] = !last;
    width[depth] = 0;
    const firstOnLine = curX === 1;
    if (!compact || firstOnLine) prefix(depth);
    const offset = curX;
    if (compact && !firstOnLine) outStr(more[depth] ? sym.first3 : sym.single3);
    outStr(n.name);
    if (o.blkdevname && n.blkdevname) outStr(` <${n.blkdevname}>`);
    if (o.device) outStr(` (${n.major}:${n.minor})`);
    if (printAttr && n.info) {
      const parts: string[] = [];
      if (o.active) parts.push(n.info.suspended ? "SUSPENDED" : "ACTIVE");
      if (o.rw) parts.push(n.info.readOnly ? "RO" : "RW");
      if (o.open) parts.push(String(n.info.openCount));
      if (o.uuid) parts.push(n.info.uuid);
      outStr(` [${parts.join(", ")}]`);
    }
    if (compact) width[depth] = curX - offset;
    if (!compact || !hasChildren) newline();
  };

  const walk = (kids: readonly TreeNode[], depth: number): void => {
    kids.forEach((k, i) => {
      const has = children(k).length > 0;
      node(k, depth, i === kids.length - 1, has);
      if (has) walk(children(k), depth + 1);
    });
  };
  walk(roots, 0);
  return Buffer.from(out).toString("utf8");
}

/** Top of the forest: devices nobody uses (normal), or devices using nothing (inverted). */
export function treeRoots(nodes: readonly TreeNode[], inverted: boolean): TreeNode[] {
  return nodes.filter((n) => (inverted ? n.uses.length === 0 : n.usedBy.length === 0));
}
