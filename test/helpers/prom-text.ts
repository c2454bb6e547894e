/**
 * A strict parser of Prometheus' text exposition format (0.0.4), for tests: every line of a scrape
 * must be a HELP, a TYPE, a comment, a blank line or a well-formed sample, or parsing fails with the
 * line number. Checked beyond the syntax: a family's TYPE comes before its samples and at most
 * once, its samples are contiguous, no series appears twice, counters are not negative, and every
 * histogram has cumulative buckets ending in `+Inf` equal to its `_count`, and a `_sum`.
 */

export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

export interface Family {
  readonly name: string;
  type: string;
  help: string | undefined;
  readonly samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

export function parsePrometheusText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const seenSeries = new Set<string>();
  let current: Family | undefined;
  const closed = new Set<string>();
  const lines = text.split('\n');
  if (lines.at(-1) !== '') throw new Error('the text must end with a line feed');
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line.slice(0, 120))}`;
    if (line === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) {
        if (/^# (HELP|TYPE)\b/.test(line)) throw new Error(`malformed ${where}`);
        return; // a comment
      }
      const [, kind, name = '', rest = ''] = m;
      if (!NAME.test(name)) throw new Error(`bad metric name at ${where}`);
      const family = open(name, where);
      if (kind === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`unknown type at ${where}`);
        if (family.samples.length > 0) throw new Error(`TYPE after samples at ${where}`);
        if (family.type !== 'untyped' && family.type !== rest) throw new Error(`second TYPE at ${where}`);
        family.type = rest;
      } else {
        if (family.help !== undefined) throw new Error(`second HELP at ${where}`);
        family.help = unescapeText(rest, false, where);
      }
      return;
    }
    const sample = parseSample(line, where);
    const family = open(familyOf(sample.name, families), where);
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (seenSeries.has(key)) throw new Error(`series repeated at ${where}`);
    seenSeries.add(key);
    if (family.type === 'counter' && sample.value < 0) throw new Error(`negative counter at ${where}`);
    family.samples.push(sample);
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);
  return families;

  function open(name: string, where: string): Family {
    let family = families.get(name);
    if (!family) {
      family = { name, type: 'untyped', help: undefined, samples: [] };
      families.set(name, family);
    }
    if (current !== family) {
      if (current) closed.add(current.name);
      if (closed.has(name)) throw new Error(`samples of ${name} are not contiguous at ${where}`);
      current = family;
    }
    return family;
  }
}

/** `x_bucket`, `x_sum`, `x_count` belong to family `x` when `x` is a histogram or summary. */
function familyOf(sampleName: string, families: ReadonlyMap<string, Family>): string {
  const m = /^(.*)_(bucket|sum|count)$/.exec(sampleName);
  const base = m?.[1];
  if (base !== undefined) {
    const f = families.get(base);
    if (f && (f.type === 'histogram' || f.type === 'summary')) return base;
  }
  return sampleName;
}

function parseSample(line: string, where: string): Sample {
  const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{)?/.exec(line);
  if (!m?.[1]) throw new Error(`bad sample at ${where}`);
  const name = m[1];
  let pos = name.length;
  const labels: Record<string, string> = {};
  if (m[2]) {
    pos++;
    for (;;) {
      if (line[pos] === '}') {
        pos++;
        break;
      }
      const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(pos));
      if (!lm?.[1] || !LABEL.test(lm[1])) throw new Error(`bad label at ${where}`);
      pos += lm[0].length;
      let raw = '';
      for (;;) {
        const c = line[pos];
        if (c === undefined) throw new Error(`unterminated label value at ${where}`);
        if (c === '\\') {
          raw += c + (line[pos + 1] ?? '');
          pos += 2;
          continue;
        }
        pos++;
        if (c === '"') break;
        raw += c;
      }
      if (lm[1] in labels) throw new Error(`label ${lm[1]} twice at ${where}`);
      labels[lm[1]] = unescapeText(raw, true, where);
      if (line[pos] === ',') pos++;
      else if (line[pos] !== '}') throw new Error(`expected , or } at ${where}`);
    }
  }
  const rest = line.slice(pos);
  const vm = /^ (\S+)( -?[0-9]+)?$/.exec(rest);
  if (!vm?.[1]) throw new Error(`bad value at ${where}`);
  return { name, labels, value: parseValue(vm[1], where) };
}

/** Prometheus reads values with Go's strconv.ParseFloat: NaN and Inf in any case (prom-client writes `Nan`). */
function parseValue(raw: string, where: string): number {
  if (/^nan$/i.test(raw)) return Number.NaN;
  if (/^\+?inf(inity)?$/i.test(raw)) return Number.POSITIVE_INFINITY;
  if (/^-inf(inity)?$/i.test(raw)) return Number.NEGATIVE_INFINITY;
  if (!/^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$/.test(raw)) throw new Error(`bad number ${raw} at ${where}`);
  return Number(raw);
}

/** HELP text escapes `\\` and `\n`; label values also `\"`. Anything else after a backslash is an error. */
function unescapeText(raw: string, quotes: boolean, where: string): string {
  return raw.replace(/\\(.?)/g, (_, c: string) => {
    if (c === '\\') return '\\';
    if (c === 'n') return '\n';
    if (c === '"' && quotes) return '"';
    throw new Error(`bad escape \\${c} at ${where}`);
  });
}

function checkHistogram(f: Family): void {
  const series = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const entry = series.get(key) ?? { buckets: [] };
    series.set(key, entry);
    if (s.name === `${f.name}_bucket`) {
      if (le === undefined) throw new Error(`${f.name}: a bucket without le`);
      entry.buckets.push([parseValue(le, `le of ${f.name}`), s.value]);
    } else if (s.name === `${f.name}_sum`) entry.sum = s.value;
    else if (s.name === `${f.name}_count`) entry.count = s.value;
    else throw new Error(`${f.name}: unexpected sample ${s.name}`);
  }
  for (const [key, e] of series) {
    if (e.count === undefined || e.sum === undefined) throw new Error(`${f.name}${key}: _count or _sum missing`);
    const sorted = [...e.buckets].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < sorted.length; i++) if ((sorted[i]?.[1] ?? 0) < (sorted[i - 1]?.[1] ?? 0)) throw new Error(`${f.name}${key}: buckets are not cumulative`);
    const inf = sorted.at(-1);
    if (!inf || inf[0] !== Number.POSITIVE_INFINITY) throw new Error(`${f.name}${key}: no +Inf bucket`);
    if (inf[1] !== e.count) throw new Error(`${f.name}${key}: +Inf bucket ${inf[1]} != count ${e.count}`);
  }
}

/** The sum of a family's samples named `sample` whose labels include `match`. */
export function total(families: ReadonlyMap<string, Family>, family: string, match: Record<string, string> = {}, sample = family): number {
  const f = families.get(family);
  if (!f) throw new Error(`no family ${family} in the scrape`);
  return f.samples.filter((s) => s.name === sample && Object.entries(match).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
}
