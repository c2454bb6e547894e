import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../../src/util/project.js';

/** `npm run demo` keeps working: it is the newcomer's first look. */
it('the demo runs the walkthrough to the end', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [path.join(PROJECT_ROOT, 'dist/scripts/demo.js')], { timeout: 120_000 });
  assert.match(stdout, /"Status":"OK","Message":"","ServiceName":"books-ms","ServicePath":"\/api\/v1\/books"/);
  assert.match(stdout, /"instance":"books-ms\.1"[\s\S]*\(HTTP 200\)/);
  for (const n of [1, 2, 3]) assert.match(stdout, new RegExp(`books-ms\\.${n}: 10 requests`));
  assert.match(stdout, /\(HTTP 503\)/);
  assert.match(stdout, /done: no process left behind/);
});
