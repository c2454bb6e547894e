import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fieldsTable } from '../src/spec/fields.js';
import { PROJECT_ROOT } from '../src/util/project.js';

/**
 * `npm run docs`: rewrites the generated parts of docs/api.md (the parameter tables, from the
 * field table in src/spec/fields.ts). A unit test fails when they are out of date.
 */
export const API_DOC = path.join(PROJECT_ROOT, 'docs/api.md');

export function withGeneratedTables(text: string): string {
  let out = text;
  for (const level of ['service', 'destination'] as const) {
    const start = `<!-- generated: ${level} fields (npm run docs) -->`;
    const end = `<!-- end of generated ${level} fields -->`;
    const i = out.indexOf(start);
    const j = out.indexOf(end);
    if (i < 0 || j < i) throw new Error(`docs/api.md lacks the markers for the ${level} table`);
    out = `${out.slice(0, i + start.length)}\n${fieldsTable(level)}\n${out.slice(j)}`;
  }
  return out;
}

if (process.argv[1] && import.meta.url.endsWith(path.basename(process.argv[1]))) {
  writeFileSync(API_DOC, withGeneratedTables(readFileSync(API_DOC, 'utf8')));
  console.log(`docs: ${API_DOC} updated`);
}
