import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { it } from 'node:test';
import { API_DOC, withGeneratedTables } from '../../scripts/docs.js';

it('docs/api.md shows the parameter tables of the field table (run `npm run docs` after changing it)', () => {
  const text = readFileSync(API_DOC, 'utf8');
  assert.equal(text, withGeneratedTables(text));
});

it('docs stand alone: every link in README.md and docs/ points at a file of this repository that exists', () => {
  const root = path.join(path.dirname(API_DOC), '..');
  const files = ['README.md', ...readdirSync(path.join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
  const problems: string[] = [];
  for (const file of files) {
    const text = readFileSync(path.join(root, file), 'utf8');
    // A reader of the repository alone has no workspace next to it.
    for (const outside of ['/work/', '../shared', 'shared/reference', 'reference/dfp-api', 'reference/acceptance']) {
      if (text.includes(outside)) problems.push(`${file} mentions ${outside}`);
    }
    for (const m of text.matchAll(/!?\[[^\]]*\]\(([^)\s]+)\)/g)) {
      const target = (m[1] ?? '').split('#')[0] ?? '';
      if (target === '' || /^https?:\/\//.test(target)) continue;
      const resolved = path.resolve(path.dirname(path.join(root, file)), target);
      if (!resolved.startsWith(root)) problems.push(`${file} links outside the repository: ${target}`);
      else if (!existsSync(resolved)) problems.push(`${file} links to a missing file: ${target}`);
    }
  }
  assert.deepEqual(problems, []);
});
