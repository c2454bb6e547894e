import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadSettings, type Settings } from '../../src/config/settings.js';
import { DfpError } from '../../src/errors.js';
import { renderSettings } from '../../src/proxy.js';
import { MAP_FILES, MAP_NAMES, renderConfig } from '../../src/render/haproxy-config.js';
import { envServices } from '../../src/sources/env-services.js';
import { spec } from '../../src/spec/defaults.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { tempDir } from '../helpers/harness.js';

/**
 * Hostile values in every environment variable the proxy reads: each one stops start-up with an
 * error naming the variable, or ends up in haproxy.cfg harmlessly (no line the operator did not
 * write, and HAProxy accepts the file). The list of variables is read from settings.ts itself, so
 * a new variable is covered the day it is added.
 */

const SOURCE = readFileSync(path.join(PROJECT_ROOT, 'src/config/settings.ts'), 'utf8');
const VARIABLES = [...new Set([...SOURCE.matchAll(/(?:env, |indirect\(|lookup\(env, )'([A-Z][A-Z0-9_]{1,})'/g)].map((m) => m[1] as string))].sort();

/** Raw HAProxy lines by design: the operator's own config, documented as such (configuration.md). */
const RAW_BY_DESIGN = new Set(['EXTRA_GLOBAL', 'EXTRA_FRONTEND']);
/** Read by the proxy's process, never written into haproxy.cfg (paths to binaries, the API's own). */
const NOT_IN_CONFIG = new Set(['CONSUL_BIN', 'HAPROXY_BIN', 'LOG_LEVEL']);

/** Valid companions a variable needs to be read at all (the stats page is off without both). */
const COMPANIONS: Record<string, Record<string, string>> = {
  STATS_USER: { STATS_PASS: 'pw' },
  STATS_PASS: { STATS_USER: 'admin' },
  STATS_URI: { STATS_USER: 'admin', STATS_PASS: 'pw' },
  API_USER: { API_PASSWORD: 'pw' },
  API_PASSWORD: { API_USER: 'admin' },
};

const HOSTILE = [
  '\nbackend evil\n    server evil 1.2.3.4:80',
  'x\r\nglobal evil',
  'x # evil',
  '"evil"',
  "'evil'",
  'a\\',
  '\u0000',
  ' ',
  '$HOME',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: HAProxy's env expansion, as a hostile value
  '${HOME}',
  '%[env(HOME)]',
  '-f /etc/shadow',
  'x'.repeat(5000),
  'http://evil/\nbackend evil',
];

const INJECTED = /^\s*(backend|frontend|listen|global|defaults|userlist|server|user|resolvers|nameserver) +evil/m;

function render(settings: Settings, dir: string): string {
  const r = renderConfig({ ...renderSettings(settings, path.join(dir, 'admin.sock')), mapDir: dir }, [
    { spec: spec({ serviceName: 'web', destinations: [{ servicePath: ['/web'], port: 80 }] }), instances: [{ id: 'w1', address: '127.0.0.1', port: 9 }] },
    { spec: spec({ serviceName: 'db', destinations: [{ reqMode: 'tcp', servicePath: [], srcPort: 25432, port: 5432 }] }), instances: [] },
    { spec: spec({ serviceName: 'named', discoveryType: 'dns', destinations: [{ servicePath: ['/named'], port: 80 }] }), instances: [] },
  ]);
  for (const m of MAP_NAMES) writeFileSync(path.join(dir, MAP_FILES[m]), r.maps[m]);
  writeFileSync(path.join(dir, 'haproxy.cfg'), r.config);
  writeFileSync(path.join(dir, 'credentials.cfg'), r.secrets);
  return `${r.config}\n${r.secrets}`;
}

function haproxyCheck(dir: string): string | undefined {
  try {
    execFileSync(process.env.HAPROXY_BIN ?? 'haproxy', ['-c', '-f', path.join(dir, 'haproxy.cfg'), '-f', path.join(dir, 'credentials.cfg')], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return String((err as { stderr?: Buffer }).stderr ?? err);
  }
}

describe('hostile environment variables', () => {
  it('the list read from settings.ts holds the variables of every release so far', () => {
    for (const v of ['PORT', 'DEFAULT_PORTS', 'RESOLVERS', 'DISCOVERY', 'DEBUG_HTTP_FORMAT', 'CAPTURE_REQUEST_HEADER', 'HARD_STOP_AFTER', 'LISTENER_ADDRESS', 'STATS_USER', 'TIMEOUT_TUNNEL']) {
      assert.ok(VARIABLES.includes(v), `${v} missing from ${VARIABLES.join(' ')}`);
    }
  });

  it('every variable: a start-up error naming it, or rendered harmlessly and accepted by HAProxy', (t) => {
    const base = { STATE_DIR: '/var/lib/dfp', SECRETS_DIR: '/nonexistent/secrets' };
    let refused = 0;
    const accepted: string[] = [];
    const failures: string[] = [];
    for (const variable of VARIABLES) {
      if (RAW_BY_DESIGN.has(variable)) continue;
      for (const value of HOSTILE) {
        let settings: Settings;
        try {
          settings = loadSettings({ ...base, ...COMPANIONS[variable], [variable]: value });
        } catch (err) {
          assert.ok(err instanceof DfpError && err.code === 'DFP_ERR_SETTINGS', `${variable}=${JSON.stringify(value)}: ${String(err)}`);
          assert.equal(err.parameter, variable, `${variable}=${JSON.stringify(value)}: ${err.message}`);
          refused++;
          continue;
        }
        const dir = tempDir();
        const text = render(settings, dir);
        assert.doesNotMatch(text, INJECTED, `${variable}=${JSON.stringify(value.slice(0, 30))} injected a line`);
        if (NOT_IN_CONFIG.has(variable)) continue;
        // Values that made it into the config: HAProxy must read the file as we meant it.
        if (text.includes(value.trim()) && value.trim() !== '') {
          const problem = haproxyCheck(dir);
          if (problem !== undefined) failures.push(`${variable}=${JSON.stringify(value.slice(0, 30))}: haproxy -c: ${problem.slice(0, 300)}`);
        }
        accepted.push(`${variable}=${JSON.stringify(value.slice(0, 20))}`);
      }
    }
    t.diagnostic(`${VARIABLES.length} variables, ${refused} values refused, ${accepted.length} rendered and checked`);
    assert.deepEqual(failures, []);
    assert.ok(refused > accepted.length * 3, `${refused} refused, ${accepted.length} accepted: ${accepted.join(', ')}`);
  });

  it('DFP_SERVICE_* variables: a start-up error naming the variable', () => {
    const names = ['SERVICE_NAME', 'SERVICE_PATH', 'SERVICE_DOMAIN', 'PORT', 'REQ_MODE', 'SRC_PORT', 'OUTBOUND_HOSTNAME', 'DISCOVERY_TYPE', 'ADD_REQ_HEADER', 'USERS', 'TIMEOUT_SERVER'];
    let refused = 0;
    for (const name of names) {
      for (const value of HOSTILE) {
        const env: Record<string, string> = { DFP_SERVICE_SERVICE_NAME: 'envsvc', DFP_SERVICE_SERVICE_PATH: '/env', DFP_SERVICE_PORT: '80', [`DFP_SERVICE_${name}`]: value };
        try {
          const [svc] = envServices(env, { separator: ',' });
          // Accepted only if harmless: rendered and checked like any other spec.
          const dir = tempDir();
          const settings = loadSettings({ STATE_DIR: '/var/lib/dfp', SECRETS_DIR: '/nonexistent/secrets' });
          const r = renderConfig({ ...renderSettings(settings, path.join(dir, 'admin.sock')), mapDir: dir }, svc ? [{ spec: svc.spec, instances: [] }] : []);
          assert.doesNotMatch(`${r.config}\n${r.secrets}`, INJECTED, `DFP_SERVICE_${name}=${JSON.stringify(value)} injected a line`);
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err;
          assert.ok(err instanceof DfpError, `DFP_SERVICE_${name}=${JSON.stringify(value)}: ${String(err)}`);
          assert.equal(err.parameter, `DFP_SERVICE_${name}`, `DFP_SERVICE_${name}=${JSON.stringify(value)}: ${err.message}`);
          refused++;
        }
      }
    }
    assert.ok(refused >= names.length * (HOSTILE.length - 3), `only ${refused} refused`);
  });
});
