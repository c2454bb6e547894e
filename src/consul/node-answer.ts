import type { NodeServiceEntry, NodeServicesAnswer } from './catalog.js';

/** What one answer of `/v1/catalog/node-services/<node>` holds, parsed. */
export interface ParsedNodeAnswer {
  readonly node: NodeServicesAnswer['Node'];
  /** In the answer's order; entries that did not change since the last answer are the same objects. */
  readonly services: readonly NodeServiceEntry[];
  /** The text equals the last answer's: nothing to do. */
  readonly unchanged: boolean;
}

/**
 * Parses the answers of one node's query, each against the last one. A node's answer lists every
 * instance on the node (Consul 1.8 cannot filter on ModifyIndex), so one registration among 10,000
 * would cost a parse of megabytes; but the text of the answer changes only where the instance is.
 * The parser keeps the last text and where each entry of its `Services` array starts and ends,
 * finds the common prefix and suffix of the new text, and parses only the entries between them.
 * Anything unexpected (the header changed, the region does not parse as whole entries) falls back
 * to a full parse, so the result is always what `JSON.parse` of the whole answer would give.
 */
export class NodeAnswerParser {
  private text = '';
  private node: NodeServicesAnswer['Node'] = null;
  private entries: NodeServiceEntry[] = [];
  /** Start and end offsets (end exclusive) of each entry in `text`. */
  private starts: number[] = [];
  private ends: number[] = [];
  /** Offsets of the `[` and `]` of the Services array; -1 when it is not an array. */
  private open = -1;
  private close = -1;
  /** How the last parse went (tests and measurements). */
  lastParse: 'full' | 'partial' | 'unchanged' = 'full';

  /** Whether `body` is the last answer's text (most wake-ups of a node's query change nothing on it). */
  same(body: string): boolean {
    return this.text !== '' && this.text.length === body.length && this.text === body;
  }

  parse(body: string): ParsedNodeAnswer {
    const a = this.text;
    if (this.same(body)) {
      this.lastParse = 'unchanged';
      return { node: this.node, services: this.entries, unchanged: true };
    }
    if (a === '' || this.open < 0 || this.starts.length === 0 || !this.partial(body)) this.full(body);
    return { node: this.node, services: this.entries, unchanged: false };
  }

  private full(body: string): void {
    const parsed = JSON.parse(body) as NodeServicesAnswer;
    if (typeof parsed !== 'object' || parsed === null) throw new Error('not an object');
    const services = parsed.Services ?? [];
    if (!Array.isArray(services)) throw new Error('Services is not an array');
    this.node = parsed.Node ?? null;
    this.entries = services.map(slimEntry);
    this.text = body;
    this.lastParse = 'full';
    // Where the entries are, for the next answer; an odd layout just means full parses.
    this.open = -1;
    this.starts = [];
    this.ends = [];
    const spans = locateServices(body);
    if (spans && spans.starts.length === this.entries.length) {
      this.open = spans.open;
      this.close = spans.close;
      this.starts = spans.starts;
      this.ends = spans.ends;
    }
  }

  /** The incremental path; false when it cannot tell (then the caller parses in full). */
  private partial(b: string): boolean {
    const a = this.text;
    const p = commonPrefix(a, b);
    if (p <= this.open) return false; // the header (Node) changed
    const q = commonSuffix(a, b, Math.min(a.length, b.length) - p);
    if (a.length - q > this.close) return false; // something after the array changed
    const n = this.starts.length;
    // Entries i..j (possibly none) hold every changed character: i is the first that ends after
    // the common prefix, j the last that starts before the common suffix.
    const i = firstAbove(this.ends, p);
    const j = firstAbove(this.starts, a.length - q - 1) - 1;
    if (j < i - 1) return false;
    const from = i > 0 ? (this.ends[i - 1] as number) : this.open + 1;
    const to = j + 1 < n ? (this.starts[j + 1] as number) : this.close;
    const delta = b.length - a.length;
    if (to + delta < from) return false;
    const region = scanEntries(b, from, to + delta);
    if (!region) return false;
    let added: NodeServiceEntry[];
    try {
      added = region.starts.map((s, k) => slimEntry(JSON.parse(b.slice(s, region.ends[k])) as unknown));
    } catch {
      return false;
    }
    if (!added.every((e) => typeof e === 'object' && e !== null && !Array.isArray(e))) return false;
    const shift = (x: number) => x + delta;
    this.entries = [...this.entries.slice(0, i), ...added, ...this.entries.slice(j + 1)];
    this.starts = [...this.starts.slice(0, i), ...region.starts, ...this.starts.slice(j + 1).map(shift)];
    this.ends = [...this.ends.slice(0, i), ...region.ends, ...this.ends.slice(j + 1).map(shift)];
    this.close += delta;
    this.text = b;
    this.lastParse = 'partial';
    return true;
  }
}

/**
 * The fields the catalog model reads (catalog.ts): a Consul entry carries a dozen more (tags,
 * meta, tagged addresses, weights, proxy and connect objects), held for every instance of every
 * node (30,000 at 10,000 services x 3). Measured on Node 20 for entries as Consul 1.8.7 writes a
 * catalog registration: ~600 bytes of heap each as parsed, ~140 slimmed. Anything not an object is kept as it
 * is, for the caller to refuse.
 */
export function slimEntry(e: unknown): NodeServiceEntry {
  if (typeof e !== 'object' || e === null || Array.isArray(e)) return e as NodeServiceEntry;
  const o = e as Record<string, unknown>;
  return { ID: o.ID, Service: o.Service, Address: o.Address, Port: o.Port, ModifyIndex: o.ModifyIndex } as NodeServiceEntry;
}

/** Index of the first element of the ascending `xs` greater than `v` (xs.length if none). */
function firstAbove(xs: readonly number[], v: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((xs[mid] as number) > v) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Length of the common prefix, compared in chunks (string slices compare at memory speed). */
export function commonPrefix(a: string, b: string): number {
  const max = Math.min(a.length, b.length);
  let i = 0;
  for (let step = 1 << 16; step >= 1; step >>= 4) {
    while (i + step <= max && a.slice(i, i + step) === b.slice(i, i + step)) i += step;
  }
  return i;
}

/** Length of the common suffix, at most `max`. */
export function commonSuffix(a: string, b: string, max: number): number {
  let i = 0;
  for (let step = 1 << 16; step >= 1; step >>= 4) {
    while (i + step <= max && a.slice(a.length - i - step, a.length - i) === b.slice(b.length - i - step, b.length - i)) i += step;
  }
  return i;
}

const WS = new Set([0x20, 0x0a, 0x0d, 0x09]);

/** End (exclusive) of the JSON string starting at `i` (a `"`), or -1. */
function skipString(t: string, i: number): number {
  for (let k = i + 1; k < t.length; k++) {
    const c = t.charCodeAt(k);
    if (c === 0x5c) k++;
    else if (c === 0x22) return k + 1;
  }
  return -1;
}

/** End (exclusive) of the JSON object or array starting at `i`, or -1. */
function skipComposite(t: string, i: number): number {
  let depth = 0;
  for (let k = i; k < t.length; k++) {
    const c = t.charCodeAt(k);
    if (c === 0x22) {
      k = skipString(t, k) - 1;
      if (k < 0) return -1;
    } else if (c === 0x7b || c === 0x5b) {
      depth++;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
      if (depth === 0) return k + 1;
    }
  }
  return -1;
}

/** The objects in `t[from, to)`, which must be array elements and their separators only. */
function scanEntries(t: string, from: number, to: number): { starts: number[]; ends: number[] } | undefined {
  const starts: number[] = [];
  const ends: number[] = [];
  let k = from;
  let expectValue = true; // at a boundary any number of commas may lead; checked by JSON.parse later
  while (k < to) {
    const c = t.charCodeAt(k);
    if (WS.has(c) || c === 0x2c) {
      if (c === 0x2c) expectValue = true;
      k++;
      continue;
    }
    if (c !== 0x7b || !expectValue) return undefined;
    const end = skipComposite(t, k);
    if (end < 0 || end > to) return undefined;
    starts.push(k);
    ends.push(end);
    expectValue = false;
    k = end;
  }
  return { starts, ends };
}

/** Where the top-level `Services` array and its entries are in a node-services answer. */
function locateServices(t: string): { open: number; close: number; starts: number[]; ends: number[] } | undefined {
  let k = 0;
  while (k < t.length && WS.has(t.charCodeAt(k))) k++;
  if (t.charCodeAt(k) !== 0x7b) return undefined;
  k++;
  for (;;) {
    while (k < t.length && (WS.has(t.charCodeAt(k)) || t.charCodeAt(k) === 0x2c)) k++;
    if (k >= t.length || t.charCodeAt(k) !== 0x22) return undefined;
    const keyEnd = skipString(t, k);
    if (keyEnd < 0) return undefined;
    const key = t.slice(k + 1, keyEnd - 1);
    k = keyEnd;
    while (k < t.length && (WS.has(t.charCodeAt(k)) || t.charCodeAt(k) === 0x3a)) k++;
    const c = t.charCodeAt(k);
    if (key === 'Services') {
      if (c !== 0x5b) return undefined;
      const close = skipComposite(t, k) - 1;
      if (close < 0) return undefined;
      const spans = scanEntries(t, k + 1, close);
      return spans ? { open: k, close, ...spans } : undefined;
    }
    if (c === 0x7b || c === 0x5b) k = skipComposite(t, k);
    else if (c === 0x22) k = skipString(t, k);
    else while (k < t.length && !WS.has(t.charCodeAt(k)) && t.charCodeAt(k) !== 0x2c && t.charCodeAt(k) !== 0x7d) k++;
    if (k < 0) return undefined;
  }
}
