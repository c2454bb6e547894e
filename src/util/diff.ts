/**
 * A line diff in unified style (`-`, `+`, ` ` prefixes, `@@` hunk headers with line numbers),
 * enough to show what a dry run would change. The common head and tail are trimmed first; the
 * middle is aligned with an LCS table when small, else shown as removed then added.
 */
export function unifiedDiff(before: string, after: string, name: string, context = 2): string {
  if (before === after) return '';
  const a = before.split('\n');
  const b = after.split('\n');
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const midA = a.slice(head, a.length - tail);
  const midB = b.slice(head, b.length - tail);
  const body: string[] = [];
  if (midA.length * midB.length <= 1_000_000) {
    const n = midA.length;
    const m = midB.length;
    const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
    for (let i = n - 1; i >= 0; i--) {
      const row = lcs[i] as number[];
      const below = lcs[i + 1] as number[];
      for (let j = m - 1; j >= 0; j--) row[j] = midA[i] === midB[j] ? (below[j + 1] ?? 0) + 1 : Math.max(below[j] ?? 0, row[j + 1] ?? 0);
    }
    let i = 0;
    let j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && midA[i] === midB[j]) {
        body.push(` ${midA[i]}`);
        i++;
        j++;
      } else if (j < m && (i >= n || (lcs[i]?.[j + 1] ?? 0) >= (lcs[i + 1]?.[j] ?? 0))) body.push(`+${midB[j++]}`);
      else body.push(`-${midA[i++]}`);
    }
  } else {
    for (const l of midA) body.push(`-${l}`);
    for (const l of midB) body.push(`+${l}`);
  }
  const pre = a.slice(Math.max(0, head - context), head).map((l) => ` ${l}`);
  const post = a.slice(a.length - tail, a.length - tail + context).map((l) => ` ${l}`);
  const lines = [...pre, ...body, ...post];
  const oldCount = lines.filter((l) => !l.startsWith('+')).length;
  const newCount = lines.filter((l) => !l.startsWith('-')).length;
  const start = head - pre.length + 1;
  return [`--- ${name}`, `+++ ${name}`, `@@ -${start},${oldCount} +${start},${newCount} @@`, ...lines].join('\n') + '\n';
}
