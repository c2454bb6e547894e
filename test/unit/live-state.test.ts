import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { canonicalAllocation, runtimeAllocation } from '../../src/apply/plan.js';
import { certificatesFingerprint, LiveState, settingsHash } from '../../src/apply/live-state.js';
import { loadSettings } from '../../src/config/settings.js';
import { loadsConfig } from '../../src/haproxy/process.js';
import { renderSettings } from '../../src/proxy.js';
import { type BackendAllocation, MAP_FILES, MAP_NAMES } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { tempDir } from '../helpers/harness.js';

/** What a run leaves in STATE_DIR for the next one to take HAProxy over (apply/live-state.ts). */
describe('the record of what HAProxy serves', () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const dir = () => {
    const d = tempDir();
    dirs.push(d);
    return d;
  };
  const stateOf = (d: string) => new LiveState({ stateDir: d, config: path.join(d, 'haproxy.cfg'), secrets: path.join(d, 'credentials.cfg') });
  const service = (name: string, ids: string[]): ServiceState => ({
    spec: spec({ serviceName: name, destinations: [{ servicePath: [`/${name}`], port: 8080 }] }),
    instances: ids.map((id, i) => ({ id, address: '10.0.0.1', port: 9000 + i })),
  });

  it('keeps an allocation exactly: names, spares, retired backends, slot tables with free slots, kept lookups', () => {
    const d = dir();
    const canonical = canonicalAllocation([service('a', ['a1', 'a2']), service('b', ['b1'])], 2, 4);
    const runtime = runtimeAllocation(canonical, [service('a', ['a2', 'a3']), service('c', ['c1'])], 4);
    assert.ok(typeof runtime !== 'string');
    const allocation: BackendAllocation = { ...runtime, lookups: ['prefix', 'exact'] };
    assert.ok(allocation.spares.length > 0 && allocation.retired.length > 0, 'a spare taken and a backend retired');
    stateOf(d).markServed('h1', 's1', allocation);
    const back = stateOf(d).readRecord();
    assert.deepEqual(back, { hash: 'h1', settings: 's1', allocation });
    assert.equal(statSync(path.join(d, 'haproxy-live.json')).mode & 0o777, 0o600);
  });

  it('keeps whether the spares carry checks; a record from before the field reads as checks (what that version rendered)', () => {
    const d = dir();
    const skipping = (name: string): ServiceState => ({ ...service(name, [`${name}1`]), spec: { ...service(name, []).spec, skipCheck: true } });
    const allocation = canonicalAllocation([skipping('a'), skipping('b')], 2, 4);
    assert.equal(allocation.spareChecks, false);
    stateOf(d).markServed('h1', 's1', allocation);
    assert.deepEqual(stateOf(d).readRecord()?.allocation, allocation);
    const file = path.join(d, 'haproxy-live.json');
    const raw = JSON.parse(readFileSync(file, 'utf8')) as { allocation: Record<string, unknown> };
    delete raw.allocation.spareChecks;
    writeFileSync(file, JSON.stringify(raw));
    assert.equal(stateOf(d).readRecord()?.allocation.spareChecks ?? true, true);
  });

  it('marks runtime commands ahead of the files until the files are served again; an unreadable record is none', () => {
    const d = dir();
    const live = stateOf(d);
    const allocation = canonicalAllocation([], 1, 4);
    live.markServed('h1', 's', allocation);
    assert.equal(live.pendingRuntime(), false);
    live.markRuntimePending();
    assert.equal(stateOf(d).pendingRuntime(), true, 'seen by the next run');
    live.markServed('h2', 's', allocation);
    assert.equal(stateOf(d).pendingRuntime(), false);
    assert.equal(stateOf(d).readRecord()?.hash, 'h2');
    writeFileSync(path.join(d, 'haproxy-live.json'), '{"version":1,"hash":"x","settings":"s","allocation":{"names":[[1,2]]}}');
    assert.equal(stateOf(d).readRecord(), undefined);
    writeFileSync(path.join(d, 'haproxy-live.json'), 'not json');
    assert.equal(stateOf(d).readRecord(), undefined);
  });

  it('reads the live files only when all are there', () => {
    const d = dir();
    const live = stateOf(d);
    assert.equal(live.readFiles(), undefined);
    writeFileSync(path.join(d, 'haproxy.cfg'), 'global\n');
    writeFileSync(path.join(d, 'credentials.cfg'), '# none\n');
    for (const m of MAP_NAMES.slice(1)) writeFileSync(path.join(d, MAP_FILES[m]), '');
    assert.equal(live.readFiles(), undefined, 'a map file missing');
    writeFileSync(path.join(d, MAP_FILES[MAP_NAMES[0] ?? 'prefix']), '/a a-be8080_0\n');
    assert.equal(live.readFiles()?.config, 'global\n');
  });

  it('hashes the settings that shape the files, not the certificate list', () => {
    const s = (env: Record<string, string>) => renderSettings(loadSettings({ STATE_DIR: '/tmp/dfp-test-x', SECRETS_DIR: '/nonexistent', ...env }), '/tmp/dfp-test-x/a.sock');
    const base = s({ DEFAULT_PORTS: '8000' });
    assert.equal(settingsHash(base), settingsHash(s({ DEFAULT_PORTS: '8000' })));
    assert.equal(settingsHash({ ...base, crtList: '/tmp/dfp-test-x/crt-list.txt' }), settingsHash(base));
    assert.notEqual(settingsHash(s({ DEFAULT_PORTS: '8001' })), settingsHash(base));
    assert.notEqual(settingsHash(s({ DEFAULT_PORTS: '8000', USERS: 'u:p' })), settingsHash(base));
    assert.notEqual(settingsHash(s({ DEFAULT_PORTS: '8000', TIMEOUT_CONNECT: '7' })), settingsHash(base));
  });

  it('fingerprints the crt-list a config names and every file in it', () => {
    const d = dir();
    const list = path.join(d, 'crt-list.txt');
    const pem = path.join(d, 'a.pem');
    writeFileSync(pem, 'one');
    writeFileSync(list, `${pem} [alpn h2]\n`);
    const config = `frontend services\n    bind *:443 ssl crt-list ${list} alpn h2\n`;
    const first = certificatesFingerprint(config);
    assert.equal(certificatesFingerprint(config), first);
    writeFileSync(pem, 'two');
    assert.notEqual(certificatesFingerprint(config), first, 'a certificate changed');
    writeFileSync(pem, 'one');
    assert.equal(certificatesFingerprint(config), first);
    rmSync(pem);
    assert.notEqual(certificatesFingerprint(config), first, 'a certificate gone');
    assert.equal(certificatesFingerprint('frontend services\n    bind *:80\n'), '', 'no TLS bind');
    assert.ok(!existsSync(pem));
    assert.ok(readFileSync(list, 'utf8').length > 0);
  });
});

describe('is this HAProxy master ours', () => {
  const config = '/var/lib/dfp/haproxy.cfg';
  it('a master-worker HAProxy loading this config, before and after a reload', () => {
    assert.ok(loadsConfig(['haproxy', '-W', '-S', '/var/lib/dfp/haproxy-master.sock,mode,600', '-f', config, '-f', '/var/lib/dfp/credentials.cfg'], config));
    assert.ok(loadsConfig(['/usr/sbin/haproxy', '-sf', '123', '-x', 'sockpair@4', '-W', '-S', 'm.sock', '-f', config, '-f', 'c.cfg'], config));
  });
  it('not another directory, not a process that merely names the file, not an unreadable one', () => {
    assert.ok(!loadsConfig(['haproxy', '-W', '-f', '/var/lib/other/haproxy.cfg'], config));
    assert.ok(!loadsConfig(['vi', config], config));
    assert.ok(!loadsConfig(['haproxy', '-c', '-f', config], config), 'a config check, not a master');
    assert.ok(!loadsConfig(['sleep', '60'], config));
    assert.ok(!loadsConfig(undefined, config));
  });
});
