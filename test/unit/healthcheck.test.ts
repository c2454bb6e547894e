import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PROJECT_ROOT } from '../../src/util/project.js';

const SCRIPT = path.join(PROJECT_ROOT, 'scripts/image/healthcheck.mjs');

/** The container image's HEALTHCHECK script, run against a stand-in API that records what it was asked. */
describe('the image health check (scripts/image/healthcheck.mjs)', () => {
  let server: http.Server;
  let port = 0;
  let status = 200;
  let seen: { url: string | undefined; authorization: string | undefined }[] = [];
  const secrets = mkdtempSync(path.join(os.tmpdir(), 'dfp-health-'));

  before(async () => {
    server = http.createServer((req, res) => {
      seen.push({ url: req.url, authorization: req.headers.authorization });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => {
    server.close();
    rmSync(secrets, { recursive: true, force: true });
  });

  function run(env: Record<string, string>): Promise<{ code: number; stderr: string }> {
    seen = [];
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(PORT|IP|API_USER|API_PASSWORD|API_TOKEN|SECRETS_DIR)$/.test(k)));
    return new Promise((resolve) => {
      execFile(process.execPath, [SCRIPT], { env: { ...clean, SECRETS_DIR: secrets, ...env }, timeout: 10_000 }, (err, _stdout, stderr) => {
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr });
      });
    });
  }

  it('is healthy on 200 from successfulinitreload at PORT on loopback, sending no credentials', async () => {
    status = 200;
    const { code } = await run({ PORT: String(port), IP: '0.0.0.0' });
    assert.equal(code, 0);
    assert.deepEqual(seen, [{ url: '/v1/docker-flow-proxy/successfulinitreload', authorization: undefined }]);
  });

  it('is unhealthy on 503 (start-up restore not applied) and when nothing answers', async () => {
    status = 503;
    const notReady = await run({ PORT: String(port), IP: '127.0.0.1' });
    assert.equal(notReady.code, 1);
    assert.match(notReady.stderr, /successfulinitreload: 503/);
    status = 200;
    const closed = await run({ PORT: '1', IP: '127.0.0.1' });
    assert.equal(closed.code, 1);
    assert.equal(seen.length, 0);
  });

  it('sends API_TOKEN as a bearer token, and API_USER/API_PASSWORD from secret files as basic auth', async () => {
    status = 200;
    assert.equal((await run({ PORT: String(port), API_TOKEN: 'abc.123' })).code, 0);
    assert.equal(seen[0]?.authorization, 'Bearer abc.123');
    writeFileSync(path.join(secrets, 'dfp_api_user'), 'ops\n');
    writeFileSync(path.join(secrets, 'dfp_api_password'), 'pa:ss word\n');
    writeFileSync(path.join(secrets, 'dfp_port'), `${port}\n`);
    assert.equal((await run({})).code, 0);
    assert.equal(seen[0]?.authorization, `Basic ${Buffer.from('ops:pa:ss word').toString('base64')}`);
  });
});
