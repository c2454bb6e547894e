/**
 * HAProxy's `show stat` CSV (the stats page's `;csv`): one row per frontend, backend and server,
 * its columns named by the header line (`# pxname,svname,…`). Columns are read by name, so the
 * extra columns of a later HAProxy change nothing here.
 */

export interface StatRow {
  /** The proxy: a frontend's or backend's name. */
  readonly pxname: string;
  /** `FRONTEND`, `BACKEND`, or a server's name (a slot: `s1`, `s2`, …). */
  readonly svname: string;
  readonly field: (name: string) => string;
  /** A counter's value; 0 when the column is empty (not kept for this kind of row) or absent. */
  readonly count: (name: string) => number;
}

export function parseShowStat(csv: string): StatRow[] {
  const lines = csv.split('\n');
  const header = lines.find((l) => l.startsWith('# '));
  if (header === undefined) return [];
  const columns = new Map(
    header
      .slice(2)
      .split(',')
      .map((name, i) => [name, i] as const),
  );
  const rows: StatRow[] = [];
  for (const line of lines) {
    if (line === '' || line.startsWith('#')) continue;
    const cells = splitCsvLine(line);
    const field = (name: string) => {
      const i = columns.get(name);
      return i === undefined ? '' : (cells[i] ?? '');
    };
    const count = (name: string) => {
      const n = Number(field(name));
      return Number.isFinite(n) ? n : 0;
    };
    rows.push({ pxname: field('pxname'), svname: field('svname'), field, count });
  }
  return rows;
}

/**
 * One CSV line. HAProxy quotes a string field that holds a comma or a quote (a check's last
 * answer, `last_chk`, can hold anything a server sent), doubling the quotes inside.
 */
export function splitCsvLine(line: string): string[] {
  const cells: string[] = [];
  let i = 0;
  for (;;) {
    if (line[i] === '"') {
      let value = '';
      i++;
      while (i < line.length) {
        if (line[i] === '"') {
          if (line[i + 1] === '"') {
            value += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        value += line[i];
        i++;
      }
      cells.push(value);
      // Whatever follows a closing quote up to the next comma is not HAProxy's; it is dropped.
      const comma = line.indexOf(',', i);
      if (comma < 0) return cells;
      i = comma + 1;
    } else {
      const comma = line.indexOf(',', i);
      if (comma < 0) {
        cells.push(line.slice(i));
        return cells;
      }
      cells.push(line.slice(i, comma));
      i = comma + 1;
    }
  }
}
