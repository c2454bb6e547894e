import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { reloadReasons, runtimeOps, skeletonSections } from '../../src/apply/plan.js';
import { loadSettings } from '../../src/config/settings.js';
import { DfpError } from '../../src/errors.js';
import { type BackendAllocation, type RenderSettings, renderConfig } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceSpec } from '../../src/spec/types.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

/** STATS_* settings (start-up validation) and plan.ts reloadReasons (why a change needs a reload). */

describe('STATS_* settings', () => {
  const base = { STATE_DIR: '/tmp/dfp-settings', SECRETS_DIR: '/nonexistent' };

  it('disabled by default; user/pass enable it with auth; none/none without', () => {
    assert.equal(loadSettings(base).stats, undefined);
    assert.deepEqual(loadSettings({ ...base, STATS_USER: 'admin', STATS_PASS: 'pa$$:w' }).stats, {
      uri: '/admin?stats',
      port: undefined,
      auth: { user: 'admin', pass: 'pa$$:w' },
    });
    assert.deepEqual(loadSettings({ ...base, STATS_USER: 'none', STATS_PASS: 'none', STATS_URI: '/s', STATS_PORT: '9000' }).stats, { uri: '/s', port: 9000, auth: undefined });
  });

  it('the *_ENV variables name the variable each value is read from; a dfp_<name> secret still wins', () => {
    const s = loadSettings({ ...base, STATS_USER_ENV: 'MY_USER', STATS_PASS_ENV: 'MY_PASS', STATS_URI_ENV: 'MY_URI', MY_USER: 'u', MY_PASS: 'p', MY_URI: '/x', STATS_USER: 'ignored' });
    assert.deepEqual(s.stats, { uri: '/x', port: undefined, auth: { user: 'u', pass: 'p' } });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-secrets-'));
    try {
      writeFileSync(path.join(dir, 'dfp_stats_pass'), 'from-secret\n');
      assert.equal(loadSettings({ ...base, SECRETS_DIR: dir, STATS_USER: 'u', STATS_PASS: 'p' }).stats?.auth?.pass, 'from-secret');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bad values stop start-up naming the variable, and never echo a password', () => {
    const cases: [Record<string, string>, string][] = [
      [{ STATS_USER: 'admin' }, 'STATS_PASS'],
      [{ STATS_PASS: 'secret1' }, 'STATS_USER'],
      [{ STATS_USER: 'none', STATS_PASS: 'secret1' }, 'STATS_PASS'],
      [{ STATS_USER: 'a:b', STATS_PASS: 'secret1' }, 'STATS_USER'],
      [{ STATS_USER: 'a b', STATS_PASS: 'secret1' }, 'STATS_USER'],
      [{ STATS_USER: 'admin', STATS_PASS: 'sec ret1' }, 'STATS_PASS'],
      [{ STATS_USER: 'admin', STATS_PASS: 'sec"ret1' }, 'STATS_PASS'],
      [{ STATS_USER: 'admin', STATS_PASS: 'sec#ret1' }, 'STATS_PASS'],
      [{ STATS_USER: 'admin', STATS_PASS: 'sec\\ret1' }, 'STATS_PASS'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_URI: 'admin' }, 'STATS_URI'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_URI: "/a'b" }, 'STATS_URI'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_URI: '/a b' }, 'STATS_URI'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_URI_ENV: 'MY_URI', MY_URI: 'nope' }, 'MY_URI'],
      [{ STATS_USER_ENV: 'NOT-A-NAME' }, 'STATS_USER_ENV'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_PORT: 'x' }, 'STATS_PORT'],
      [{ STATS_USER: 'admin', STATS_PASS: 'secret1', STATS_PORT: '80' }, 'STATS_PORT'],
    ];
    for (const [env, variable] of cases) {
      assert.throws(
        () => loadSettings({ ...base, ...env }),
        (e: unknown) => e instanceof DfpError && e.parameter === variable && !/sec.?ret1/.test(e.message),
        JSON.stringify(env),
      );
    }
  });
});

const SETTINGS: RenderSettings = defaultRenderSettings({ listeners: [{ port: 80, ssl: false, options: '' }], adminSocket: '/var/lib/dfp/admin.sock' });

const one = [{ id: 'h:web.0', address: '10.0.0.1', port: 31000 }];
const web = (extra: Partial<Omit<ServiceSpec, 'destinations'>> = {}, paths = ['/web']): ServiceState => ({
  spec: spec({ serviceName: 'web', destinations: [{ servicePath: paths }], ...extra }),
  instances: one,
});

function reasons(before: ServiceState[], after: ServiceState[], settings: Partial<RenderSettings> = {}, allocation?: BackendAllocation): string[] {
  const a = renderConfig(SETTINGS, before, allocation);
  const b = renderConfig({ ...SETTINGS, ...settings }, after, allocation);
  const found = reloadReasons(a, b, allocation ? new Map([...allocation.names].map(([k, n]) => [n, k])) : undefined);
  // The two functions agree: runtime ops exist exactly when nothing forces a reload.
  assert.equal(runtimeOps(a, b) === undefined, found.length > 0, JSON.stringify(found));
  return found;
}

describe('reloadReasons', () => {
  it('a new path of a path_beg service is a map entry: no reason', () => {
    assert.deepEqual(reasons([web()], [web({}, ['/web', '/web2'])]), []);
  });

  it('a new header rule names the backend whose lines changed', () => {
    assert.deepEqual(reasons([web()], [web({ addReqHeader: ['X-A b'] })]), ['backend web-be_0 (lines changed)']);
  });

  it('a backend on a spare name is named after its service', () => {
    const allocation: BackendAllocation = { names: new Map([['web-be_0', 'dfp-spare-1']]), spares: [], retired: [], slots: new Map() };
    assert.deepEqual(reasons([web()], [web({ setResHeader: ['X-A b'] })], {}, allocation), ['backend web-be_0 (lines changed; live as dfp-spare-1)']);
  });

  it('a pattern route changes the frontend; a new backend is new', () => {
    const reg: ServiceState = { spec: spec({ serviceName: 'reg', destinations: [{ servicePath: ['^/r/'], pathType: 'path_reg' }] }), instances: [] };
    assert.deepEqual(reasons([web()], [web(), reg]), ['frontend services', 'backend reg-be_0 (new)']);
    assert.deepEqual(reasons([web(), reg], [web()]), ['frontend services', 'backend reg-be_0 (removed)']);
  });

  it('users change the credentials file (and the backend that checks them)', () => {
    assert.deepEqual(reasons([web()], [web({ users: ['ops:pw'] })]), ['backend web-be_0 (lines changed)', 'credentials file']);
  });

  it('global, defaults and the stats page are named too', () => {
    assert.deepEqual(reasons([web()], [web()], { maxconn: 10, timeouts: { ...SETTINGS.timeouts, client: 1 } }), ['global', 'defaults']);
    assert.deepEqual(reasons([web()], [web()], { stats: { uri: '/s', port: undefined, auth: { user: 'a', pass: 'b' } } }), ['frontend services', 'credentials file']);
  });

  it('a new server of a sticky backend fills a slot; a health check switched changes the server lines', () => {
    const two = [...one, { id: 'h:web.1', address: '10.0.0.2', port: 31000 }];
    const sticky = (instances: typeof one): ServiceState => ({ spec: spec({ serviceName: 'web', sessionType: 'sticky-server', destinations: [{ servicePath: ['/web'] }] }), instances });
    assert.deepEqual(reasons([sticky(one)], [sticky(two)]), []);
    assert.deepEqual(reasons([web()], [web({ skipCheck: true })]), ['backend web-be_0 (lines changed)']);
  });

  it('skeletonSections splits at section headers', () => {
    const s = skeletonSections(renderConfig(SETTINGS, [web()]).skeleton);
    assert.deepEqual([...s.keys()], ['global', 'defaults', 'frontend services', 'backend web-be_0']);
  });
});
