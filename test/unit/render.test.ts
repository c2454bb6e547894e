import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { MAP_FILES, MAP_NAMES, type RenderedConfig, type RenderSettings, renderConfig } from '../../src/render/haproxy-config.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { spec } from '../../src/spec/defaults.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { loadSettings } from '../../src/config/settings.js';
import { renderSettings } from '../../src/proxy.js';
import { tempDir } from '../helpers/harness.js';

/**
 * Golden files: the renderer's output for fixed inputs, byte for byte. Set UPDATE_GOLDEN=1 to
 * rewrite them after an intended change, then review the diff like code.
 */
const GOLDEN_DIR = path.join(PROJECT_ROOT, 'test/golden');

const SETTINGS: RenderSettings = defaultRenderSettings();

const inst = (id: string, port: number, address = '10.0.1.11') => ({ id, address, port });

const FIXTURES: Record<string, { settings?: Partial<RenderSettings>; services: ServiceState[] }> = {
  empty: { services: [] },
  walkthrough: {
    services: [
      {
        spec: spec({ serviceName: 'books-ms', skipCheck: false, destinations: [{ servicePath: ['/api/v1/books'], pathType: 'path_beg' }] }),
        instances: [inst('node-b:books-ms.1:8080', 32771, '10.0.1.12'), inst('node-a:books-ms.0:8080', 32768), inst('node-c:books-ms.2:8080', 32770, '10.0.1.13')],
      },
    ],
  },
  mixed: {
    settings: { listeners: [{ port: 80, ssl: false, options: '' }, { port: 8080, ssl: false, options: '' }], connectionMode: 'http-server-close', debug: true },
    services: [
      {
        spec: spec({ serviceName: 'web', skipCheck: false, destinations: [{ servicePath: ['/'], pathType: 'path_beg' }] }),
        instances: [inst('h:web.0:80', 31000)],
      },
      {
        spec: spec({ serviceName: 'acme', skipCheck: true, destinations: [{ servicePath: ['/.well-known/acme-challenge'], pathType: 'path_beg' }] }),
        instances: [inst('h:acme.0:80', 31001, 'fd00::5')],
      },
      {
        spec: spec({
          serviceName: 'api',
          serviceColor: 'blue',
          destinations: [
            { index: 1, servicePath: ['/api/v1', '/api/v2'], pathType: 'path_beg', port: 8080 },
            { index: 2, servicePath: ['/health'], pathType: 'path', port: 8081 },
          ],
        }),
        instances: [inst('h:api.0:8080', 31002)],
      },
      {
        spec: spec({ serviceName: 'items', destinations: [{ servicePath: ['^/v[0-9]+/items'], pathType: 'path_reg' }] }),
        instances: [],
      },
      {
        spec: spec({ serviceName: 'json', skipCheck: false, destinations: [{ servicePath: ['.json'], pathType: 'path_end' }] }),
        instances: [inst('h:json.0:80', 31003)],
      },
      {
        // Claims /api/v1 too, but orders after `api`: the first by aclName wins, as in the original.
        spec: spec({ serviceName: 'zz-api', skipCheck: false, destinations: [{ servicePath: ['/api/v1', '/zz'], pathType: 'path_beg' }] }),
        instances: [inst('h:zz.0:80', 31004)],
      },
    ],
  },
  http: {
    settings: { users: ['admin:pw'], httpsOnly: false, crtList: '/var/lib/dfp/crt-list.txt', extraFrontend: ['capture request header Host len 40'] },
    services: [
      {
        // Two services on / under different domains, a wildcard, a redirect and an exclusion.
        spec: spec({ serviceName: 'shop', users: ['ops:s3cret'], destinations: [{ servicePath: ['/'], serviceDomain: ['shop.a.com'], redirectFromDomain: ['old.shop.a.com'] }] }),
        instances: [inst('h:shop.0:80', 31010)],
      },
      {
        spec: spec({
          serviceName: 'blog',
          serviceDomainAlgo: 'hdr(host)',
          addReqHeader: ['X-Seen yes'],
          setResHeader: ['X-Frame-Options "DENY" $x'],
          delReqHeader: ['X-Debug'],
          destinations: [{ servicePath: ['/'], serviceDomain: ['blog.a.com', '*.blog.b.com'], httpsOnly: true, httpsRedirectCode: 301, servicePathExclude: ['/admin'] }],
        }),
        instances: [inst('h:blog.0:80', 31011)],
      },
      {
        spec: spec({
          serviceName: 'app',
          sessionType: 'sticky-server',
          connectionMode: 'http-server-close',
          isDefaultBackend: true,
          destinations: [
            { index: 1, servicePath: ['/app'], userAgent: ['iPhone', 'Mobile Safari'], allowedMethods: ['GET', 'HEAD'] },
            { index: 2, servicePath: ['/app'], reqPathSearchReplace: ['^/app/(.*),/\\1'], timeoutServer: 60, deniedMethods: ['DELETE'], ignoreAuthorization: true },
            { index: 3, servicePath: ['/hdr'], serviceHeader: ['X-Version:2'], srcPort: 80, denyHttp: true, sslVerifyNone: true },
          ],
        }),
        instances: [inst('h:app.0:80', 31012), inst('h:app.1:80', 31013)],
      },
    ],
  },
  // STATS_*: the page on frontend services (its section in credentials.cfg, never in haproxy.cfg) ...
  'https-port': {
    settings: { listeners: [{ port: 80, ssl: false, options: '' }, { port: 443, ssl: true, options: '' }], crtList: '/var/lib/dfp/crt-list.txt' },
    services: [
      {
        // httpsPort: a second backend for requests on srcHttpsPort, same routes and instances.
        spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/web'], port: 8080, httpsPort: 8443, srcPort: 80, srcHttpsPort: 443, sslVerifyNone: true }] }),
        instances: [inst('h:web.0:8080', 31020)],
      },
    ],
  },
  tcp: {
    services: [
      {
        // reqMode=tcp: a frontend of its own per srcPort; next to an http destination of the same service.
        spec: spec({
          serviceName: 'redis',
          destinations: [
            { index: 1, reqMode: 'tcp', servicePath: [], srcPort: 6379, port: 6379, timeoutClient: 600, clitcpka: true, checkTcp: true },
            { index: 2, servicePath: ['/redis-ui'] },
          ],
        }),
        instances: [inst('h:redis.0:6379', 32000)],
      },
      { spec: spec({ serviceName: 'pg', skipCheck: true, destinations: [{ reqMode: 'tcp', servicePath: [], srcPort: 5432 }] }), instances: [inst('h:pg.0:5432', 32001)] },
    ],
  },
  logging: {
    // DEBUG with the original's logging variables: errors only, custom formats, captured headers.
    settings: {
      debug: true,
      requestLog: { errorsOnly: true, httpFormat: '%ci:%cp [%tr] %ft %b/%s %ST %B %{+Q}r %hr', tcpFormat: '%ci:%cp [%t] %ft %b/%s %B', captureRequestHeaders: [{ name: 'Host', len: 15 }, { name: 'X-Forwarded-For', len: 20 }] },
    },
    services: [
      { spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/web'] }] }), instances: [inst('h:web.0:80', 31030)] },
      { spec: spec({ serviceName: 'db', destinations: [{ reqMode: 'tcp', servicePath: [], srcPort: 5432 }] }), instances: [inst('h:db.0:5432', 31031)] },
    ],
  },
  stats: {
    settings: { stats: { uri: '/admin?stats', port: undefined, auth: { user: 'admin', pass: 'pa$$word!' } } },
    services: [{ spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/'], pathType: 'path_beg' }] }), instances: [inst('h:web.0:80', 31000)] }],
  },
  // ... and on a port of its own, without auth.
  'stats-port': {
    settings: { stats: { uri: '/stats', port: 9000, auth: undefined } },
    services: [],
  },
  // PROMETHEUS_PORT: HAProxy's exporter on a frontend of its own.
  prometheus: {
    settings: { prometheusPort: 9101 },
    services: [{ spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/'] }] }), instances: [inst('h:web.0:80', 31000)] }],
  },
};

function serialise(r: RenderedConfig): string {
  const maps = MAP_NAMES.filter((m) => r.maps[m] !== '').map((m) => `### ${MAP_FILES[m]}\n${r.maps[m]}`);
  return `${r.config}\n${maps.join('')}### credentials.cfg\n${r.secrets}\n### conflicts\n${r.conflicts.map((c) => `${c.route} ${c.winner} > ${c.loser}\n`).join('')}`;
}

describe('renderer golden files', () => {
  for (const [name, fixture] of Object.entries(FIXTURES)) {
    it(`${name} matches test/golden/${name}.cfg`, () => {
      const out = serialise(renderConfig({ ...SETTINGS, ...fixture.settings }, fixture.services));
      const file = path.join(GOLDEN_DIR, `${name}.cfg`);
      if (process.env.UPDATE_GOLDEN === '1' || !existsSync(file)) {
        if (process.env.CI === 'true' && !existsSync(file)) assert.fail(`golden file ${file} is missing`);
        mkdirSync(GOLDEN_DIR, { recursive: true });
        writeFileSync(file, out);
      }
      assert.equal(out, readFileSync(file, 'utf8'));
    });
  }

  it('is pure: the same input renders byte-identical output, whatever the input order', () => {
    const services = FIXTURES.mixed?.services ?? [];
    const a = renderConfig(SETTINGS, services);
    const b = renderConfig(SETTINGS, [...services].reverse().map((s) => ({ ...s, instances: [...s.instances].reverse() })));
    assert.equal(serialise(a), serialise(b));
  });

  it('regression: web (port 8080) and web80 (port 80) no longer share an ACL name', () => {
    // The original's url_<aclName><port>_<index> named both url_web8080_0; HAProxy ORs same-named ACLs.
    const r = renderConfig(SETTINGS, [
      { spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['.json'], pathType: 'path_end', port: 8080 }] }), instances: [] },
      { spec: spec({ serviceName: 'web80', destinations: [{ servicePath: ['.xml'], pathType: 'path_end', port: 80 }] }), instances: [] },
    ]);
    const names = [...r.config.matchAll(/^\s+acl (\S+)/gm)].map((m) => m[1]);
    assert.deepEqual(names, ['url_web-be8080_0', 'url_web80-be80_0']);
    assert.equal(new Set(names).size, names.length);
  });

  it('discoveryType=dns: the registry name (with its colour) on port, resolved by HAProxy; Consul instances ignored', () => {
    const r = renderConfig(SETTINGS, [
      {
        spec: spec({ serviceName: 'stack_web', serviceColor: 'blue', discoveryType: 'dns', destinations: [{ servicePath: ['/w'], port: 8080 }] }),
        instances: [{ id: 'consul-1', address: '127.0.0.9', port: 9 }],
      },
    ]);
    assert.match(r.config, /^ {4}server-template s 1-\d+ stack_web-blue:8080 resolvers dfp resolve-prefer ipv4 init-addr none check$/m);
    assert.doesNotMatch(r.config, /127\.0\.0\.9/);
    assert.match(r.config, /^resolvers dfp$/m);
  });

  it('pattern routes with a domain follow SERVICE_DOMAIN_ALGO unless the service sets its own', () => {
    const r = renderConfig({ ...SETTINGS, serviceDomainAlgo: 'hdr(host)' }, [
      { spec: spec({ serviceName: 'reg', destinations: [{ servicePath: ['^/r/'], pathType: 'path_reg', serviceDomain: ['r.com'] }] }), instances: [] },
      { spec: spec({ serviceName: 'own', serviceDomainAlgo: 'hdr_beg(host)', destinations: [{ servicePath: ['.xml'], pathType: 'path_end', serviceDomain: ['o.com'] }] }), instances: [] },
    ]);
    assert.match(r.config, /^ {4}acl domain_reg-be_0 var\(txn\.dfp_host\) -m str -- r\.com$/m);
    assert.match(r.config, /^ {4}acl domain_own-be_0 var\(txn\.dfp_host\) -m beg -- o\.com$/m);
  });

  it('the frontend looks up only the kinds of routes in use, plus those the allocation keeps', () => {
    const wild = { spec: spec({ serviceName: 'w', destinations: [{ servicePath: ['/'], serviceDomain: ['*.w.com'] }] }), instances: [] };
    const plain = { spec: spec({ serviceName: 'p', destinations: [{ servicePath: ['/p'] }] }), instances: [] };
    const wildLines = (c: RenderedConfig) => c.config.split('\n').filter((l) => l.includes(MAP_FILES.hostsWild));
    const both = renderConfig(SETTINGS, [wild, plain]);
    assert.equal(wildLines(both).length, 3, 'one lookup per wildcard depth');
    assert.ok(both.lookups.includes('hostsWild') && both.lookups.includes('pathPrefix'), both.lookups.join(' '));
    const alone = renderConfig(SETTINGS, [plain]);
    assert.deepEqual(wildLines(alone), []);
    assert.doesNotMatch(alone.config, /dfp_flags|dfp_redirect|hosts-exact|routes-exclude/);
    // A change applied at run time keeps the live config's lookups: the frontend is unchanged, no reload.
    const kept = renderConfig(SETTINGS, [plain], { names: new Map(), spares: [], retired: [], slots: new Map(), lookups: both.lookups });
    assert.equal(kept.config.split('\n').filter((l) => l.startsWith('    http-request')).join('\n'), both.config.split('\n').filter((l) => l.startsWith('    http-request')).join('\n'));
  });

  it('old workers drain for TIMEOUT_TUNNEL unless HARD_STOP_AFTER says otherwise; WORKER_MAX_RELOADS bounds them', () => {
    const drainLines = (env: Record<string, string>) => {
      const settings = loadSettings({ STATE_DIR: '/var/lib/dfp', SECRETS_DIR: '/nonexistent/secrets', ...env });
      const r = renderConfig({ ...renderSettings(settings, '/var/lib/dfp/haproxy-admin.sock'), mapDir: '/var/lib/dfp' }, []);
      return r.config.split('\n').filter((l) => /hard-stop-after|mworker-max-reloads/.test(l));
    };
    assert.deepEqual(drainLines({}), ['    hard-stop-after 3600s', '    mworker-max-reloads 10']);
    assert.deepEqual(drainLines({ TIMEOUT_TUNNEL: '120' }), ['    hard-stop-after 120s', '    mworker-max-reloads 10']);
    assert.deepEqual(drainLines({ TIMEOUT_TUNNEL: '120', HARD_STOP_AFTER: '30', WORKER_MAX_RELOADS: '3' }), ['    hard-stop-after 30s', '    mworker-max-reloads 3']);
    assert.throws(() => loadSettings({ STATE_DIR: '/var/lib/dfp', HARD_STOP_AFTER: '0' }), /HARD_STOP_AFTER/);
  });

  it('SNI: a more specific wildcard wins whatever the service order; a shared TLS port keeps its TLS bind options where TLS ends', () => {
    const settings = { ...SETTINGS, listeners: [{ port: 443, ssl: true, options: 'accept-proxy ssl-min-ver TLSv1.2' }], crtList: '/var/lib/dfp/crt-list.txt' };
    const r = renderConfig(settings, [
      { spec: spec({ serviceName: 'broad', destinations: [{ reqMode: 'sni', servicePath: [], srcPort: 443, serviceDomain: ['*.a.com'] }] }), instances: [] },
      { spec: spec({ serviceName: 'narrow', destinations: [{ reqMode: 'sni', servicePath: [], srcPort: 443, serviceDomain: ['*.b.a.com', 'x.a.com'] }] }), instances: [] },
    ]);
    const rules = r.config.split('\n').filter((l) => l.includes('req_ssl_sni'));
    assert.deepEqual(rules, [
      '    use_backend narrow-be_0 if { req_ssl_sni -i x.a.com }',
      '    use_backend narrow-be_0 if { req_ssl_sni -m end -i .b.a.com }',
      '    use_backend broad-be_0 if { req_ssl_sni -m end -i .a.com }',
    ]);
    assert.match(r.config, /^ {4}bind \*:443 accept-proxy$/m);
    assert.match(r.config, /^ {4}bind abns@dfp-tls-443 accept-proxy ssl crt-list \/var\/lib\/dfp\/crt-list\.txt alpn h2,http\/1\.1 ssl-min-ver TLSv1\.2$/m);
  });

  it('every golden config passes haproxy -c', () => {
    for (const [name, fixture] of Object.entries(FIXTURES)) {
      const dir = tempDir();
      let crtList: string | undefined;
      if (fixture.settings?.crtList) {
        // A real certificate: HAProxy loads the crt-list while checking.
        const pem = path.join(dir, 'a.pem');
        execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=shop.a.com', '-days', '2', '-keyout', pem, '-out', `${pem}.crt`], { stdio: 'pipe' });
        writeFileSync(pem, readFileSync(`${pem}.crt`, 'utf8') + readFileSync(pem, 'utf8'));
        crtList = path.join(dir, 'crt-list.txt');
        writeFileSync(crtList, `${pem}\n`);
      }
      const r = renderConfig({ ...SETTINGS, ...fixture.settings, ...(crtList ? { crtList } : {}), mapDir: dir, adminSocket: path.join(dir, 'admin.sock') }, fixture.services);
      for (const m of MAP_NAMES) writeFileSync(path.join(dir, MAP_FILES[m]), r.maps[m]);
      writeFileSync(path.join(dir, 'haproxy.cfg'), r.config);
      writeFileSync(path.join(dir, 'credentials.cfg'), r.secrets);
      try {
        execFileSync(process.env.HAPROXY_BIN ?? 'haproxy', ['-c', '-f', path.join(dir, 'haproxy.cfg'), '-f', path.join(dir, 'credentials.cfg')], { stdio: 'pipe' });
      } catch (err) {
        assert.fail(`${name}: haproxy -c failed: ${String((err as { stderr?: Buffer }).stderr ?? err)}`);
      }
    }
  });
});
