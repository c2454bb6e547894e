import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { tempDir } from '../helpers/harness.js';

/**
 * scripts/setup.sh on an installed checkout (npm test runs it before the suite): its checks must
 * never fail by chance (they once piped `consul version` into `head | grep -q` under pipefail and
 * failed ~1 run in 3 with SIGPIPE), and a second run must change nothing and call no installer.
 */
const run = promisify(execFile);
const SETUP = path.join(PROJECT_ROOT, 'scripts/setup.sh');

/** Programs setup must not call on an installed machine: each records its call and fails. */
const INSTALLERS = ['apt-get', 'apt', 'curl', 'wget', 'npm', 'dpkg-deb'];

function shimDir(): { dir: string; log: string } {
  const dir = tempDir();
  const log = path.join(dir, 'calls.log');
  for (const name of INSTALLERS) {
    const file = path.join(dir, name);
    writeFileSync(file, `#!/bin/sh\necho "${name} $*" >> '${log}'\nexit 1\n`);
    chmodSync(file, 0o755);
  }
  return { dir, log };
}

function fingerprint(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const rel of ['.tools/bin/consul', 'node_modules/.dfp-lock-stamp', 'node_modules/.package-lock.json']) {
    const file = path.join(PROJECT_ROOT, rel);
    if (!existsSync(file)) continue;
    const st = statSync(file);
    out[rel] = `${st.mtimeMs} ${st.size} ${createHash('sha256').update(readFileSync(file)).digest('hex')}`;
  }
  return out;
}

describe('scripts/setup.sh on an installed checkout', () => {
  it('passes its checks 100 times out of 100 (no SIGPIPE race)', async () => {
    const failures: string[] = [];
    // One at a time: the suite runs other tests beside this one, and some of them count requests.
    for (let i = 0; i < 100; i++) {
      try {
        await run('bash', [SETUP, '--check'], { cwd: PROJECT_ROOT });
      } catch (err) {
        const e = err as { code?: number; stderr?: string };
        failures.push(`run ${i}: exit ${e.code} ${e.stderr ?? ''}`.trim());
      }
    }
    assert.deepEqual(failures, []);
  });

  it('--check says what is missing and exits 3 instead of installing', async () => {
    const { dir, log } = shimDir();
    const env = { ...process.env, PATH: `${dir}:${process.env.PATH}`, HAPROXY_BIN: path.join(dir, 'no-such-haproxy') };
    const err = await run('bash', [SETUP, '--check'], { cwd: PROJECT_ROOT, env }).then(
      () => assert.fail('--check passed without HAProxy'),
      (e: { code?: number; stderr?: string }) => e,
    );
    assert.equal(err.code, 3);
    assert.match(err.stderr ?? '', /missing: HAProxy >= 2\.6/);
    assert.equal(existsSync(log), false, 'no installer may run under --check');
  });

  it('Chromium (the dashboard test\'s browser): --check names it when missing, --no-browser leaves it out', async () => {
    const { dir, log } = shimDir();
    const env = { ...process.env, PATH: `${dir}:${process.env.PATH}`, CHROMIUM_BIN: path.join(dir, 'no-such-chromium') };
    const err = await run('bash', [SETUP, '--check'], { cwd: PROJECT_ROOT, env }).then(
      () => assert.fail('--check passed without Chromium'),
      (e: { code?: number; stderr?: string }) => e,
    );
    assert.equal(err.code, 3);
    assert.match(err.stderr ?? '', /missing: Chromium \(.*no-such-chromium/);
    const skipped = await run('bash', [SETUP, '--check', '--no-browser'], { cwd: PROJECT_ROOT, env });
    assert.equal(skipped.stderr, '');
    // A CHROMIUM_BIN of the user's is never replaced by a package: setup says what is missing, and goes on.
    const installing = await run('bash', [SETUP], { cwd: PROJECT_ROOT, env });
    assert.match(installing.stderr, /Chromium is missing at .*no-such-chromium/);
    assert.equal(existsSync(log) ? readFileSync(log, 'utf8') : '', '', 'no installer may run for a CHROMIUM_BIN');
  });

  it('run twice, changes nothing and calls no installer or network tool', async () => {
    const { dir, log } = shimDir();
    mkdirSync(dir, { recursive: true });
    const env = { ...process.env, PATH: `${dir}:${process.env.PATH}` };
    const before = fingerprint();
    assert.ok(Object.keys(before).length >= 2, `expected an installed checkout, found ${JSON.stringify(before)}`);
    for (const attempt of [1, 2]) {
      const { stderr } = await run('bash', [SETUP], { cwd: PROJECT_ROOT, env });
      assert.equal(stderr, '', `run ${attempt} printed ${JSON.stringify(stderr)}`);
    }
    assert.equal(existsSync(log) ? readFileSync(log, 'utf8') : '', '', 'installers or network tools were called');
    assert.deepEqual(fingerprint(), before);
  });
});
