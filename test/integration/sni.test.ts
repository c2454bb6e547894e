import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { freePort } from '../../src/util/ports.js';
import { callApi, registerLikeRegistrator, startConsul, startProxy, stopConsul, tempDir, type TestProxy } from '../helpers/harness.js';
import { makeCert, type Pem } from '../helpers/tls.js';

/** A TLS instance with its own certificate: greets with its name once the handshake is done. */
async function startTlsEcho(name: string, pem: Pem): Promise<{ port: number; close: () => Promise<void> }> {
  const server = tls.createServer({ key: pem.key, cert: pem.cert }, (sock) => {
    sock.on('error', () => undefined);
    sock.end(`hello from ${name}\n`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as AddressInfo).port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

/** Connects with this server name: the greeting and the certificate seen, or the error. */
function hello(port: number, servername: string): Promise<{ line?: string; fingerprint256?: string; error?: string }> {
  return new Promise((resolve) => {
    const sock = tls.connect({ port, host: '127.0.0.1', servername, rejectUnauthorized: false });
    let data = '';
    let fingerprint256: string | undefined;
    sock.setTimeout(5000, () => sock.destroy(new Error('timed out')));
    sock.on('secureConnect', () => {
      fingerprint256 = sock.getPeerCertificate().fingerprint256;
    });
    sock.on('data', (d: Buffer) => {
      data += d.toString();
    });
    sock.on('end', () => resolve({ line: data.trim(), ...(fingerprint256 ? { fingerprint256 } : {}) }));
    sock.on('error', (err) => resolve({ error: err.message }));
  });
}

describe('reqMode=sni (issue 10): TLS passthrough routed on the server name', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  const dir = tempDir();
  const certs: Record<string, Pem> = {};
  const servers: { close: () => Promise<void> }[] = [];
  let port = 0;

  before(async () => {
    consul = await startConsul();
    for (const [name, cn] of [
      ['sa', 'a.com'],
      ['sb', 'b.com'],
      ['sw', 'x.w.com'],
    ] as const) {
      certs[name] = makeCert(dir, cn);
      const s = await startTlsEcho(name, certs[name] as Pem);
      servers.push(s);
      await registerLikeRegistrator(consul.address, { name, container: `${name}.0`, exposedPort: 443, hostPort: s.port });
    }
    proxy = await startProxy(consul.address);
    port = await freePort();
  });

  after(async () => {
    await proxy?.stop();
    for (const s of servers) await s.close();
    if (consul) await stopConsul(consul);
    rmSync(dir, { recursive: true, force: true });
  });

  it('services share one port; each TLS client reaches its own by SNI, with the certificate untouched', async () => {
    for (const [name, domain] of [
      ['sa', 'a.com'],
      ['sb', 'b.com'],
      ['sw', '*.w.com'],
    ] as const) {
      const res = await callApi(proxy, 'reconfigure', { serviceName: name, reqMode: 'sni', srcPort: String(port), serviceDomain: domain });
      assert.equal(res.status, 200, res.text);
    }
    assert.deepEqual(await hello(port, 'a.com'), { line: 'hello from sa', fingerprint256: certs.sa?.fingerprint256 });
    assert.deepEqual(await hello(port, 'b.com'), { line: 'hello from sb', fingerprint256: certs.sb?.fingerprint256 });
    assert.deepEqual(await hello(port, 'x.w.com'), { line: 'hello from sw', fingerprint256: certs.sw?.fingerprint256 });
    const unknown = await hello(port, 'c.com');
    assert.ok(unknown.error !== undefined || unknown.line === '', `no backend for c.com: ${JSON.stringify(unknown)}`);
    assert.match((await callApi(proxy, 'config')).text, new RegExp(`frontend sniFE_${port}\\n    bind \\*:${port}\\n    mode tcp\\n    tcp-request inspect-delay 5s`));
  });

  it('refuses what could not be told apart, naming the parameter', async () => {
    const cases: [Record<string, string>, string][] = [
      [{ serviceName: 'dup', reqMode: 'sni', srcPort: String(port), serviceDomain: 'a.com' }, 'serviceDomain'],
      [{ serviceName: 'plain', reqMode: 'tcp', srcPort: String(port) }, 'srcPort'],
      [{ serviceName: 'noname', reqMode: 'sni', srcPort: String(port + 1) }, 'serviceDomain'],
      [{ serviceName: 'pathy', reqMode: 'sni', srcPort: String(port + 1), serviceDomain: 'p.com', servicePath: '/x' }, 'servicePath'],
    ];
    for (const [params, parameter] of cases) {
      const res = await callApi(proxy, 'reconfigure', params);
      assert.equal(res.status, 400, `${JSON.stringify(params)}: ${res.text}`);
      assert.equal(res.body.Parameter, parameter, res.text);
    }
  });
});
