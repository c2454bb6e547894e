import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { request } from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { freePort } from '../../src/util/ports.js';
import { type ApiAnswer, type Backend, callApi, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type TestProxy } from '../helpers/harness.js';

/**
 * The stats page (STATS_*) and dry runs that say what forced a reload, on a real HAProxy and Consul.
 * Each group owns a proxy (its own PROXY_INSTANCE_NAME) on one shared Consul.
 */

interface Answer {
  readonly status: number;
  readonly type: string;
  readonly text: string;
}

function get(port: number, urlPath: string, auth?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        path: urlPath,
        agent: false,
        headers: { Connection: 'close', ...(auth ? { Authorization: `Basic ${Buffer.from(auth).toString('base64')}` } : {}) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          text += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), text }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

// `$` and `!` exercise the quoting of `stats auth`; the value must never leave the machine.
const PASSWORD = 'S3cr$t!stats';

describe('stats page and dry-run reload reasons', { concurrency: true }, () => {
  let consul: ConsulAgent;
  const backends: Backend[] = [];
  const proxies: TestProxy[] = [];

  before(async () => {
    consul = await startConsul();
  });

  after(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all(backends.map((b) => b.close()));
    if (consul) await stopConsul(consul);
  });

  async function proxy(instanceName: string, env: Record<string, string> = {}): Promise<TestProxy> {
    const p = await startProxy(consul.address, { PROXY_INSTANCE_NAME: instanceName, ...env });
    proxies.push(p);
    return p;
  }

  async function service(p: TestProxy, consulName: string, params: Record<string, string>): Promise<ApiAnswer> {
    const b = await startBackend(`${consulName}.0`);
    backends.push(b);
    await registerLikeRegistrator(consul.address, { name: consulName, container: `${consulName}.0`, exposedPort: 8080, hostPort: b.port });
    const res = await callApi(p, 'reconfigure', { serviceName: consulName, ...params });
    assert.equal(res.status, 200, res.text);
    return res;
  }

  it('disabled by default: the stats URI is routed like any other path (503 without a route)', async () => {
    const p = await proxy('stats-off');
    assert.equal((await get(p.httpPort, '/admin?stats')).status, 503);
    assert.doesNotMatch(readFileSync(path.join(p.stateDir, 'credentials.cfg'), 'utf8'), /dfp-stats|stats auth/);
    assert.doesNotMatch((await callApi(p, 'config')).text, /dfp-stats/);
  });

  describe('STATS_USER/STATS_PASS (through the *_ENV indirection) on the services listeners', { concurrency: 1 }, () => {
    let p: TestProxy;
    before(async () => {
      p = await proxy('stats-auth', { STATS_USER_ENV: 'MY_STATS_USER', MY_STATS_USER: 'admin', STATS_PASS: PASSWORD });
    });

    it('401 without credentials or with wrong ones; 200 HTML with them', async () => {
      assert.equal((await get(p.httpPort, '/admin?stats')).status, 401);
      assert.equal((await get(p.httpPort, '/admin?stats', 'admin:wrong')).status, 401);
      const ok = await get(p.httpPort, '/admin?stats', `admin:${PASSWORD}`);
      assert.equal(ok.status, 200);
      assert.match(ok.type, /text\/html/);
      assert.match(ok.text, /Statistics Report/);
      const csv = await get(p.httpPort, '/admin?stats;csv', `admin:${PASSWORD}`);
      assert.match(csv.text, /^# pxname,svname/);
      assert.match(csv.text, /\nservices,FRONTEND,/);
    });

    it('the stats URI wins over a service owning /; other paths still reach the service', async () => {
      await service(p, 'root', { servicePath: '/' });
      assert.equal((await get(p.httpPort, '/admin?stats')).status, 401);
      const other = await get(p.httpPort, '/admin');
      assert.equal(other.status, 200);
      assert.match(other.text, /"instance":"root\.0"/);
    });

    it('the password appears nowhere in config, config?type=json, status or a dry run; it lives in credentials.cfg (mode 600)', async () => {
      const seen = [
        (await callApi(p, 'config')).text,
        (await callApi(p, 'config', { type: 'json' })).text,
        (await callApi(p, 'status')).text,
        (await callApi(p, 'reconfigure', { serviceName: 'root', servicePath: '/', addReqHeader: 'X-A b', dryRun: 'true' })).text,
        (await callApi(p, 'reconfigure', { serviceName: 'root', servicePath: '/', users: 'ops:pw', dryRun: 'true' })).text,
        (await callApi(p, 'remove', { serviceName: 'root', dryRun: 'true' })).text,
      ];
      for (const text of seen) {
        assert.ok(!text.includes(PASSWORD) && !text.includes('S3cr'), text.slice(0, 200));
      }
      assert.match(seen[0] ?? '', /use_backend dfp-stats /);
      const secrets = path.join(p.stateDir, 'credentials.cfg');
      assert.match(readFileSync(secrets, 'utf8'), /stats auth "admin:S3cr\\\$t!stats"/);
      assert.equal(statSync(secrets).mode & 0o777, 0o600);
    });
  });

  it('none/none: the page without authentication, on STATS_URI', async () => {
    const p = await proxy('stats-none', { STATS_USER: 'none', STATS_PASS: 'none', STATS_URI: '/haproxy-stats' });
    const ok = await get(p.httpPort, '/haproxy-stats');
    assert.equal(ok.status, 200);
    assert.match(ok.text, /Statistics Report/);
    assert.equal((await get(p.httpPort, '/admin?stats')).status, 503);
  });

  it('STATS_PORT: served on its own listener, not on the services port', async () => {
    const statsPort = await freePort();
    const p = await proxy('stats-port', { STATS_USER: 'admin', STATS_PASS: PASSWORD, STATS_PORT: String(statsPort) });
    assert.equal((await get(statsPort, '/admin?stats')).status, 401);
    const ok = await get(statsPort, '/admin?stats', `admin:${PASSWORD}`);
    assert.equal(ok.status, 200);
    assert.match(ok.text, /Statistics Report/);
    assert.equal((await get(p.httpPort, '/admin?stats', `admin:${PASSWORD}`)).status, 503);
    const config = (await callApi(p, 'config')).text;
    assert.doesNotMatch(config, /dfp-stats/);
    assert.ok(!config.includes(PASSWORD));
  });

  describe('dry runs name what forced a reload', { concurrency: 1 }, () => {
    let p: TestProxy;
    before(async () => {
      p = await proxy('reasons');
      await service(p, 'web', { servicePath: '/web' });
      await service(p, 'rx', { servicePath: '^/rx/', pathType: 'path_reg' });
    });

    it('a new path on an existing service: runtime, no ReloadBecause', async () => {
      const res = await callApi(p, 'reconfigure', { serviceName: 'web', servicePath: '/web,/web2', dryRun: 'true' });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.DryRun, true);
      assert.equal(res.body.ApplyKind, 'runtime');
      assert.equal(res.body.ReloadBecause, undefined);
    });

    it('a new header rule on an existing service names its backend', async () => {
      const res = await callApi(p, 'reconfigure', { serviceName: 'web', servicePath: '/web', addReqHeader: 'X-Seen yes', dryRun: 'true' });
      assert.equal(res.body.ApplyKind, 'reload');
      const because = res.body.ReloadBecause as string[];
      assert.ok(Array.isArray(because) && because.length === 1, JSON.stringify(because));
      assert.match(because[0] ?? '', /^backend web-be_0 \(lines changed/);
    });

    it('users name the credentials file; removing a pattern route names frontend services', async () => {
      const users = await callApi(p, 'reconfigure', { serviceName: 'web', servicePath: '/web', users: 'ops:pw', dryRun: 'true' });
      assert.ok((users.body.ReloadBecause as string[]).includes('credentials file'), users.text);
      const removal = await callApi(p, 'remove', { serviceName: 'rx', dryRun: 'true' });
      assert.equal(removal.body.ApplyKind, 'reload');
      assert.deepEqual(removal.body.ReloadBecause, ['frontend services']);
      const plain = await callApi(p, 'remove', { serviceName: 'web', dryRun: 'true' });
      assert.equal(plain.body.ApplyKind, 'runtime');
      assert.equal(plain.body.ReloadBecause, undefined);
    });

    it('the apply record in status carries the same reason; the reload reuses its precheck\'s haproxy -c', async () => {
      const checks = (await callApi(p, 'status')).body.ConfigChecks as number;
      const res = await callApi(p, 'reconfigure', { serviceName: 'web', servicePath: '/web', addReqHeader: 'X-Seen yes' });
      assert.equal(res.status, 200, res.text);
      const status = (await callApi(p, 'status')).body;
      assert.equal(status.ConfigChecks, checks + 1, 'one haproxy -c: the precheck; the reload of the same files asks no second time');
      const applies = status.Applies as { kind: string; trigger: string; reloadBecause?: string[] }[];
      const last = applies.at(-1);
      assert.equal(last?.kind, 'reload');
      assert.equal(last?.trigger, 'reconfigure web');
      assert.match(last?.reloadBecause?.[0] ?? '', /^backend web-be_0 \(lines changed/);
      // A runtime apply carries none.
      await callApi(p, 'reconfigure', { serviceName: 'web', servicePath: '/web,/web3', addReqHeader: 'X-Seen yes' });
      const next = ((await callApi(p, 'status')).body.Applies as { kind: string; reloadBecause?: string[] }[]).at(-1);
      assert.equal(next?.kind, 'runtime');
      assert.equal(next?.reloadBecause, undefined);
    });
  });
});
