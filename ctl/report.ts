/**
 * The `info -c` report, as libdevmapper's dm_report produces it for dmsetup: field selection (-o, `+f`,
 * case-insensitive, underscores optional), sort keys (-O), aligned columns with minimum widths, or
 * unaligned with a separator, `DM_FIELD='value'` name prefixes, columns-as-rows. Outputs go to stdout;
 * the field listing (`-o help`, unknown fields) goes to stderr.
 */

export type FieldKind = "STR" | "NUM";
/** Which extra data a field needs beyond the device info (dmsetup's DR_* report types). */
export type FieldNeed = "task" | "info" | "deps" | "tree" | "name";

/** One row's source data, names already resolved for display. */
export interface ReportObject {
  name: string;
  mangledName: string;
  unmangledName: string;
  uuid: string;
  mangledUuid: string;
  unmangledUuid: string;
  readAhead: number;
  blkdevname: string;
  /**
   * The device has its kernel disk (a table was loaded once, DeviceInfo.disk_added): without it libdm can
   * read no read-ahead and resolve no block device name.
   */
  diskAdded: boolean;
  major: number;
  minor: number;
  liveTable: boolean;
  inactiveTable: boolean;
  suspended: boolean;
  readOnly: boolean;
  openCount: number;
  targetCount: number;
  eventNr: number;
  /** Devices this one uses (deps), in table order. */
  deps?: Array<{ major: number; minor: number; blkdevname: string }>;
  /** Mapped devices this one uses, and mapped devices using this one (the dependency tree). */
  usesNames?: string[];
  usedBy?: Array<{ name: string; major: number; minor: number }>;
  /** The device's node under DM_DEV_DIR/mapper (for libdm's messages about opening it). */
  dmDirPath?: string;
  /** `splitname`'s subsystem argument (otherwise the uuid prefix up to the first `-`). */
  subsystem?: string;
}

interface FieldDef {
  id: string;
  heading: string;
  width: number;
  kind: FieldKind;
  need: FieldNeed;
  desc: string;
  value(o: ReportObject): string;
  /** Numeric sort value for NUM fields. */
  num?(o: ReportObject): number;
  /**
   * What dm_report_object logs while getting the value: `warn` lines and the value is still shown; a `fail`
   * line and the report function fails (the row is dropped and the command fails).
   */
  check?(o: ReportObject): { warn?: string; fail?: string } | undefined;
}

const TYPE_DESC: Record<FieldNeed, string> = {
  task: "Mapped Device Name",
  info: "Mapped Device Information",
  deps: "Mapped Device Relationship Information",
  tree: "Mapped Device Relationship Information",
  name: "Mapped Device Name Components",
};

/** uuid prefix up to the first `-` (dmsetup's subsystem), and LVM's vg-lv-layer split of the name. */
function splitName(o: ReportObject): { subsystem: string; vg: string; lv: string; layer: string } {
  const dash = o.uuid.indexOf("-");
  const subsystem = o.subsystem ?? (dash >= 0 ? o.uuid.slice(0, dash) : "");
  if (subsystem !== "LVM") return { subsystem, vg: "", lv: "", layer: "" };
  // dm_split_lvm_name: `-` separates, `--` is a literal dash.
  const parts: string[] = [""];
  const n = o.name;
  for (let i = 0; i < n.length; i++) {
    if (n[i] === "-" && n[i + 1] === "-") {
      parts[parts.length - 1] += "-";
      i++;
    } else if (n[i] === "-" && parts.length < 3) parts.push("");
    else parts[parts.length - 1] += n[i];
  }
  return { subsystem, vg: parts[0] ?? "", lv: parts[1] ?? "", layer: parts[2] ?? "" };
}

const str = (id: string, heading: string, width: number, need: FieldNeed, desc: string, value: (o: ReportObject) => string): FieldDef => ({
  id,
  heading,
  width,
  kind: "STR",
  need,
  desc,
  value,
});
const num = (id: string, heading: string, width: number, need: FieldNeed, desc: string, n: (o: ReportObject) => number): FieldDef => ({
  id,
  heading,
  width,
  kind: "NUM",
  need,
  desc,
  value: (o) => String(n(o)),
  num: n,
});

/**
 * libdm's get_dev_node_read_ahead on a device without a disk (never had a table): the node cannot be opened.
 * libdm makes /dev/mapper nodes at resume, so such a device has none: ENOENT.
 */
export const readAheadOpenFailed = (nodePath: string): string => `${nodePath}: open failed: No such file or directory`;

/** dmsetup's report fields (stats fields aside), in its order. */
export const FIELDS: readonly FieldDef[] = [
  str("name", "Name", 16, "task", "Name of mapped device.", (o) => o.name),
  str("mangled_name", "MangledName", 16, "task", "Mangled name of mapped device.", (o) => o.mangledName),
  str("unmangled_name", "UnmangledName", 16, "task", "Unmangled name of mapped device.", (o) => o.unmangledName),
  str("uuid", "UUID", 32, "task", "Unique (optional) identifier for mapped device.", (o) => o.uuid),
  str("mangled_uuid", "MangledUUID", 32, "task", "Mangled unique (optional) identifier for mapped device.", (o) => o.mangledUuid),
  str("unmangled_uuid", "UnmangledUUID", 32, "task", "Unmangled unique (optional) identifier for mapped device.", (o) => o.unmangledUuid),
  {
    // dm_task_get_read_ahead opens the device node: a device that never had a table has no disk, libdm logs
    // the failed open and the field shows 0.
    ...num("read_ahead", "RAhead", 6, "task", "Read ahead value.", (o) => (o.diskAdded ? o.readAhead : 0)),
    check: (o) => (o.diskAdded ? undefined : { warn: readAheadOpenFailed(o.dmDirPath ?? o.name) }),
  },
  {
    ...str("blkdevname", "BlkDevName", 16, "info", "Name of block device.", (o) => o.blkdevname),
    check: (o) => (o.diskAdded ? undefined : { fail: `Could not resolve block device name for ${o.major}:${o.minor}.` }),
  },
  str(
    "attr",
    "Stat",
    4,
    "info",
    "(L)ive, (I)nactive, (s)uspended, (r)ead-only, read-(w)rite.",
    (o) => `${o.liveTable ? "L" : "-"}${o.inactiveTable ? "I" : "-"}${o.suspended ? "s" : "-"}${o.readOnly ? "r" : "w"}`,
  ),
  str("tables_loaded", "Tables", 6, "info", "Which of the live and inactive table slots are filled.", (o) =>
    o.liveTable ? (o.inactiveTable ? "Both" : "Live") : o.inactiveTable ? "Inactive" : "None",
  ),
  str("suspended", "Suspended", 9, "info", "Whether the device is suspended.", (o) => (o.suspended ? "Suspended" : "Active")),
  str("readonly", "Read-only", 9, "info", "Whether the device is read-only or writeable.", (o) => (o.readOnly ? "Read-only" : "Writeable")),
  str("devno", "DevNo", 5, "info", "Device major and minor numbers", (o) => `${o.major}:${o.minor}`),
  num("major", "Maj", 3, "info", "Block device major number.", (o) => o.major),
  num("minor", "Min", 3, "info", "Block device minor number.", (o) => o.minor),
  num("open", "Open", 4, "info", "Number of references to open device, if requested.", (o) => o.openCount),
  num("segments", "Targ", 4, "info", "Number of segments in live table, if present.", (o) => o.targetCount),
  num("events", "Event", 6, "info", "Number of most recent event.", (o) => o.eventNr),
  num("device_count", "#Devs", 5, "deps", "Number of devices used by this one.", (o) => o.deps?.length ?? 0),
  str("devs_used", "DevNamesUsed", 16, "tree", "List of names of mapped devices used by this one.", (o) => (o.usesNames ?? []).join(",")),
  str("devnos_used", "DevNosUsed", 16, "deps", "List of device numbers of devices used by this one.", (o) =>
    (o.deps ?? []).map((d) => `${d.major}:${d.minor}`).join(","),
  ),
  str("blkdevs_used", "BlkDevNamesUsed", 16, "deps", "List of names of block devices used by this one.", (o) =>
    (o.deps ?? []).map((d) => d.blkdevname).join(","),
  ),
  num("device_ref_count", "#Refs", 5, "tree", "Number of mapped devices referencing this one.", (o) => o.usedBy?.length ?? 0),
  str("names_using_dev", "RefNames", 8, "tree", "List of names of mapped devices using this one.", (o) => (o.usedBy ?? []).map((u) => u.name).join(",")),
  str("devnos_using_dev", "RefDevNos", 9, "tree", "List of device numbers of mapped devices using this one.", (o) =>
    (o.usedBy ?? []).map((u) => `${u.major}:${u.minor}`).join(","),
  ),
  str("subsystem", "Subsys", 6, "name", "Userspace subsystem responsible for this device.", (o) => splitName(o).subsystem),
  str("vg_name", "VG", 4, "name", "LVM Volume Group name.", (o) => splitName(o).vg),
  str("lv_name", "LV", 4, "name", "LVM Logical Volume name.", (o) => splitName(o).lv),
  str("lv_layer", "LVLayer", 7, "name", "LVM device layer.", (o) => splitName(o).layer),
];

/** libdm's implicit fields (selection status and help). */
const SPECIAL: ReadonlyArray<{ id: string; desc: string }> = [
  { id: "selected", desc: "Set if item passes selection criteria." },
  { id: "help", desc: "Show help." },
  { id: "?", desc: "Show help." },
];

export const DEFAULT_FIELDS = "name,major,minor,attr,open,segments,events,uuid";
export const SPLITNAME_FIELDS = "vg_name,lv_name,lv_layer";

export interface ReportOptions {
  /** -o value (may start with `+` to extend the defaults). */
  fields?: string;
  /** The default field list (info's, or splitname's). */
  defaults?: string;
  /** -O value. */
  sort?: string;
  noheadings: boolean;
  separator?: string;
  nameprefixes: boolean;
  unquoted: boolean;
  rows: boolean;
}

/** A report that could not be set up: the lines for stderr, and whether it was just `help`. */
export class ReportSetupError extends Error {
  constructor(
    readonly stderr: string,
    readonly helpOnly: boolean,
  ) {
    super(stderr);
  }
}

const canonical = (s: string): string => s.replace(/_/g, "").toLowerCase();

/** Each field type's heading in the listing and the prefix of its `<prefix>_all` line (libdm's report types). */
const TYPE_PREFIX: Record<FieldNeed, string> = { task: "name", info: "info", deps: "deps", tree: "deps", name: "splitname" };

/**
 * dmsetup 1.02.185 also lists its statistics report types (dmsetup stats), which tsdmsetup does not implement:
 * listed only, so that the listing matches byte for byte (the wording, typos included, is dmsetup's).
 */
const STATS_LISTING: ReadonlyArray<readonly [string, string]> = [
  ["read_count", "Count of reads completed."],
  ["reads_merged_count", "Count of read requests merged."],
  ["read_sector_count", "Count of sectors read."],
  ["read_time", "Accumulated duration of all read requests (ns)."],
  ["write_count", "Count of writes completed."],
  ["writes_merged_count", "Count of write requests merged."],
  ["write_sector_count", "Count of sectors written."],
  ["write_time", "Accumulated duration of all writes (ns)."],
  ["in_progress_count", "Count of requests currently in progress."],
  ["io_ticks", "Nanoseconds spent servicing requests."],
  ["queue_ticks", "Total nanoseconds spent in queue."],
  ["read_ticks", "Nanoseconds spent servicing reads."],
  ["write_ticks", "Nanoseconds spent servicing writes."],
  ["reads_merged_per_sec", "Read requests merged per second."],
  ["writes_merged_per_sec", "Write requests merged per second."],
  ["reads_per_sec", "Reads per second."],
  ["writes_per_sec", "Writes per second."],
  ["read_size_per_sec", "Size of data read per second."],
  ["write_size_per_sec", "Size of data written per second."],
  ["avg_request_size", "Average request size."],
  ["queue_size", "Average queue size."],
  ["await", "Averate wait time."],
  ["read_await", "Averate read wait time."],
  ["write_await", "Averate write wait time."],
  ["throughput", "Throughput."],
  ["service_time", "Service time."],
  ["util", "Utilization."],
  ["hist_count", "Latency histogram counts."],
  ["hist_count_bounds", "Latency histogram counts with bin boundaries."],
  ["hist_count_ranges", "Latency histogram counts with bin ranges."],
  ["hist_percent", "Relative latency histogram."],
  ["hist_percent_bounds", "Relative latency histogram with bin boundaries."],
  ["hist_percent_ranges", "Relative latency histogram with bin ranges."],
  ["interval_ns", "Sampling interval in nanoseconds."],
  ["interval", "Sampling interval."],
];
const REGION_LISTING: ReadonlyArray<readonly [string, string]> = [
  ["region_id", "Region ID."],
  ["region_start", "Region start."],
  ["region_len", "Region length."],
  ["area_id", "Area ID."],
  ["area_start", "Area offset from start of device."],
  ["area_len", "Area length."],
  ["area_offset", "Area offset from start of region."],
  ["area_count", "Area count."],
  ["group_id", "Group ID."],
  ["program_id", "Program ID."],
  ["user_data", "Auxiliary data."],
  ["precise", "Set if nanosecond precision counters are enabled."],
  ["hist_bins", "The number of histogram bins configured."],
  ["hist_bounds", "Latency histogram bin boundaries."],
  ["hist_ranges", "Latency histogram bin ranges."],
  ["stats_name", "Stats name of current object."],
  ["obj_type", "Type of stats object being reported."],
];
const LISTING_ONLY: ReadonlyArray<{ heading: string; prefix: string; fields: ReadonlyArray<readonly [string, string]> }> = [
  { heading: "Mapped Device Statistics", prefix: "stats", fields: STATS_LISTING },
  { heading: "Mapped Device Statistics Region Information", prefix: "region", fields: REGION_LISTING },
];

/**
 * The field listing libdm prints for `-o help`, before "Unrecognised field" and after the usage of `help -c`:
 * one section per report type, each opened by its `<prefix>_all` line and closed by a line of one space,
 * the ids padded to the longest id of all sections.
 */
export function fieldListing(): string {
  const sections: Array<{ heading: string; prefix: string; fields: Array<readonly [string, string]> }> = [];
  for (const f of FIELDS) {
    const heading = TYPE_DESC[f.need];
    let sec = sections.at(-1);
    if (sec?.heading !== heading) sections.push((sec = { heading, prefix: TYPE_PREFIX[f.need], fields: [] }));
    sec.fields.push([f.id, f.desc]);
  }
  for (const sec of LISTING_ONLY) sections.push({ ...sec, fields: [...sec.fields] });
  const all = sections.flatMap((sec) => [`${sec.prefix}_all`, ...sec.fields.map(([id]) => id)]);
  const idLen = Math.max(...all.map((id) => id.length), ...SPECIAL.map((f) => f.id.length), 3);
  const lines: string[] = [];
  for (const sec of sections) {
    lines.push(`${sec.heading} Fields`, "-".repeat(sec.heading.length + 7));
    lines.push(`  ${`${sec.prefix}_all`.padEnd(idLen)} - All fields in this section.`);
    for (const [id, desc] of sec.fields) lines.push(`  ${id.padEnd(idLen)} - ${desc}`);
    lines.push(" ");
  }
  lines.push("Special Fields", "-".repeat("Special".length + 7));
  for (const f of SPECIAL) lines.push(`  ${f.id.padEnd(idLen)} - ${f.desc}`);
  lines.push(" ");
  return lines.map((l) => `${l}\n`).join("");
}

interface Column {
  def: FieldDef;
  hidden: boolean;
  sortPos?: number;
  descending?: boolean;
  width: number;
}

export class Report {
  private readonly columns: Column[] = [];
  private readonly rows: ReportObject[] = [];
  private readonly aligned: boolean;
  private readonly headings: boolean;
  private readonly separator: string;

  private constructor(private readonly opts: ReportOptions) {
    let aligned = true;
    let headings = true;
    let separator = " ";
    if (opts.noheadings) {
      separator = ":";
      aligned = false;
      headings = false;
    }
    if (opts.nameprefixes) aligned = false;
    if (opts.separator !== undefined) {
      separator = opts.separator;
      aligned = false;
    }
    this.aligned = aligned;
    this.headings = headings;
    this.separator = separator;
  }

  /** Set up the report as dm_report_init does; throws ReportSetupError (field listing on stderr). */
  static create(opts: ReportOptions): Report {
    const r = new Report(opts);
    const defaults = opts.defaults ?? DEFAULT_FIELDS;
    let spec = defaults;
    if (opts.fields !== undefined) spec = opts.fields.startsWith("+") ? `${defaults},${opts.fields.slice(1)}` : opts.fields;
    let help = false;
    for (const word of spec.split(",")) {
      if (word === "") continue;
      const c = canonical(word);
      if (c === "help" || word === "?") {
        help = true;
        continue;
      }
      if (c === "all") {
        for (const def of FIELDS) r.columns.push({ def, hidden: false, width: def.width });
        continue;
      }
      const def = FIELDS.find((f) => canonical(f.id) === c);
      if (!def) throw new ReportSetupError(`${fieldListing()}Unrecognised field: ${word}\n`, false);
      r.columns.push({ def, hidden: false, width: def.width });
    }
    if (opts.sort !== undefined) {
      let pos = 0;
      for (let key of opts.sort.split(",")) {
        if (key === "") continue;
        let descending = false;
        if (key.startsWith("+") || key.startsWith("-")) {
          descending = key[0] === "-";
          key = key.slice(1);
          if (!key) throw new ReportSetupError("dm_report: Missing sort field name\n", false);
        }
        const def = FIELDS.find((f) => canonical(f.id) === canonical(key));
        if (!def) throw new ReportSetupError(`${fieldListing()}dm_report: Unrecognised field: ${key}\n`, false);
        let col = r.columns.find((c) => c.def === def);
        if (!col) {
          col = { def, hidden: true, width: def.width };
          r.columns.unshift(col);
        }
        if (col.sortPos !== undefined) continue; // libdm warns and ignores a repeated sort key
        col.sortPos = pos++;
        col.descending = descending;
      }
    }
    if (help) throw new ReportSetupError(fieldListing(), true);
    return r;
  }

  /** What the rows need fetched beyond the device info. */
  needs(): Set<FieldNeed> {
    return new Set(this.columns.map((c) => c.def.need));
  }

  /**
   * dm_report_object's field functions for `o`, before addRow: the lines they log (each failure followed by
   * libdm's `_do_report_object` line) and whether the row can be reported at all.
   */
  check(o: ReportObject): { lines: string[]; ok: boolean } {
    const lines: string[] = [];
    for (const c of this.columns) {
      const r = c.def.check?.(o);
      if (r?.warn) lines.push(r.warn);
      if (r?.fail) {
        lines.push(r.fail, `_do_report_object: report function failed for field ${c.def.id}`);
        return { lines, ok: false };
      }
    }
    return { lines, ok: true };
  }

  addRow(o: ReportObject): void {
    this.rows.push(o);
  }

  get isEmpty(): boolean {
    return this.rows.length === 0;
  }

  /** The whole report text (empty when there are no rows); the rows are consumed, as with libdm. */
  output(): string {
    const text = this.render();
    this.rows.length = 0;
    for (const c of this.columns) c.width = c.def.width;
    return text;
  }

  private render(): string {
    if (this.rows.length === 0) return "";
    const sortCols = this.columns.filter((c) => c.sortPos !== undefined).sort((a, b) => a.sortPos! - b.sortPos!);
    const rows = this.rows.map((o) => ({ o, values: this.columns.map((c) => c.def.value(o)) }));
    if (sortCols.length) {
      rows.sort((a, b) => {
        for (const c of sortCols) {
          let cmp: number;
          if (c.def.kind === "NUM") cmp = Math.sign(c.def.num!(a.o) - c.def.num!(b.o));
          else cmp = Buffer.compare(Buffer.from(c.def.value(a.o)), Buffer.from(c.def.value(b.o)));
          if (cmp !== 0) return c.descending ? -cmp : cmp;
        }
        return 0;
      });
    }
    const visible = this.columns.map((c, i) => ({ c, i })).filter((x) => !x.c.hidden);
    for (const { c, i } of visible) for (const r of rows) c.width = Math.max(c.width, Buffer.byteLength(r.values[i]!));
    const cell = (c: Column, v: string): string => {
      let s = v;
      if (this.aligned) s = c.def.kind === "NUM" ? v.padStart(c.width) : v.padEnd(c.width);
      if (this.opts.nameprefixes) {
        const q = this.opts.unquoted ? "" : "'";
        s = `DM_${c.def.id.toUpperCase()}=${q}${s}${q}`;
      }
      return s;
    };
    let out = "";
    if (this.opts.rows) {
      for (const { c, i } of visible) {
        let line = this.headings ? `${c.def.heading}${this.separator}` : "";
        line += rows.map((r) => cell(c, r.values[i]!)).join(this.separator);
        out += `${line}\n`;
      }
      return out;
    }
    if (this.headings) {
      out += `${visible.map(({ c }) => (this.aligned ? c.def.heading.slice(0, c.width).padEnd(c.width) : c.def.heading)).join(this.separator)}\n`;
    }
    for (const r of rows) out += `${visible.map(({ c, i }) => cell(c, r.values[i]!)).join(this.separator)}\n`;
    return out;
  }
}
