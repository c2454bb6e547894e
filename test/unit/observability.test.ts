import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadSettings, secretValues } from '../../src/config/settings.js';
import { SettingsError } from '../../src/errors.js';
import { classifyHaproxyLine } from '../../src/haproxy/output.js';
import { hasPrometheusExporter } from '../../src/haproxy/validate.js';
import { Metrics } from '../../src/metrics/metrics.js';
import { Ring } from '../../src/metrics/ring.js';
import { createLogger, scrub } from '../../src/util/log.js';
import { parsePrometheusText, total } from '../helpers/prom-text.js';

const ENV = { STATE_DIR: '/var/lib/dfp', SECRETS_DIR: '/nonexistent/secrets' };

function capture(format: 'json' | 'pretty' = 'json', secrets: string[] = []) {
  const lines: string[] = [];
  const log = createLogger('debug', 'dfp', (l) => lines.push(l), { format, secrets });
  return { log, lines, json: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe('the logger', () => {
  it('writes one JSON object per line: level name, ISO time, scope once, msg, fields', () => {
    const { log, lines, json } = capture();
    log.child('apply').child('x').info('applied generation 3', { kind: 'runtime', generation: 3, durationMs: 1.5 });
    assert.equal(lines.length, 1);
    assert.ok(lines[0]?.endsWith('\n'));
    const [o] = json();
    assert.equal(o?.level, 'info');
    assert.match(String(o?.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.equal(o?.scope, 'dfp:apply:x');
    assert.equal((lines[0]?.match(/"scope"/g) ?? []).length, 1, 'scope appears once');
    assert.equal(o?.msg, 'applied generation 3');
    assert.equal(o?.kind, 'runtime');
    assert.equal(o?.generation, 3);
  });

  it('drops lines below its level and keeps the order of the rest', () => {
    const lines: string[] = [];
    const log = createLogger('warn', 'dfp', (l) => lines.push(l));
    log.debug('a');
    log.info('b');
    log.warn('c');
    log.error('d');
    assert.deepEqual(
      lines.map((l) => [JSON.parse(l).level, JSON.parse(l).msg]),
      [
        ['warn', 'c'],
        ['error', 'd'],
      ],
    );
  });

  it('pretty: one readable line with the level, the scope, the message and the fields', () => {
    const { log, lines } = capture('pretty');
    log.child('apply').warn('runtime API failed', { kind: 'reload', generation: 7 });
    assert.equal(lines.length, 1);
    const line = lines[0] ?? '';
    assert.ok(!line.includes('\u001b['), 'no colour codes when not a terminal');
    assert.match(line, /WARN/);
    assert.match(line, /\[dfp:apply\] runtime API failed/);
    assert.match(line, /"kind":"reload"/);
    assert.match(line, /"generation":7/);
  });

  it('censors fields with secret names and scrubs secrets out of messages and string fields', () => {
    const key = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----';
    const { log, lines } = capture('json', ['StatsPassw0rd', 'abc']);
    log.info(`loaded ${key} from somewhere`, { password: 'p1-secret', users: 'alice:p2-secret', spec: { pass: 'p3-secret' }, note: `url http://u:p4-secret@consul:8500/x` });
    log.info('request /reconfigure?serviceName=a&users=bob:p5-secret&x=1 failed; STATS_PASS=StatsPassw0rd');
    const text = lines.join('');
    for (const secret of ['p1-secret', 'p2-secret', 'p3-secret', 'p4-secret', 'p5-secret', 'StatsPassw0rd', 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASC']) {
      assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
    }
    assert.match(text, /\[REDACTED PRIVATE KEY\]/);
    assert.match(text, /serviceName=a&users=\[REDACTED\]&x=1/);
    // Values shorter than 4 characters are not scrubbed (they would eat ordinary words).
    assert.equal(scrub('abc def', new Set()), 'abc def');
  });

  it('secretValues lists the passwords of USERS, the users files and the stats page', () => {
    const s = loadSettings({ ...ENV, USERS: 'a:pw-one,b:pw-two', STATS_USER: 'admin', STATS_PASS: 'pw-three' });
    assert.deepEqual(secretValues(s).sort(), ['pw-one', 'pw-three', 'pw-two']);
  });
});

describe("HAProxy's output", () => {
  const c = (line: string, stopping = false) => {
    const r = classifyHaproxyLine(line, stopping);
    return [r.level, r.haproxyLevel, r.pid, r.text];
  };
  it('keeps its level: ALERT error, WARNING warn, NOTICE info', () => {
    assert.deepEqual(c('[ALERT]    (12) : config : parsing [x.cfg:3] : unknown keyword'), ['error', 'ALERT', 12, 'config : parsing [x.cfg:3] : unknown keyword']);
    assert.deepEqual(c('[WARNING]  (13) : Server web-be_0/s1 is DOWN, reason: Layer4 connection problem'), ['warn', 'WARNING', 13, 'Server web-be_0/s1 is DOWN, reason: Layer4 connection problem']);
    assert.deepEqual(c('[NOTICE]   (14) : Some notice worth reading'), ['info', 'NOTICE', 14, 'Some notice worth reading']);
  });
  it("logs every reload's routine lines, the log target's copies and everything while stopping at debug", () => {
    for (const line of [
      '[NOTICE]   (1) : New worker (2) forked',
      '[NOTICE]   (1) : Loading success.',
      '[NOTICE]   (1) : Reloading HAProxy',
      '[WARNING]  (1) : Former worker (2) exited with code 0 (Exit)',
      '[WARNING]  (2) : Proxy dfp-spare-1 stopped (cumulated conns: FE: 0, BE: 0).',
      '[WARNING]  (2) : Server a-be_0/s2 is UP/READY (leaving forced maintenance).',
      '[WARNING]  (2) : Server a-be_0/s2 is going DOWN for maintenance. 1 active and 0 backup servers left.',
      'Proxy services stopped (cumulated conns: FE: 0, BE: 0).',
    ]) {
      assert.equal(classifyHaproxyLine(line, false).level, 'debug', line);
    }
    assert.equal(classifyHaproxyLine('[ALERT]    (1) : Current worker (2) exited with code 143 (Terminated)', true).level, 'debug');
  });
  it('a worker that exits with an error is a warning at least', () => {
    assert.equal(classifyHaproxyLine('[NOTICE]   (1) : Former worker (2) exited with code 1 (Exit)', false).level, 'warn');
  });
});

describe("HAProxy's Prometheus exporter", () => {
  it('is found in haproxy -vv, and missing from a build without it', async () => {
    assert.equal(await hasPrometheusExporter(process.env.HAPROXY_BIN ?? 'haproxy'), true, 'Debian 2.6 has it');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-'));
    try {
      const fake = path.join(dir, 'haproxy');
      writeFileSync(fake, '#!/bin/sh\necho "HAProxy version 2.6"\necho "Available services : none"\n', { mode: 0o755 });
      assert.equal(await hasPrometheusExporter(fake), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('settings of metrics and logs', () => {
  it('defaults: metrics on, no exporter, log format chosen at start', () => {
    const s = loadSettings(ENV);
    assert.equal(s.metrics, true);
    assert.equal(s.prometheusPort, undefined);
    assert.equal(s.logFormat, undefined);
    assert.equal(s.logLevel, 'info');
  });
  it('refuses bad values, naming the variable', () => {
    const bad: [Record<string, string>, string][] = [
      [{ METRICS: 'maybe' }, 'METRICS'],
      [{ PROMETHEUS_PORT: '70000' }, 'PROMETHEUS_PORT'],
      [{ PROMETHEUS_PORT: '80' }, 'PROMETHEUS_PORT'],
      [{ PROMETHEUS_PORT: '9000', STATS_PORT: '9000' }, 'PROMETHEUS_PORT'],
      [{ PROMETHEUS_PORT: '8080' }, 'PROMETHEUS_PORT'],
      [{ LOG_FORMAT: 'xml' }, 'LOG_FORMAT'],
      [{ LOG_LEVEL: 'verbose' }, 'LOG_LEVEL'],
    ];
    for (const [env, name] of bad) {
      assert.throws(() => loadSettings({ ...ENV, ...env }), (e: unknown) => e instanceof SettingsError && e.parameter === name, JSON.stringify(env));
    }
    const s = loadSettings({ ...ENV, METRICS: 'false', PROMETHEUS_PORT: '9101', LOG_FORMAT: 'pretty', LOG_LEVEL: 'debug' });
    assert.deepEqual([s.metrics, s.prometheusPort, s.logFormat, s.logLevel], [false, 9101, 'pretty', 'debug']);
  });
});

describe('the metrics registry', () => {
  it('renders text the strict parser accepts, and counts what it is told', async () => {
    const m = new Metrics(true);
    m.bind({
      generation: () => 4,
      ready: () => true,
      services: () => 2,
      haproxyUp: () => true,
      consul: () => ({ openWatches: 5, connections: { watch: 6, request: 1 } }),
      fleet: async () => undefined,
    });
    m.applied({ generation: 4, kind: 'runtime', trigger: 't', durationMs: 3, at: '' }, [
      { source: 'api', ms: 12 },
      { source: 'consul-instances', ms: 30 },
    ]);
    m.apiRequest('reconfigure', 200, 0.02);
    m.apiRequest('nonsense', 404, 0.001);
    m.consulRequest('blocking', '2xx');
    const f = parsePrometheusText(await m.text());
    assert.equal(total(f, 'dfp_applies_total', { kind: 'runtime' }), 1);
    assert.equal(total(f, 'dfp_propagation_seconds', { trigger: 'api', kind: 'runtime' }, 'dfp_propagation_seconds_count'), 1);
    assert.equal(total(f, 'dfp_propagation_seconds', { trigger: 'consul-instances' }, 'dfp_propagation_seconds_sum'), 0.03);
    assert.equal(total(f, 'dfp_api_requests_total', { endpoint: 'other', outcome: 'client_error' }), 1);
    assert.equal(total(f, 'dfp_consul_requests_total', { kind: 'blocking', class: '2xx' }), 1);
    assert.equal(total(f, 'dfp_generation'), 4);
    assert.equal(total(f, 'dfp_consul_open_watches'), 5);
    assert.deepEqual([total(f, 'dfp_fleet_known'), total(f, 'dfp_fleet_in_agreement')], [0, 0], 'unknown fleet');
    assert.ok(f.has('process_cpu_user_seconds_total'), "the process's own metrics follow");
    assert.equal(f.get('dfp_propagation_seconds')?.type, 'histogram');
    assert.equal(m.recent.toArray()[0]?.propagation.length, 2);
  });
  it('with METRICS=false it keeps nothing but the recent applies', async () => {
    const m = new Metrics(false);
    m.applied({ generation: 1, kind: 'reload', trigger: 't', durationMs: 3, at: '' }, [{ source: 'api', ms: 1 }]);
    assert.equal((await m.registry.metrics()).trim(), '');
    assert.equal(m.recent.length, 1);
  });
});

describe('the strict Prometheus text parser', () => {
  const ok = '# HELP a_total A counter.\n# TYPE a_total counter\na_total{x="1",y="q\\"uote\\\\"} 3\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 4.5\nh_count 2\nb NaN\n';
  it('accepts valid text', () => {
    const f = parsePrometheusText(ok);
    assert.equal(f.get('a_total')?.samples[0]?.labels.y, 'q"uote\\');
    assert.equal(total(f, 'h', {}, 'h_count'), 2);
  });
  it('refuses what Prometheus would refuse', () => {
    for (const bad of [
      'a 1', // no final line feed
      'a{x=1} 1\n',
      'a{x="1"} one\n',
      'a{x="1"}1\n',
      '# TYPE a counter\na -1\n',
      'a 1\nb 1\na 2\n',
      'a 1\na 1\n',
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
      '# TYPE a gauge\n# TYPE a counter\na 1\n',
      'a{x="\\t"} 1\n',
    ]) {
      assert.throws(() => parsePrometheusText(bad), JSON.stringify(bad));
    }
  });
});

describe('the ring of recent applies', () => {
  it('keeps the last N, oldest first', () => {
    const r = new Ring<number>(3);
    for (let i = 1; i <= 5; i++) r.push(i);
    assert.deepEqual(r.toArray(), [3, 4, 5]);
    assert.equal(r.length, 3);
  });
});
