import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { API_DOC, withGeneratedTables } from '../../scripts/docs.js';

it('docs/api.md shows the parameter tables of the field table (run `npm run docs` after changing it)', () => {
  const text = readFileSync(API_DOC, 'utf8');
  assert.equal(text, withGeneratedTables(text));
});
