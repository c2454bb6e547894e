import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { spec as makeSpec } from '../../src/spec/defaults.js';
import { loadSettings } from '../../src/config/settings.js';
import type { ConsulClient } from '../../src/consul/client.js';
import { ConsulInstanceSource } from '../../src/consul/instances.js';
import { createLogger } from '../../src/util/log.js';
import { IdleGc } from '../../src/util/idle-gc.js';
import { DfpError } from '../../src/errors.js';
import { parseShowProc } from '../../src/haproxy/socket.js';
import { EMPTY_STATE, serviceStates, withInstances, withoutService, withService } from '../../src/state/desired-state.js';
import type { ServiceSpec } from '../../src/spec/types.js';

describe('show proc parsing', () => {
  it('reads master, failed counter, workers and old workers', () => {
    const text = [
      '#<PID>          <type>          <reloads>       <uptime>        <version>',
      '3012            master          3 [failed: 1]   0d00h05m12s     2.6.12-1+deb12u4',
      '# workers',
      '3050            worker          1               0d00h04m40s     2.6.12-1+deb12u4',
      '# old workers',
      '3049            worker          2               0d00h05m00s     2.6.12-1+deb12u4',
      '# programs',
      '',
    ].join('\n');
    assert.deepEqual(parseShowProc(text), { masterPid: 3012, reloads: 3, failed: 1, workers: [3050], oldWorkers: [3049] });
  });
});

describe('Consul instances', () => {
  const source = new ConsulInstanceSource({} as ConsulClient, createLogger('error'));
  const entry = (node: string, id: string, address: string, port: number) => ({ Node: { Node: node, Address: address }, Service: { ID: id, Service: 'web', Address: '', Port: port } });
  it('the same service ID on two nodes gives two instances with distinct IDs', () => {
    const list = source.parse('web', 200, JSON.stringify([entry('n1', 'web', '10.0.0.1', 80), entry('n2', 'web', '10.0.0.2', 80)]));
    assert.deepEqual(list.map((i) => i.id), ['web@n1', 'web@n2']);
  });
  it('instances without an IP address or with a bad port are skipped', () => {
    const list = source.parse('web', 200, JSON.stringify([entry('n1', 'a', 'host.example', 80), entry('n1', 'b', '10.0.0.1', 0), entry('n1', 'c', '10.0.0.1', 81)]));
    assert.deepEqual(list, [{ id: 'c', address: '10.0.0.1', port: 81 }]);
  });
});

describe('settings from the environment', () => {
  const base = { STATE_DIR: '/tmp/dfp-settings', SECRETS_DIR: '/nonexistent' };
  it('defaults follow the original', () => {
    const s = loadSettings(base);
    assert.equal(s.apiPort, 8080);
    assert.deepEqual(s.bindPorts, [80]);
    assert.equal(s.proxyInstanceName, 'docker-flow');
    assert.deepEqual(s.consulAddresses, []);
    assert.equal(s.timeouts.client, 20);
  });
  it('CONSUL_ADDRESS is a comma list, http:// added when missing', () => {
    assert.deepEqual(loadSettings({ ...base, CONSUL_ADDRESS: 'a:8500, http://b:8500/' }).consulAddresses, ['http://a:8500', 'http://b:8500']);
  });
  it('a Docker secret dfp_<name> in SECRETS_DIR overrides the variable', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-secrets-'));
    try {
      writeFileSync(path.join(dir, 'dfp_timeout_client'), '45\n');
      const s = loadSettings({ ...base, SECRETS_DIR: dir, TIMEOUT_CLIENT: '30' });
      assert.equal(s.timeouts.client, 45);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  it('bad values stop start-up naming the variable', () => {
    for (const [k, v] of [
      ['PORT', 'abc'],
      ['DEFAULT_PORTS', '80:tls'],
      ['DEFAULT_PORTS', '443:tls'],
      ['SERVICE_DOMAIN_ALGO', 'hdr_sub(host)'],
      ['CA_FILE', '/tmp/a b'],
      ['SSL_BIND_OPTIONS', 'no-sslv3\nbackend x'],
      ['SSL_BIND_CIPHERS', 'A B'],
      ['TIMEOUT_CLIENT', 'abc'],
      ['STATE_DIR', '/tmp/with space'],
      ['CONNECTION_MODE', 'forceclose'],
      ['DEBUG', 'yes'],
    ] as const) {
      assert.throws(() => loadSettings({ ...base, [k]: v }), (e: unknown) => e instanceof DfpError && e.parameter === k, `${k}=${v}`);
    }
  });
});

describe('desired state', () => {
  const spec = (name: string, acl = name, path = `/${name}`): ServiceSpec => makeSpec({ serviceName: name, aclName: acl, destinations: [{ servicePath: [path] }] });
  const one = [{ id: 'i1', address: '127.0.0.1', port: 1 }];

  it('changes return new values and leave the old one untouched', () => {
    const a = withService(EMPTY_STATE, spec('a'), one);
    assert.equal(EMPTY_STATE.services.size, 0);
    const b = withoutService(a, 'a');
    assert.equal(a.services.size, 1);
    assert.equal(b.services.size, 0);
    assert.equal(b.instances.size, 0, 'instances of removed services are dropped');
    assert.equal(withoutService(a, 'nope'), a);
  });

  it('an aclName taken by another service is refused', () => {
    const a = withService(EMPTY_STATE, spec('a'), one);
    assert.throws(() => withService(a, spec('b', 'a'), one), (e: unknown) => e instanceof DfpError && e.parameter === 'aclName');
    assert.doesNotThrow(() => withService(a, spec('a', 'a', '/other'), one));
  });

  it('instances are kept per Consul service and only for configured services', () => {
    const a = withService(EMPTY_STATE, { ...spec('a'), serviceColor: 'blue' }, one);
    assert.deepEqual([...a.instances.keys()], ['a-blue']);
    const two = [...one, { id: 'i2', address: '127.0.0.2', port: 2 }];
    assert.equal(serviceStates(withInstances(a, 'a-blue', two))[0]?.instances.length, 2);
    assert.equal(withInstances(a, 'unknown', two), a);
  });
});

describe('IdleGc: one full collection once the work is over', () => {
  it('collects after the idle period, and the garbage of the burst is gone', async () => {
    const gc = new IdleGc(30);
    let garbage: string[] | undefined = Array.from({ length: 200_000 }, (_, i) => `spec-${i}-${'x'.repeat(100)}`);
    const before = process.memoryUsage().heapUsed;
    garbage = undefined;
    gc.touch();
    const deadline = Date.now() + 5000;
    while (gc.runs === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(gc.runs, 1);
    assert.equal(garbage, undefined);
    assert.ok(process.memoryUsage().heapUsed < before - 10 * 1048576, `heap used ${before} -> ${process.memoryUsage().heapUsed}`);
    gc.stop();
  });
});

describe('LISTENER_ADDRESS', () => {
  const url = (v: string) => loadSettings({ STATE_DIR: '/tmp/x', LISTENER_ADDRESS: v }).listenerUrl;
  it('a host means port 8080; host:port and URLs are kept; anything else stops start-up naming it', () => {
    assert.equal(url('swarm-listener'), 'http://swarm-listener:8080');
    assert.equal(url('10.0.0.5:9000'), 'http://10.0.0.5:9000');
    assert.equal(url('https://listener.local/'), 'https://listener.local');
    assert.equal(loadSettings({ STATE_DIR: '/tmp/x' }).listenerUrl, undefined);
    for (const bad of ['http://a b', 'http://u:p@h', 'h?x=1']) {
      assert.throws(() => url(bad), (e: unknown) => e instanceof DfpError && e.parameter === 'LISTENER_ADDRESS', bad);
    }
  });
});

describe('logging and reload variables of the original', () => {
  const load = (env: Record<string, string>) => loadSettings({ STATE_DIR: '/tmp/x', ...env });
  it('CAPTURE_REQUEST_HEADER, DEBUG_ERRORS_ONLY, DEBUG_*_FORMAT, TERMINATE_ON_RELOAD; invalid values name the variable', () => {
    const s = load({ CAPTURE_REQUEST_HEADER: 'Host:15,X-Forwarded-For:20', DEBUG_ERRORS_ONLY: 'true', DEBUG_HTTP_FORMAT: '%ci %ST', TERMINATE_ON_RELOAD: 'true' });
    assert.deepEqual(s.requestLog, { errorsOnly: true, httpFormat: '%ci %ST', tcpFormat: undefined, captureRequestHeaders: [{ name: 'Host', len: 15 }, { name: 'X-Forwarded-For', len: 20 }] });
    assert.equal(s.drain.hardStopAfter, 1, 'TERMINATE_ON_RELOAD: old workers stop within a second');
    assert.equal(load({ TERMINATE_ON_RELOAD: 'true', HARD_STOP_AFTER: '5' }).drain.hardStopAfter, 5);
    for (const [name, value] of [
      ['CAPTURE_REQUEST_HEADER', 'Host'],
      ['CAPTURE_REQUEST_HEADER', 'Host:0'],
      ['CAPTURE_REQUEST_HEADER', 'Bad Name:10'],
      ['DEBUG_HTTP_FORMAT', '%ci"\nbackend evil'],
      ['DEFAULT_REQ_MODE', 'tcp'],
      ['TERMINATE_ON_RELOAD', 'maybe'],
    ] as const) {
      assert.throws(() => load({ [name]: value }), (e: unknown) => e instanceof DfpError && e.parameter === name, `${name}=${value}`);
    }
  });
});

describe('RESOLVERS, CHECK_RESOLVERS, DO_NOT_RESOLVE_ADDR', () => {
  it('name servers in the original form or as ip:port; the switches are checked', () => {
    const s = loadSettings({ STATE_DIR: '/tmp/x', RESOLVERS: 'nameserver dns 127.0.0.11:53,10.0.0.2:53', CHECK_RESOLVERS: 'true' });
    assert.deepEqual(s.resolvers, [
      { name: 'dns', address: '127.0.0.11:53' },
      { name: 'dfp-ns2', address: '10.0.0.2:53' },
    ]);
    for (const [name, value] of [
      ['RESOLVERS', 'dns 127.0.0.11:53'],
      ['RESOLVERS', 'nameserver x evil.host:53'],
      ['RESOLVERS', 'nameserver dfp-ns2 10.0.0.1:53,10.0.0.2:53'],
      ['CHECK_RESOLVERS', 'maybe'],
      ['DO_NOT_RESOLVE_ADDR', '2'],
    ] as const) {
      assert.throws(() => loadSettings({ STATE_DIR: '/tmp/x', [name]: value }), (e: unknown) => e instanceof DfpError && e.parameter === name, `${name}=${value}`);
    }
  });
});

describe('the Node flags the proxy runs with', () => {
  it('npm start, the image and every spawn of the proxy use PROXY_NODE_FLAGS', async () => {
    const { PROXY_NODE_FLAGS, proxyArgs } = await import('../../src/util/project.js');
    const { readFileSync } = await import('node:fs');
    const root = (await import('../../src/util/project.js')).PROJECT_ROOT;
    const start = (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start ?? '';
    assert.ok(start.endsWith(`node ${PROXY_NODE_FLAGS.join(' ')} dist/src/main.js`), start);
    const cmd = /^CMD (.*)$/m.exec(readFileSync(path.join(root, 'Dockerfile'), 'utf8'))?.[1] ?? '';
    assert.equal(cmd, JSON.stringify(['node', ...PROXY_NODE_FLAGS, '/app/dist/src/main.js']).replaceAll(',', ', '));
    assert.deepEqual(proxyArgs(), [...PROXY_NODE_FLAGS, path.join(root, 'dist/src/main.js')]);
  });
});
