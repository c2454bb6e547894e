import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { MAP_FILES, type RenderedConfig, type RenderSettings, renderConfig, type ServiceState, serverName } from '../../src/render/haproxy-config.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { tempDir } from '../helpers/harness.js';

/**
 * Golden files: the renderer's output for fixed inputs, byte for byte. Set UPDATE_GOLDEN=1 to
 * rewrite them after an intended change, then review the diff like code.
 */
const GOLDEN_DIR = path.join(PROJECT_ROOT, 'test/golden');

const SETTINGS: RenderSettings = {
  bindPorts: [80],
  timeouts: { connect: 5, client: 20, server: 20, queue: 30, tunnel: 3600, httpRequest: 5, httpKeepAlive: 15 },
  connectionMode: 'http-keep-alive',
  maxconn: 4000,
  debug: false,
  adminSocket: '/var/lib/dfp/haproxy-admin.sock',
  mapDir: '/var/lib/dfp',
};

const inst = (id: string, port: number, address = '10.0.1.11') => ({ id, address, port });

const FIXTURES: Record<string, { settings?: Partial<RenderSettings>; services: ServiceState[] }> = {
  empty: { services: [] },
  walkthrough: {
    services: [
      {
        spec: { serviceName: 'books-ms', aclName: 'books-ms', skipCheck: false, destinations: [{ index: 0, servicePath: ['/api/v1/books'], pathType: 'path_beg', reqMode: 'http' }] },
        instances: [inst('node-b:books-ms.1:8080', 32771, '10.0.1.12'), inst('node-a:books-ms.0:8080', 32768), inst('node-c:books-ms.2:8080', 32770, '10.0.1.13')],
      },
    ],
  },
  mixed: {
    settings: { bindPorts: [80, 8080], connectionMode: 'http-server-close', debug: true },
    services: [
      {
        spec: { serviceName: 'web', aclName: 'web', skipCheck: false, destinations: [{ index: 0, servicePath: ['/'], pathType: 'path_beg', reqMode: 'http' }] },
        instances: [inst('h:web.0:80', 31000)],
      },
      {
        spec: { serviceName: 'acme', aclName: 'acme', skipCheck: true, destinations: [{ index: 0, servicePath: ['/.well-known/acme-challenge'], pathType: 'path_beg', reqMode: 'http' }] },
        instances: [inst('h:acme.0:80', 31001, 'fd00::5')],
      },
      {
        spec: {
          serviceName: 'api',
          aclName: 'api',
          serviceColor: 'blue',
          skipCheck: false,
          destinations: [
            { index: 1, servicePath: ['/api/v1', '/api/v2'], pathType: 'path_beg', port: 8080, reqMode: 'http' },
            { index: 2, servicePath: ['/health'], pathType: 'path', port: 8081, reqMode: 'http' },
          ],
        },
        instances: [inst('h:api.0:8080', 31002)],
      },
      {
        spec: { serviceName: 'items', aclName: 'items', skipCheck: false, destinations: [{ index: 0, servicePath: ['^/v[0-9]+/items'], pathType: 'path_reg', reqMode: 'http' }] },
        instances: [],
      },
      {
        spec: { serviceName: 'json', aclName: 'json', skipCheck: false, destinations: [{ index: 0, servicePath: ['.json'], pathType: 'path_end', reqMode: 'http' }] },
        instances: [inst('h:json.0:80', 31003)],
      },
      {
        // Claims /api/v1 too, but orders after `api`: the first by aclName wins, as in the original.
        spec: { serviceName: 'zz-api', aclName: 'zz-api', skipCheck: false, destinations: [{ index: 0, servicePath: ['/api/v1', '/zz'], pathType: 'path_beg', reqMode: 'http' }] },
        instances: [inst('h:zz.0:80', 31004)],
      },
    ],
  },
};

function serialise(r: RenderedConfig): string {
  return `${r.config}\n### ${MAP_FILES.exact}\n${r.maps.exact}### ${MAP_FILES.prefix}\n${r.maps.prefix}### conflicts\n${r.conflicts.map((c) => `${c.route} ${c.winner} > ${c.loser}\n`).join('')}`;
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

  it('server names are stable, unique and safe for HAProxy', () => {
    const a = serverName({ id: 'host1:go-demo.0:8080' });
    assert.equal(a, serverName({ id: 'host1:go-demo.0:8080' }));
    assert.notEqual(a, serverName({ id: 'host1:go-demo.0:8081' }));
    assert.match(a, /^[A-Za-z0-9._-]+$/);
    assert.match(serverName({ id: 'x y#"\n' }), /^[A-Za-z0-9._-]+$/);
    assert.notEqual(serverName({ id: 'a b' }), serverName({ id: 'a_b' }));
  });

  it('every golden config passes haproxy -c', () => {
    for (const [name, fixture] of Object.entries(FIXTURES)) {
      const dir = tempDir();
      const r = renderConfig({ ...SETTINGS, ...fixture.settings, mapDir: dir, adminSocket: path.join(dir, 'admin.sock') }, fixture.services);
      writeFileSync(path.join(dir, MAP_FILES.exact), r.maps.exact);
      writeFileSync(path.join(dir, MAP_FILES.prefix), r.maps.prefix);
      writeFileSync(path.join(dir, 'haproxy.cfg'), r.config);
      try {
        execFileSync(process.env.HAPROXY_BIN ?? 'haproxy', ['-c', '-f', path.join(dir, 'haproxy.cfg')], { stdio: 'pipe' });
      } catch (err) {
        assert.fail(`${name}: haproxy -c failed: ${String((err as { stderr?: Buffer }).stderr ?? err)}`);
      }
    }
  });
});
