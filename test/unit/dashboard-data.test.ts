import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildDashboard, type DashboardInput } from '../../src/dashboard/data.js';
import { dashboardAsset } from '../../src/dashboard/assets.js';
import { parseShowStat, splitCsvLine } from '../../src/haproxy/stats.js';
import { spec as makeSpec } from '../../src/spec/defaults.js';
import { backendName } from '../../src/spec/types.js';

/** HAProxy 2.6's first columns, in its order, and the ones past them the dashboard reads. */
const COLUMNS = ['pxname', 'svname', 'qcur', 'qmax', 'scur', 'smax', 'slim', 'stot', 'bin', 'bout', 'dreq', 'dresp', 'ereq', 'econ', 'eresp', 'wretr', 'wredis', 'status', 'weight', 'act', 'bck', 'chkfail', 'chkdown', 'lastchg', 'downtime', 'qlimit', 'pid', 'iid', 'sid', 'throttle', 'lbtot', 'tracked', 'type', 'rate', 'rate_lim', 'rate_max', 'check_status', 'check_code', 'check_duration', 'hrsp_1xx', 'hrsp_2xx', 'hrsp_3xx', 'hrsp_4xx', 'hrsp_5xx', 'hrsp_other', 'hanafail', 'req_rate', 'req_rate_max', 'req_tot', 'cli_abrt', 'srv_abrt', 'last_chk'];

function csv(rows: Record<string, string | number>[]): string {
  const line = (r: Record<string, string | number>) => COLUMNS.map((c) => String(r[c] ?? '')).join(',');
  return `# ${COLUMNS.join(',')}\n${rows.map(line).join('\n')}\n\n`;
}

describe("HAProxy's show stat CSV", () => {
  it('splits quoted cells (a check answer with commas and quotes) as HAProxy writes them', () => {
    assert.deepEqual(splitCsvLine('web,s1,"HTTP 500, ""oops""",UP,'), ['web', 's1', 'HTTP 500, "oops"', 'UP', '']);
    assert.deepEqual(splitCsvLine(''), ['']);
    assert.deepEqual(splitCsvLine('"a"'), ['a']);
  });

  it('reads columns by name; empty and absent columns count 0', () => {
    const rows = parseShowStat(csv([{ pxname: 'web-be_0', svname: 'BACKEND', stot: 7, req_tot: 12, status: 'UP', last_chk: '"a, b"' }]));
    assert.equal(rows.length, 1);
    const row = rows[0];
    assert.ok(row);
    assert.equal(row.pxname, 'web-be_0');
    assert.equal(row.count('req_tot'), 12);
    assert.equal(row.count('hrsp_5xx'), 0);
    assert.equal(row.count('no_such_column'), 0);
    assert.equal(row.field('status'), 'UP');
    assert.equal(row.field('last_chk'), 'a, b');
    assert.deepEqual(parseShowStat(''), []);
  });
});

describe('the dashboard document', () => {
  const web = makeSpec({ serviceName: 'web', destinations: [{ servicePath: ['/web'], port: 8080 }] });
  const db = makeSpec({ serviceName: 'db', destinations: [{ reqMode: 'tcp', srcPort: 5432, port: 5432, servicePath: [] }] });
  const webBackend = backendName(web, web.destinations[0] ?? assert.fail());
  const dbBackend = backendName(db, db.destinations[0] ?? assert.fail());
  const hostile = '<img/src=x/onerror=alert(1)>';
  const stats = parseShowStat(
    csv([
      { pxname: 'services', svname: 'FRONTEND', req_tot: 1000, status: 'OPEN' },
      { pxname: webBackend, svname: 's1', status: 'UP', check_status: 'L4OK', stot: 40 },
      { pxname: webBackend, svname: 's2', status: 'DOWN', check_status: 'L4CON', stot: 2 },
      { pxname: webBackend, svname: 's3', status: 'MAINT' },
      { pxname: webBackend, svname: 'BACKEND', status: 'UP', req_tot: 42, stot: 42, hrsp_5xx: 3, econ: 2, eresp: 1, scur: 4 },
      { pxname: dbBackend, svname: 's1', status: 'no check' },
      { pxname: dbBackend, svname: 'BACKEND', status: 'UP', stot: 9, req_tot: '' },
    ]),
  );
  const input = (over: Partial<DashboardInput> = {}): DashboardInput => ({
    at: new Date('2026-11-27T12:00:00Z'),
    proxy: { instanceName: 'docker-flow', replicaId: 'a:8080', ready: true, generation: 5, configHash: 'h', haproxyUp: true, haproxyRestarts: 0, applyCounts: { runtime: 3, reload: 2, none: 1 }, metrics: true },
    services: [
      {
        spec: web,
        consulService: 'web',
        source: 'api',
        instances: [
          { id: 'h:web.0:8080', address: '10.0.0.1', port: 1 },
          { id: hostile, address: '10.0.0.2', port: 2 },
          { id: 'h:web.new:8080', address: '10.0.0.3', port: 3 },
        ],
        // The newest instance has no slot yet (its apply is still to come).
        backends: [{ name: webBackend, dest: web.destinations[0] ?? assert.fail(), slots: ['h:web.0:8080', hostile, undefined, undefined] }],
      },
      { spec: db, consulService: 'db', source: 'env', instances: [{ id: 'h:db.0:5432', address: '10.0.0.9', port: 5432 }], backends: [{ name: dbBackend, dest: db.destinations[0] ?? assert.fail(), slots: ['h:db.0:5432'] }] },
    ],
    stats,
    replicas: {
      list: [
        { id: 'a:8080', generation: 5, ready: true, specsHash: 'S', kvIndex: 10, at: 't' },
        { id: 'b:8080', generation: 4, ready: true, specsHash: 'OLD', kvIndex: 9, at: 't' },
      ],
      unknown: null,
      mine: 'S',
      self: 'a:8080',
    },
    recent: [{ generation: 5, kind: 'runtime', trigger: 'consul: web has 3 instances', durationMs: 3, at: 't', propagation: [{ source: 'consul-instances', ms: 12 }] }],
    ...over,
  });

  it("joins the services' instances to their slots and HAProxy's rows, and counts traffic per backend", () => {
    const data = buildDashboard(input());
    assert.deepEqual(
      data.services.map((s) => s.name),
      ['db', 'web'],
      'sorted by name',
    );
    const w = data.services.find((s) => s.name === 'web');
    assert.ok(w);
    assert.deepEqual(
      w.instances.map((i) => [i.id, i.slot, i.health, i.check]),
      [
        ['h:web.0:8080', 's1', 'UP', 'L4OK'],
        [hostile, 's2', 'DOWN', 'L4CON'],
        ['h:web.new:8080', null, 'unknown', ''],
      ],
    );
    assert.equal(w.instances[1]?.id, hostile, 'data stays data: the page writes it as text');
    assert.deepEqual(w.backends, [{ name: webBackend, status: 'UP', requests: 42, errors5xx: 3, connectionErrors: 3, current: 4 }]);
    assert.deepEqual(w.routes, [{ backend: webBackend, reqMode: 'http', paths: ['/web'], domains: [], srcPort: null, port: 8080, dns: null }]);
    const d = data.services.find((s) => s.name === 'db');
    assert.equal(d?.backends[0]?.requests, 9, 'a tcp backend counts connections');
    assert.equal(d?.instances[0]?.health, 'no check');
    assert.equal(d?.source, 'env');
    assert.deepEqual(data.traffic, { requests: 51, errors: 6, statsError: null });
    assert.equal(data.at, '2026-11-27T12:00:00.000Z');
  });

  it('says which replica differs, and when the list or the stats are unknown', () => {
    const data = buildDashboard(input());
    assert.equal(data.replicas.inAgreement, false);
    assert.deepEqual(
      data.replicas.list.map((r) => [r.id, r.agrees, r.self]),
      [
        ['a:8080', true, true],
        ['b:8080', false, false],
      ],
    );
    const unknown = buildDashboard(input({ replicas: { list: null, unknown: 'Consul answered 403', mine: 'S', self: 'a:8080' }, stats: { error: 'no socket' } }));
    assert.deepEqual(unknown.replicas, { unknown: 'Consul answered 403', inAgreement: null, list: [] });
    assert.deepEqual(unknown.traffic, { requests: 0, errors: 0, statsError: 'no socket' });
    assert.equal(unknown.services.find((s) => s.name === 'web')?.instances[0]?.health, 'unknown');
    assert.equal(unknown.services.find((s) => s.name === 'web')?.backends[0]?.status, 'unknown');
  });

  it('serves only its fixed files', () => {
    assert.match(dashboardAsset('')?.body.toString() ?? '', /<script src="dashboard.js" type="module">/);
    assert.match(dashboardAsset('uplot.min.js')?.contentType ?? '', /^text\/javascript/);
    for (const name of ['../package.json', 'index.html/..', 'constructor', '__proto__', 'toString', '../../node_modules/uplot/package.json']) {
      assert.equal(dashboardAsset(name), undefined, name);
    }
  });
});
