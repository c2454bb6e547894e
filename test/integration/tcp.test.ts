import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { freePort } from '../../src/util/ports.js';
import { callApi, eventually, haproxyGeneration, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type Backend, type TestProxy } from '../helpers/harness.js';

/** A TCP instance: greets each connection with its name, then echoes lines. */
async function startEcho(name: string): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    sock.write(`hello from ${name}\n`);
    sock.pipe(sock);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A connection through HAProxy with a line reader. */
function connect(port: number): { sock: net.Socket; line: () => Promise<string> } {
  const sock = net.connect(port, '127.0.0.1');
  sock.setEncoding('utf8');
  let buf = '';
  let wake: (() => void) | undefined;
  sock.on('data', (d: string) => {
    buf += d;
    wake?.();
  });
  sock.on('error', () => wake?.());
  sock.on('close', () => wake?.());
  const line = async () => {
    const deadline = Date.now() + 5000;
    while (!buf.includes('\n')) {
      if (Date.now() > deadline || sock.destroyed) throw new Error(`no line (got ${JSON.stringify(buf)})`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
    }
    const i = buf.indexOf('\n');
    const out = buf.slice(0, i);
    buf = buf.slice(i + 1);
    return out;
  };
  return { sock, line };
}

async function greeting(port: number): Promise<string> {
  const c = connect(port);
  try {
    return await c.line();
  } finally {
    c.sock.destroy();
  }
}

describe('reqMode=tcp (issue 10): a frontend per srcPort, instances from Consul', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let web: Backend;
  const echoes: { port: number; close: () => Promise<void> }[] = [];
  let tcpPort = 0;

  before(async () => {
    consul = await startConsul();
    proxy = await startProxy(consul.address);
    web = await startBackend('web.0');
    await registerLikeRegistrator(consul.address, { name: 'web', container: 'web.0', exposedPort: 80, hostPort: web.port });
    const first = await startEcho('redis.0');
    echoes.push(first);
    await registerLikeRegistrator(consul.address, { name: 'redis', container: 'redis.0', exposedPort: 6379, hostPort: first.port });
    tcpPort = await freePort();
  });

  after(async () => {
    await proxy?.stop();
    for (const e of echoes) await e.close();
    await web?.close();
    if (consul) await stopConsul(consul);
  });

  it('routes a TCP service on its srcPort; the model shows ReqMode tcp', async () => {
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'redis', reqMode: 'tcp', srcPort: String(tcpPort), port: '6379', clitcpka: 'true', timeoutClient: '600' });
    assert.equal(res.status, 200, res.text);
    assert.equal(await greeting(tcpPort), 'hello from redis.0');
    const c = connect(tcpPort);
    try {
      assert.equal(await c.line(), 'hello from redis.0');
      c.sock.write('PING\n');
      assert.equal(await c.line(), 'PING');
    } finally {
      c.sock.destroy();
    }
    const model = (await callApi(proxy, 'config', { type: 'json' })).body.redis as { ServiceDest: { ReqMode: string; SrcPort: number; Clitcpka: boolean; TimeoutClient: string }[] };
    assert.deepEqual(
      model.ServiceDest.map((d) => [d.ReqMode, d.SrcPort, d.Clitcpka, d.TimeoutClient]),
      [['tcp', tcpPort, true, '600']],
    );
    const config = (await callApi(proxy, 'config')).text;
    assert.match(config, new RegExp(`frontend tcpFE_${tcpPort}\\n    bind \\*:${tcpPort}\\n    mode tcp\\n    option clitcpka\\n    timeout client 600s\\n    default_backend redis-be6379_0`));
  });

  it('a new instance is a scale event through the runtime API: no reload', async () => {
    const generation = await haproxyGeneration(proxy);
    const second = await startEcho('redis.1');
    echoes.push(second);
    await registerLikeRegistrator(consul.address, { name: 'redis', container: 'redis.1', exposedPort: 6379, hostPort: second.port });
    const seen = new Set<string>();
    await eventually(
      'connections reach both instances',
      async () => {
        seen.add(await greeting(tcpPort));
        return seen;
      },
      (s) => s.has('hello from redis.1') && s.has('hello from redis.0'),
    );
    assert.equal(await haproxyGeneration(proxy), generation, 'HAProxy did not reload');
  });

  it('a connection held open is not cut by three reloads caused by other services', async () => {
    const c = connect(tcpPort);
    try {
      await c.line(); // greeting
      for (let n = 1; n <= 3; n++) {
        const generation = await haproxyGeneration(proxy);
        // A pattern route changes the HTTP frontend: a reload.
        const res = await callApi(proxy, 'reconfigure', { serviceName: 'web', pathType: 'path_reg', servicePath: `^/tcp-reload-${n}/` });
        assert.equal(res.status, 200, res.text);
        await eventually('the reload', () => haproxyGeneration(proxy), (g) => g !== generation);
        c.sock.write(`still-${n}\n`);
        assert.equal(await c.line(), `still-${n}`, `the connection outlived reload ${n}`);
      }
    } finally {
      c.sock.destroy();
    }
  });

  it('HARD_STOP_AFTER bounds how long an old worker keeps a connection after a reload', async () => {
    const short = await startProxy(consul.address, { PROXY_INSTANCE_NAME: 'drain', HARD_STOP_AFTER: '1' });
    try {
      const port = await freePort();
      assert.equal((await callApi(short, 'reconfigure', { serviceName: 'redis', reqMode: 'tcp', srcPort: String(port) })).status, 200);
      const c = connect(port);
      assert.equal(await c.line(), 'hello from redis.0');
      const closed = new Promise<number>((resolve) => c.sock.on('close', () => resolve(Date.now())));
      const reloaded = Date.now();
      assert.equal((await callApi(short, 'reconfigure', { serviceName: 'web', pathType: 'path_reg', servicePath: '^/drain/' })).status, 200);
      const at = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(0), 8000))]);
      assert.ok(at > 0, 'the old worker was stopped and the connection closed');
      assert.ok(at - reloaded >= 900, `not before HARD_STOP_AFTER (${at - reloaded} ms)`);
    } finally {
      await short.stop();
    }
  });

  it('refuses what cannot work on a TCP destination, naming the parameter, and changes nothing', async () => {
    const httpPort = String(proxy.httpPort);
    const cases: [Record<string, string>, string, RegExp][] = [
      [{ reqMode: 'tcp', srcPort: String(tcpPort + 1), servicePath: '/x' }, 'servicePath', /applies to http destinations/],
      [{ reqMode: 'tcp', srcPort: String(tcpPort + 1), addReqHeader: 'X-A 1' }, 'addReqHeader', /every destination of this service is reqMode=tcp/],
      [{ reqMode: 'tcp', port: '6379' }, 'srcPort', /needs srcPort/],
      [{ reqMode: 'tcp', srcPort: httpPort }, 'srcPort', /HTTP listener/],
      [{ servicePath: '/x', checkTcp: 'true' }, 'checkTcp', /reqMode=tcp and sni destinations only/],
    ];
    for (const [params, parameter, message] of cases) {
      const res = await callApi(proxy, 'reconfigure', { serviceName: 'other', ...params });
      assert.equal(res.status, 400, `${JSON.stringify(params)}: ${res.text}`);
      assert.equal(res.body.Parameter, parameter, res.text);
      assert.match(String(res.body.Message), message);
    }
    // Another service on the same TCP port: nothing tells them apart without SNI.
    const taken = await callApi(proxy, 'reconfigure', { serviceName: 'cache', reqMode: 'tcp', srcPort: String(tcpPort) });
    assert.equal(taken.status, 400, taken.text);
    assert.equal(taken.body.Parameter, 'srcPort');
    assert.match(String(taken.body.Message), /already the TCP port of service redis/);
    // A reqMode=sni service cannot share a plain tcp service's port either.
    const sni = await callApi(proxy, 'reconfigure', { serviceName: 'tls', reqMode: 'sni', srcPort: String(tcpPort), serviceDomain: 'tls.com' });
    assert.equal(sni.status, 400, sni.text);
    assert.equal(sni.body.Parameter, 'srcPort');
    const services = Object.keys((await callApi(proxy, 'config', { type: 'json' })).body).sort();
    assert.deepEqual(services, ['redis', 'web']);
  });

  it('remove takes the TCP frontend away', async () => {
    assert.equal((await callApi(proxy, 'remove', { serviceName: 'redis' })).status, 200);
    assert.doesNotMatch((await callApi(proxy, 'config')).text, /frontend tcpFE_/);
    const refused = await new Promise<boolean>((resolve) => {
      const s = net.connect(tcpPort, '127.0.0.1');
      s.on('connect', () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(true));
    });
    assert.ok(refused, 'nothing listens on the TCP port any more');
  });
});
