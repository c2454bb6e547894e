import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { ConsulAgent } from '../src/consul/agent.js';
import { deregister, register } from '../src/consul/registrator.js';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';
import { PROJECT_ROOT } from '../src/util/project.js';
import { ensureInstalled, keptNotes, machine, pct } from './common.js';

/**
 * `npm run bench`: the speed claims of docs/benchmarks.md, measured side by side in one run on this
 * machine. Real HAProxy, real Consul (dev agent), the proxy as its own process, wrk for load; all
 * traffic on 127.0.0.1 and every phase bounded in time. BENCH_QUICK=1 shrinks it for a smoke run.
 */

const QUICK = process.env.BENCH_QUICK === '1';
const SIZES = QUICK ? [10, 200] : [10, 1000, 10000];
const LIVE_SAMPLES = QUICK ? 5 : 20;
const SCALE_SAMPLES = QUICK ? 10 : 50;
const CHURN_EVENTS = QUICK ? 20 : 100;
const LOAD_SECONDS = { keepAlive: QUICK ? 10 : 40, close: QUICK ? 10 : 75 };
const ROUTE_SECONDS = QUICK ? 5 : 10;
const run = promisify(execFile);
const out: string[] = [];
const note = (s: string) => {
  console.log(s);
  out.push(s);
};



const ms = (n: number) => `${n.toFixed(1)} ms`;

interface Env {
  consul: ConsulAgent;
  api: string;
  http: string;
  proxy: ChildProcess;
  stateDir: string;
  backendPorts: number[];
}

async function startAll(backends: ChildProcess): Promise<Env> {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-bench-'));
  // Raised limit, as the runs in docs/benchmarks.md used (a user's agent allows 200: see its notes).
  const consul = await ConsulAgent.start({ bin: path.join(PROJECT_ROOT, '.tools/bin/consul'), mode: 'dev', dataDir: path.join(stateDir, 'consul'), httpMaxConnsPerClient: 16384 });
  const apiPort = await freePort();
  const httpPort = await freePort();
  const proxy = spawn(process.execPath, ['--max-old-space-size=4096', path.join(PROJECT_ROOT, 'dist/src/main.js')], {
    env: {
      ...process.env,
      CONSUL_ADDRESS: consul.address,
      STATE_DIR: path.join(stateDir, 'proxy'),
      PORT: String(apiPort),
      IP: '127.0.0.1',
      DEFAULT_PORTS: String(httpPort),
      LOG_LEVEL: 'warn',
      MAXCONN: '4000',
      CONSUL_MAX_WATCHES: '20000',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const api = `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${api}/ping`)).ok) break;
    } catch {
      if (i > 600) throw new Error('proxy did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const ports = await new Promise<number[]>((resolve) => {
    createInterface({ input: backends.stdout as NodeJS.ReadableStream }).once('line', (l) => resolve((JSON.parse(l) as { ports: number[] }).ports));
  });
  return { consul, api, http: `http://127.0.0.1:${httpPort}`, proxy, stateDir, backendPorts: ports };
}

/** Three more proxies of one fleet (their own PROXY_INSTANCE_NAME) on the same Consul. */
async function fleetBench(env: Env): Promise<void> {
  const procs: { proc: ChildProcess; api: string; http: string }[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const apiPort = await freePort();
      const httpPort = await freePort();
      const proc = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist/src/main.js')], {
        env: {
          ...process.env,
          CONSUL_ADDRESS: env.consul.address,
          PROXY_INSTANCE_NAME: 'bench-fleet',
          STATE_DIR: path.join(env.stateDir, `fleet${i}`),
          PORT: String(apiPort),
          IP: '127.0.0.1',
          DEFAULT_PORTS: String(httpPort),
          LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      procs.push({ proc, api: `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`, http: `http://127.0.0.1:${httpPort}` });
    }
    for (const p of procs) {
      for (let i = 0; ; i++) {
        try {
          if ((await fetch(`${p.api}/successfulinitreload`)).ok) break;
        } catch {
          // starting
        }
        if (i > 600) throw new Error('fleet proxy did not start');
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const samples: number[] = [];
    const waited: number[] = [];
    for (let k = 0; k < LIVE_SAMPLES * 2; k++) {
      const name = `fleet-${k}`;
      await register(env.consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: env.backendPorts[0] ?? 0 });
      await new Promise((r) => setTimeout(r, 100));
      const target = procs[k % 3];
      if (!target) continue;
      const t0 = performance.now();
      const res = await fetch(`${target.api}/reconfigure?serviceName=${name}&servicePath=/${name}/`);
      if (res.status !== 200) throw new Error(`fleet reconfigure: ${res.status}`);
      await Promise.all(procs.map((p) => firstOk(`${p.http}/${name}/`)));
      samples.push(performance.now() - t0);
      const t1 = performance.now();
      const all = await fetch(`${target.api}/reconfigure?serviceName=${name}&servicePath=/${name}/,/${name}-b/&wait=all`);
      if (all.status !== 200) throw new Error(`fleet reconfigure wait=all: ${all.status}`);
      waited.push(performance.now() - t1);
    }
    note(`| change sent to one of 3 proxies, until its route answers 200 on all 3 | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} |`);
    note(`| the same with \`wait=all\`: until the API call returns (all 3 report the change applied) | ${ms(pct(waited, 50))} | ${ms(pct(waited, 99))} |`);
  } finally {
    for (const p of procs) p.proc.kill('SIGTERM');
    for (const p of procs) await waitForExit(p.proc.pid ?? 0, 30_000);
  }
}

async function reconfigure(env: Env, params: Record<string, string>): Promise<void> {
  const res = await fetch(`${env.api}/reconfigure?${new URLSearchParams(params)}`);
  if (res.status !== 200) throw new Error(`reconfigure ${JSON.stringify(params)}: ${res.status} ${await res.text()}`);
}

interface Status {
  Applies: { kind: string; trigger: string; durationMs: number }[];
  ApplyCounts: { reload: number; runtime: number; none: number };
}

async function status(env: Env): Promise<Status> {
  return (await (await fetch(`${env.api}/status`)).json()) as Status;
}

async function firstOk(url: string, want?: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url, { headers: { Connection: 'close' } });
      const text = await res.text();
      if (res.status === 200 && (want === undefined || text.includes(want))) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`no 200 from ${url} within ${timeoutMs} ms`);
  }
}

const svc = (i: number) => `svc${String(i).padStart(5, '0')}`;

/** Registers and routes services [from, to) with bounded concurrency. */
async function populate(env: Env, from: number, to: number): Promise<void> {
  const ids = Array.from({ length: to - from }, (_, k) => from + k);
  const worker = async () => {
    for (let i = ids.shift(); i !== undefined; i = ids.shift()) {
      await register(env.consul.address, { name: svc(i), container: `${svc(i)}.0`, exposedPort: 80, hostPort: env.backendPorts[i % env.backendPorts.length] ?? 0 });
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  const ids2 = Array.from({ length: to - from }, (_, k) => from + k);
  const worker2 = async () => {
    for (let i = ids2.shift(); i !== undefined; i = ids2.shift()) await reconfigure(env, { serviceName: svc(i), servicePath: `/${svc(i)}/` });
  };
  await Promise.all(Array.from({ length: 32 }, worker2));
}

async function newServiceLive(env: Env, size: number): Promise<void> {
  const samples: number[] = [];
  const kinds = new Map<string, number>();
  for (let k = 0; k < LIVE_SAMPLES; k++) {
    const name = `live${size}-${k}`;
    await register(env.consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: env.backendPorts[0] ?? 0 });
    await new Promise((r) => setTimeout(r, 200)); // let watches settle: only the API call is timed
    const t0 = performance.now();
    await reconfigure(env, { serviceName: name, servicePath: `/${name}/` });
    await firstOk(`${env.http}/${name}/x`);
    samples.push(performance.now() - t0);
    const last = (await status(env)).Applies.filter((a) => a.trigger === `reconfigure ${name}`).at(-1);
    const kind = last?.kind ?? 'batched';
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  note(`| ${size.toLocaleString('en')} | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} | ${[...kinds].map(([k, n]) => `${n}× ${k}`).join(', ')} |`);
}

async function scaleEvents(env: Env): Promise<void> {
  const base = svc(0);
  const before = (await status(env)).ApplyCounts;
  const samples: number[] = [];
  for (let k = 0; k < SCALE_SAMPLES; k++) {
    const port = env.backendPorts[1 + (k % (env.backendPorts.length - 1))] ?? 0;
    const t0 = performance.now();
    const id = await register(env.consul.address, { name: base, container: `${base}.scale${k}`, exposedPort: 80, hostPort: port });
    // The new instance answers with its own name: wait for it.
    await firstOk(`${env.http}/${base}/`, `"b${1 + (k % (env.backendPorts.length - 1))}"`);
    samples.push(performance.now() - t0);
    await deregister(env.consul.address, id);
    await new Promise((r) => setTimeout(r, 50));
  }
  const after = (await status(env)).ApplyCounts;
  note(
    `| ${SCALE_SAMPLES} scale events (register, wait for traffic, deregister) | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} | ${after.reload - before.reload} reloads, ${after.runtime - before.runtime} runtime applies |`,
  );
}

interface WrkResult {
  requests: number;
  errors: number;
  non2xx: number;
  rps: number;
}

async function wrk(url: string, seconds: number, close: boolean, connections = 20): Promise<WrkResult> {
  const args = ['-t2', `-c${connections}`, `-d${seconds}s`, ...(close ? ['-H', 'Connection: close'] : []), url];
  const { stdout } = await run('wrk', args, { timeout: (seconds + 30) * 1000 });
  const requests = Number(/(\d+) requests in/.exec(stdout)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(stdout);
  const errors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(stdout)?.[1] ?? 0);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(stdout)?.[1] ?? 0);
  return { requests, errors, non2xx, rps };
}

async function churnUnderLoad(env: Env, close: boolean): Promise<void> {
  const seconds = close ? LOAD_SECONDS.close : LOAD_SECONDS.keepAlive;
  const base = svc(1);
  const load = wrk(`${env.http}/${base}/`, seconds, close);
  const before = (await status(env)).ApplyCounts;
  const pause = ((seconds - 4) * 1000) / (CHURN_EVENTS * 2);
  let reconfigures = 0;
  let scales = 0;
  await new Promise((r) => setTimeout(r, 1000));
  const tag = close ? 'c' : 'k';
  for (let k = 0; k < CHURN_EVENTS; k++) {
    // One in five reconfigures needs a reload (a regex route); the rest take the runtime path.
    const params: Record<string, string> = k % 5 === 4 ? { serviceName: `churn${tag}${k}`, servicePath: `^/churn${tag}${k}$`, pathType: 'path_reg' } : { serviceName: `churn${tag}${k}`, servicePath: `/churn${tag}${k}/` };
    await reconfigure(env, params);
    reconfigures++;
    await new Promise((r) => setTimeout(r, pause));
    const id = `host1:${base}.churn${k % 4}:80`;
    if (Math.floor(k / 4) % 2 === 0) await register(env.consul.address, { name: base, container: `${base}.churn${k % 4}`, exposedPort: 80, hostPort: env.backendPorts[k % env.backendPorts.length] ?? 0 });
    else await deregister(env.consul.address, id);
    scales++;
    await new Promise((r) => setTimeout(r, pause));
  }
  const result = await load;
  const after = (await status(env)).ApplyCounts;
  note(
    `| ${close ? '`Connection: close`' : 'keep-alive'} | ${seconds} s | ${result.requests.toLocaleString('en')} | ${reconfigures} + ${scales} | ${result.errors} | ${result.non2xx} | ${Math.round(result.rps).toLocaleString('en')} | ${after.reload - before.reload} reloads, ${after.runtime - before.runtime} runtime |`,
  );
}

async function routeCost(env: Env, size: number): Promise<void> {
  const first = `${env.http}/${svc(0)}/`;
  const last = `${env.http}/${svc(size - 1)}/`;
  const a1 = await wrk(first, ROUTE_SECONDS, false, 50);
  const b1 = await wrk(last, ROUTE_SECONDS, false, 50);
  const a2 = await wrk(first, ROUTE_SECONDS, false, 50);
  const b2 = await wrk(last, ROUTE_SECONDS, false, 50);
  const firstRps = (a1.rps + a2.rps) / 2;
  const lastRps = (b1.rps + b2.rps) / 2;
  note(`| ${size.toLocaleString('en')} | ${Math.round(firstRps).toLocaleString('en')} (${Math.round(a1.rps)}, ${Math.round(a2.rps)}) | ${Math.round(lastRps).toLocaleString('en')} (${Math.round(b1.rps)}, ${Math.round(b2.rps)}) | **${(lastRps / firstRps).toFixed(2)}** | ${a1.errors + a2.errors + b1.errors + b2.errors + a1.non2xx + a2.non2xx + b1.non2xx + b2.non2xx} |`);
}


async function main(): Promise<void> {
  ensureInstalled('wrk', 'wrk');
  const started = new Date();
  const backends = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist/bench/backends.js'), '4'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const env = await startAll(backends);
  try {
    note(`# Benchmarks\n\nRun ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${machine('Consul 1.8.7 dev agent')}.`);
    note(`${QUICK ? '**Quick run (BENCH_QUICK=1): smaller sizes, fewer samples.** ' : ''}Produced by \`npm run bench\` (bench/run.ts); wrk, HAProxy, the proxy, Consul and the Node backends share the same cores, so compare numbers within this run only.\n`);
    note('## New service live: API call until the first 200 on its route\n\nAim: <= 50 ms at 1,000 services, <= 100 ms at 10,000.\n');
    note('| services already routed | p50 | p99 | how it was applied |\n|---|---|---|---|');
    let populated = 0;
    for (const size of SIZES) {
      const t0 = performance.now();
      await populate(env, populated, size);
      populated = size;
      console.log(`(populated ${size} services in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      await newServiceLive(env, size);
      if (size === SIZES[0]) {
        note('\n## Scale event: instance registered in Consul until it gets traffic\n\nAim: <= 20 ms p50, 0 reloads.\n');
        note('| what | p50 | p99 | reloads |\n|---|---|---|---|');
        await scaleEvents(env);
        note('\n## Failed requests during churn under load\n\nAim: 0 failed of at least 500,000. Each run: wrk -t2 -c20 on one route while the other services are reconfigured (one in five needs a reload) and the loaded service scales up and down through Consul.\n');
        note('| clients | duration | requests | reconfigures + scale events | socket errors | non-2xx | req/s | reloads |\n|---|---|---|---|---|---|---|---|');
        await churnUnderLoad(env, false);
        await churnUnderLoad(env, true);
        note('\n## Fleet: a change on one of three proxies until it is live on all three\n\nAim: p99 <= 150 ms. Three proxies of one fleet (own PROXY_INSTANCE_NAME) on the same Consul; each change goes to a different one in turn.\n');
        note('| what | p50 | p99 |\n|---|---|---|');
        await fleetBench(env);
        note('\n## New service live, continued\n\n| services already routed | p50 | p99 | how it was applied |\n|---|---|---|---|');
      }
    }
    note(`\n## Route cost: the 1st vs the ${populated.toLocaleString('en')}th route\n\nAim: ratio >= 0.9. wrk -t2 -c50, ${ROUTE_SECONDS} s per run, runs alternated (first, last, first, last).\n`);
    note('| services | 1st route req/s (runs) | last route req/s (runs) | last / first | errors |\n|---|---|---|---|---|');
    // Measure routing, not server kinds: fold any runtime-added servers into the config first.
    await fetch(`${env.api}/reload`);
    await routeCost(env, populated);
    const rss = execFileSync('ps', ['-o', 'rss=', '-p', String(env.proxy.pid)], { encoding: 'utf8' }).trim();
    note(`\nControl plane (Node) RSS with ${populated.toLocaleString('en')} services: ${(Number(rss) / 1024).toFixed(0)} MB.`);
  } finally {
    env.proxy.kill('SIGTERM');
    await waitForExit(env.proxy.pid ?? 0, 30_000);
    await env.consul.stop('SIGKILL');
    backends.kill('SIGKILL');
    rmSync(env.stateDir, { recursive: true, force: true });
  }
  const file = path.join(PROJECT_ROOT, QUICK ? 'bench-results/benchmarks-quick.md' : 'docs/benchmarks.md');
  if (QUICK) execFileSync('mkdir', ['-p', path.dirname(file)]);
  const prev = QUICK ? '' : keptNotes(file);
  writeFileSync(file, `${out.join('\n')}\n${prev}`);
  console.log(`\nwritten to ${path.relative(PROJECT_ROOT, file)}`);
}


void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
