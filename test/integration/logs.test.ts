import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { freePort } from '../../src/util/ports.js';
import { waitForExit } from '../../src/util/process.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { type Backend, registerLikeRegistrator, startBackend, startConsul, stopConsul, tempDir, track } from '../helpers/harness.js';
import { assertNoKey, makeCert } from '../helpers/tls.js';

const SECRETS = {
  users: 'UsersSecretPw1',
  stats: 'StatsSecretPw2',
  file: 'FileSecretPw3',
  service: 'ServiceSecretPw4',
  refused: 'RefusedSecretPw5',
  form: 'FormSecretPw6',
};

type Line = Record<string, unknown> & { level: string; time: string; scope: string; msg: string };

/**
 * The proxy as `npm start` runs it (node dist/src/main.js), at LOG_LEVEL=debug with every kind of
 * password the settings and the API take, and DEBUG=true request logs: every line it writes is a
 * JSON object, applies carry their fields, HAProxy's own lines keep their level, and no secret
 * appears anywhere in what it wrote.
 */
describe('logs', () => {
  let consul: ConsulAgent;
  let backend: Backend;
  const stateDir = tempDir();
  let output = '';
  let lines: Line[] = [];
  let pem: ReturnType<typeof makeCert>;
  let servicePem: ReturnType<typeof makeCert>;

  before(async () => {
    consul = await startConsul();
    backend = await startBackend('web.0');
    await registerLikeRegistrator(consul.address, { name: 'web', container: 'web.0', exposedPort: 8080, hostPort: backend.port });
    const secretsDir = path.join(stateDir, 'secrets');
    mkdirSync(secretsDir, { recursive: true });
    writeFileSync(path.join(secretsDir, 'dfp_users_team'), `bob:${SECRETS.file}\n`);
    pem = makeCert(stateDir, 'a.example.com');
    servicePem = makeCert(stateDir, 'b.example.com');
    const [apiPort, httpPort, tlsPort, statsPort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
    const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist/src/main.js')], {
      env: {
        ...process.env,
        CONSUL_ADDRESS: consul.address,
        STATE_DIR: path.join(stateDir, 'proxy'),
        SECRETS_DIR: secretsDir,
        PORT: String(apiPort),
        IP: '127.0.0.1',
        DEFAULT_PORTS: `${httpPort},${tlsPort}:ssl`,
        LOG_LEVEL: 'debug',
        LOG_FORMAT: '',
        DEBUG: 'true',
        USERS: `admin:${SECRETS.users}`,
        STATS_USER: 'stats',
        STATS_PASS: SECRETS.stats,
        STATS_PORT: String(statsPort),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    track(child.pid);
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    try {
      const deadline = Date.now() + 60_000;
      while (!/ready: serving /.test(output)) {
        if (child.exitCode !== null || Date.now() > deadline) assert.fail(`the proxy did not start: ${output}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const api = `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`;
      const call = async (endpoint: string, init?: RequestInit) => {
        const res = await fetch(`${api}/${endpoint}`, init);
        return { status: res.status, text: await res.text() };
      };
      assert.equal((await call(`reconfigure?serviceName=web&servicePath=/web&users=carol:${SECRETS.service}`)).status, 200);
      assert.equal((await call('reconfigure?serviceName=team&servicePath=/team&usersSecret=team')).status, 200);
      // A refused request carrying a password, and one sent as a form body.
      assert.equal((await call(`reconfigure?serviceName=bad&servicePath=/a%0Ab&users=dave:${SECRETS.refused}`)).status, 400);
      // A form body with a password and a serviceCert (certificate and key in a parameter).
      const body = new URLSearchParams({ serviceName: 'form', servicePath: '/form', serviceDomain: 'b.example.com', users: `erin:${SECRETS.form}`, serviceCert: servicePem.bundle });
      const form = await call('reconfigure', { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: body.toString() });
      assert.equal(form.status, 200, form.text);
      assert.equal((await call('cert?certName=a.example.com', { method: 'PUT', body: pem.bundle })).status, 200);
      assert.equal((await call('reload')).status, 200);
      // A request through HAProxy with the service's credentials (DEBUG=true logs it).
      const through = await fetch(`http://127.0.0.1:${httpPort}/web`, { headers: { Authorization: `Basic ${Buffer.from(`carol:${SECRETS.service}`).toString('base64')}` } });
      assert.equal(through.status, 200);
      await through.text();
    } finally {
      child.kill('SIGTERM');
      await waitForExit(child.pid ?? 0, 30_000);
      if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
    }
    lines = output
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => {
        try {
          return JSON.parse(l) as Line;
        } catch {
          throw new Error(`not a JSON line: ${l}`);
        }
      });
  });

  after(async () => {
    await backend?.close();
    if (consul) await stopConsul(consul);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('writes one JSON object per line, with level, time, scope and msg', () => {
    assert.ok(lines.length > 20, `${lines.length} lines`);
    for (const l of lines) {
      assert.ok(['debug', 'info', 'warn', 'error'].includes(l.level), JSON.stringify(l));
      assert.match(l.time, /^\d{4}-\d\d-\d\dT/);
      assert.match(l.scope, /^dfp(:|$)/);
      assert.equal(typeof l.msg, 'string');
    }
  });

  it('no password or key appears in any line', () => {
    for (const [what, secret] of Object.entries(SECRETS)) assert.ok(!output.includes(secret), `the ${what} password leaked`);
    assert.ok(!output.includes(Buffer.from(`carol:${SECRETS.service}`).toString('base64')), 'the basic-auth header leaked');
    assertNoKey(output, [pem, servicePem], 'the log');
  });

  it('start-up says what it found, restored and applied; every apply has its fields', () => {
    const ready = lines.find((l) => l.msg.startsWith('ready: serving'));
    assert.ok(ready, 'a ready line');
    for (const field of ['services', 'instances', 'consulNodes', 'certificates', 'generation', 'applies', 'startupMs']) assert.ok(field in ready, `ready has ${field}`);
    const restored = lines.find((l) => l.msg.startsWith('restored '));
    assert.ok(restored && 'restored' in restored && 'instances' in restored, 'the restore line counts');
    const applies = lines.filter((l) => l.scope === 'dfp:reconcile' && typeof l.generation === 'number');
    assert.ok(applies.length >= 4, `${applies.length} apply lines`);
    for (const a of applies) {
      assert.ok(['runtime', 'reload', 'none'].includes(String(a.kind)), JSON.stringify(a));
      assert.equal(typeof a.trigger, 'string');
      assert.equal(typeof a.durationMs, 'number');
    }
    const api = applies.find((a) => a.trigger === 'reconfigure web');
    assert.ok(api && typeof (api.propagationMs as Record<string, number>)?.api === 'number', 'the API change was timed until live');
  });

  it("HAProxy's own lines pass through with their level", () => {
    const haproxy = lines.filter((l) => l.scope === 'dfp:haproxy' && typeof l.haproxyLevel === 'string');
    assert.ok(
      haproxy.some((l) => l.haproxyLevel === 'NOTICE' && /New worker/.test(l.msg)),
      'the master says it forked a worker',
    );
    assert.ok(haproxy.every((l) => !String(l.msg).startsWith('[')), 'the [LEVEL] (pid) prefix is parsed off');
    assert.ok(
      lines.some((l) => l.scope === 'dfp:haproxy' && /GET \/web/.test(l.msg)),
      "DEBUG=true: HAProxy's request log line",
    );
  });
});
