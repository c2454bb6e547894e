import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { deregister, register, registratorBody } from '../src/consul/registrator.js';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';
import { proxyArgs } from '../src/util/project.js';

/**
 * `npm run demo`: the walkthrough, narrated. Starts the proxy (which brings up its own Consul),
 * runs books-ms instances on random ports, registers them as Registrator would, and drives the
 * proxy with the same curl calls the README shows.
 */

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
let stepNo = 0;
const step = (title: string) => console.log(`\n${bold(`${++stepNo}. ${title}`)}`);
const say = (s: string) => console.log(`   ${s}`);
const show = (cmd: string) => console.log(`   $ ${cmd}`);

/** Real curl, run asynchronously: the books-ms instances live in this process and must answer. */
async function curl(url: string): Promise<string> {
  show(`curl -s "${url}"`);
  try {
    return (await promisify(execFile)('curl', ['-s', '-w', '\\n(HTTP %{http_code})', url], { encoding: 'utf8' })).stdout;
  } catch {
    return '(curl failed)';
  }
}

async function booksMs(instance: string): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ service: 'books-ms', instance, path: req.url }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

async function main(): Promise<void> {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'dfp-demo-'));
  const apiPort = await freePort();
  const httpPort = await freePort();
  const proxyUrl = `http://127.0.0.1:${apiPort}`;
  const trafficUrl = `http://127.0.0.1:${httpPort}`;
  const servers: Server[] = [];

  step('Start the proxy (no CONSUL_ADDRESS, so it starts a local Consul)');
  show(`PORT=${apiPort} DEFAULT_PORTS=${httpPort} STATE_DIR=${stateDir} node --max-semi-space-size=4 dist/src/main.js`);
  const proxy = spawn(process.execPath, proxyArgs(), {
    env: { ...process.env, CONSUL_ADDRESS: '', PORT: String(apiPort), IP: '127.0.0.1', DEFAULT_PORTS: String(httpPort), STATE_DIR: stateDir, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proxy.stderr.on('data', (d: Buffer) => (log += d.toString()));
  proxy.stdout.on('data', (d: Buffer) => (log += d.toString()));
  const cleanup = async () => {
    proxy.kill('SIGTERM');
    await waitForExit(proxy.pid ?? 0, 20_000);
    // waitForExit may see the exited process before Node reports its exit code.
    if (proxy.exitCode === null && proxy.signalCode === null) await once(proxy, 'exit');
    for (const s of servers) s.close();
    rmSync(stateDir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + 60_000;
    while (!/ready: serving /.test(log)) {
      if (proxy.exitCode !== null || Date.now() > deadline) throw new Error(`the proxy did not start:\n${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const consul = /CONSUL_ADDRESS=(\S+)/.exec(log)?.[1] ?? '';
    say(`proxy API on ${proxyUrl}, HAProxy on ${trafficUrl}, Consul on ${consul}`);

    step('Run one books-ms instance and register it as Registrator would');
    const first = await booksMs('books-ms.1');
    servers.push(first.server);
    const reg = { name: 'books-ms', container: 'books-ms.1', exposedPort: 8080, hostPort: first.port };
    show(`curl -X PUT ${consul}/v1/agent/service/register -d '${JSON.stringify(registratorBody(reg).body)}'`);
    await register(consul, reg);

    step('Reconfigure the proxy: one call');
    console.log(indent(await curl(`${proxyUrl}/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books`)));

    step('The service answers through the proxy');
    console.log(indent(await curl(`${trafficUrl}/api/v1/books`)));

    step('Scale to 3 instances, register them, reconfigure again');
    for (const n of [2, 3]) {
      const b = await booksMs(`books-ms.${n}`);
      servers.push(b.server);
      await register(consul, { name: 'books-ms', container: `books-ms.${n}`, exposedPort: 8080, hostPort: b.port });
      say(`books-ms.${n} on 127.0.0.1:${b.port} registered`);
    }
    console.log(indent(await curl(`${proxyUrl}/v1/docker-flow-proxy/reconfigure?serviceName=books-ms&servicePath=/api/v1/books`)));

    step('30 requests are spread over all 3 instances');
    const counts = new Map<string, number>();
    for (let i = 0; i < 30; i++) {
      const res = await fetch(`${trafficUrl}/api/v1/books`, { headers: { Connection: 'close' } });
      const { instance } = (await res.json()) as { instance: string };
      counts.set(instance, (counts.get(instance) ?? 0) + 1);
    }
    for (const [instance, n] of [...counts].sort()) say(`${instance}: ${n} requests`);

    step('Remove the service: its path answers 503');
    console.log(indent(await curl(`${proxyUrl}/v1/docker-flow-proxy/remove?serviceName=books-ms`)));
    console.log(indent((await curl(`${trafficUrl}/api/v1/books`)).split('\n').slice(-1).join('\n')));
    for (const n of [1, 2, 3]) await deregister(consul, `host1:books-ms.${n}:8080`);

    step('Clean up: SIGTERM stops HAProxy and the local Consul');
  } catch (err) {
    console.error(`demo failed: ${(err as Error).message}`);
    process.exitCode = 1;
  } finally {
    await cleanup();
    say(proxy.exitCode === 0 ? 'done: no process left behind' : `proxy exited with ${proxy.exitCode}`);
  }
}

function indent(s: string): string {
  return s
    .trim()
    .split('\n')
    .map((l) => `   ${l}`)
    .join('\n');
}

void main();
