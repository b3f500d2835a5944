/**
 * Report selection (-S/--select), the subset of libdevmapper's selection language dmsetup users write:
 * `field OP value` with OP one of =~ !~ = == != < <= > >=, combined with && or `,` (and), || or `#` (or),
 * `!` (not) and parentheses. Values may be quoted with ' or ". Regular expressions are extended regexes.
 */
import { FIELDS, type FieldNeed, type ReportObject } from "./report.js";

export type Selector = (o: ReportObject) => boolean;

/** A compiled selection and the data its fields need. */
export interface Selection {
  test: Selector;
  needs: Set<FieldNeed>;
}

export class SelectionError extends Error {}

type Tok = { t: "op"; v: string } | { t: "word"; v: string } | { t: "lp" } | { t: "rp" } | { t: "and" } | { t: "or" } | { t: "not" };

const CMP_OPS = ["=~", "!~", "==", "!=", "<=", ">=", "=", "<", ">"];

function tokenize(s: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < s.length) {
    const c = s[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (s.startsWith("&&", i) || s.startsWith("||", i)) {
      out.push({ t: s[i] === "&" ? "and" : "or" });
      i += 2;
      continue;
    }
    if (c === ",") {
      out.push({ t: "and" });
      i++;
      continue;
    }
    if (c === "#") {
      out.push({ t: "or" });
      i++;
      continue;
    }
    if (c === "(" || c === ")") {
      out.push({ t: c === "(" ? "lp" : "rp" });
      i++;
      continue;
    }
    const op = CMP_OPS.find((o) => s.startsWith(o, i));
    if (op) {
      out.push({ t: "op", v: op });
      i += op.length;
      continue;
    }
    if (c === "!") {
      out.push({ t: "not" });
      i++;
      continue;
    }
    if (c === "'" || c === '"') {
      const end = s.indexOf(c, i + 1);
      if (end < 0) throw new SelectionError(`Selection syntax error: missing closing quote for value at '${s.slice(i)}'.`);
      out.push({ t: "word", v: s.slice(i + 1, end) });
      i = end + 1;
      continue;
    }
    let j = i;
    while (j < s.length && !/\s/.test(s[j]!) && !"(),#&|=!<>~".includes(s[j]!)) j++;
    if (j === i) throw new SelectionError(`Selection syntax error at '${s.slice(i)}'.`);
    out.push({ t: "word", v: s.slice(i, j) });
    i = j;
  }
  return out;
}

const canonical = (s: string): string => s.replace(/_/g, "").toLowerCase();

function comparison(field: string, op: string, value: string, needs: Set<FieldNeed>): Selector {
  const def = FIELDS.find((f) => canonical(f.id) === canonical(field));
  if (!def) throw new SelectionError(`Unrecognised selection field: ${field}`);
  needs.add(def.need);
  if (op === "=~" || op === "!~") {
    let re: RegExp;
    try {
      re = new RegExp(value);
    } catch {
      throw new SelectionError(`Invalid regular expression in selection: ${value}`);
    }
    return op === "=~" ? (o) => re.test(def.value(o)) : (o) => !re.test(def.value(o));
  }
  if (def.kind === "NUM") {
    if (!/^-?\d+$/.test(value)) throw new SelectionError(`${field}: Invalid number "${value}" in selection.`);
    const n = Number(value);
    const get = def.num!;
    switch (op) {
      case "=":
      case "==":
        return (o) => get(o) === n;
      case "!=":
        return (o) => get(o) !== n;
      case "<":
        return (o) => get(o) < n;
      case "<=":
        return (o) => get(o) <= n;
      case ">":
        return (o) => get(o) > n;
      default:
        return (o) => get(o) >= n;
    }
  }
  const cmp = (o: ReportObject): number => Buffer.compare(Buffer.from(def.value(o)), Buffer.from(value));
  switch (op) {
    case "=":
    case "==":
      return (o) => cmp(o) === 0;
    case "!=":
      return (o) => cmp(o) !== 0;
    case "<":
      return (o) => cmp(o) < 0;
    case "<=":
      return (o) => cmp(o) <= 0;
    case ">":
      return (o) => cmp(o) > 0;
    default:
      return (o) => cmp(o) >= 0;
  }
}

/** Compile a selection expression. */
export function parseSelection(expr: string): Selection {
  const needs = new Set<FieldNeed>();
  const toks = tokenize(expr);
  let p = 0;
  const peek = (): Tok | undefined => toks[p];
  const syntax = (): never => {
    throw new SelectionError(`Selection syntax error at '${expr}'.`);
  };
  const orExpr = (): Selector => {
    let left = andExpr();
    while (peek()?.t === "or") {
      p++;
      const l = left;
      const r = andExpr();
      left = (o) => l(o) || r(o);
    }
    return left;
  };
  const andExpr = (): Selector => {
    let left = unary();
    while (peek()?.t === "and") {
      p++;
      const l = left;
      const r = unary();
      left = (o) => l(o) && r(o);
    }
    return left;
  };
  const unary = (): Selector => {
    const t = peek();
    if (!t) return syntax();
    if (t.t === "not") {
      p++;
      const inner = unary();
      return (o) => !inner(o);
    }
    if (t.t === "lp") {
      p++;
      const inner = orExpr();
      if (peek()?.t !== "rp") syntax();
      p++;
      return inner;
    }
    if (t.t !== "word") return syntax();
    p++;
    const op = peek();
    if (op?.t !== "op") return syntax();
    p++;
    const v = peek();
    if (v?.t !== "word") return syntax();
    p++;
    return comparison(t.v, op.v, v.v, needs);
  };
  if (toks.length === 0) return { test: () => true, needs };
  const sel = orExpr();
  if (p !== toks.length) syntax();
  return { test: sel, needs };
}
