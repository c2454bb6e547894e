import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { createInterface } from 'node:readline';
import { ConsulAgent } from '../src/consul/agent.js';
import { deregister, register } from '../src/consul/registrator.js';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';
import { PROJECT_ROOT, proxyArgs } from '../src/util/project.js';
import { canonicalAllocation } from '../src/apply/plan.js';
import { loadSettings } from '../src/config/settings.js';
import { DEFAULT_CONSUL_BUDGET } from '../src/consul/client.js';
import { OTHER_BLOCKING_QUERIES } from '../src/consul/watcher.js';
import { fdHardLimit, fdNeed } from '../src/haproxy/fd-budget.js';
import { renderSettings } from '../src/proxy.js';
import { renderConfig } from '../src/render/haproxy-config.js';
import { spec } from '../src/spec/defaults.js';
import type { ServiceState } from '../src/state/service-state.js';
import { ensureInstalled, keptNotes, machine, pct, untilOk, type WrkResult, wrk, notebook } from './common.js';

/**
 * `npm run bench`: the speed claims of docs/benchmarks.md, measured side by side in one run on this
 * machine. Real HAProxy, real Consul (a single-server agent), the proxy as its own process, wrk for load; all
 * traffic on 127.0.0.1 and every phase bounded in time. BENCH_QUICK=1 shrinks it for a smoke run.
 */

const QUICK = process.env.BENCH_QUICK === '1';
const SIZES = (process.env.BENCH_SIZES ?? (QUICK ? '10,200' : '10,2000,10000')).split(',').map(Number);
/** Instances per service (the issue's 10,000 x 3). */
const INSTANCES = 3;
/** Concurrent API clients while the services are routed. */
const CLIENTS = 8;
/**
 * Consul nodes the instances are spread over: with Registrator there is one agent per Docker host,
 * so `n` hosts. 1: every instance on the agent's own node (one agent for everything).
 */
const NODES = Number(process.env.BENCH_NODES ?? 4);
/**
 * `server` (default): a single-server agent with raft on disk, what `npm start` runs and closest to a
 * user's agent. `dev` (BENCH_CONSUL=dev): in-memory, and it pretty-prints every answer (Consul's
 * dev mode does), which doubles the bytes of node answers; earlier runs used it.
 */
const CONSUL_MODE: 'server' | 'dev' = process.env.BENCH_CONSUL === 'dev' ? 'dev' : 'server';
/**
 * HAProxy reserves a file descriptor per health-checked server slot (haproxy/fd-budget.ts): each
 * service's 4 slots and those of the spare backends (a quarter of the services; checks on unless
 * most services skip them), plus 2 x MAXCONN. A size that needs more than this machine's hard limit cannot run here (no
 * CAP_SYS_RESOURCE to raise it; Docker's default limit is 1,048,576): it is left out, and the doc
 * says so, rather than run with settings users would not have.
 */
const FD_LIMIT = fdHardLimit();
/**
 * What the proxy's own check (haproxy/fd-budget.ts) counts for `n` services as this bench routes
 * them, defaults throughout, or with `skipCheck=true` on every service (no HAProxy checks, so no
 * descriptor per slot, and the spare backends follow the services: none either).
 */
function fdNeedAt(n: number, skipCheck = false): number {
  const settings = loadSettings({ CONSUL_ADDRESS: 'http://127.0.0.1:8500' });
  const services: ServiceState[] = Array.from({ length: n }, (_, i) => ({
    spec: spec({ serviceName: `s${i}`, skipCheck, destinations: [{ servicePath: [`/s${i}/`] }] }),
    instances: Array.from({ length: INSTANCES }, (_, k) => ({ id: `s${i}.${k}`, address: '127.0.0.1', port: 10_000 + k })),
  }));
  const rendered = renderConfig({ ...renderSettings(settings, '/dev/null'), mapDir: '/dev/null' }, services, canonicalAllocation(services, settings.spareBackends, settings.serverSlots));
  return fdNeed(rendered, settings.maxconn).need;
}
const fits = (need: number) => FD_LIMIT === undefined || need <= FD_LIMIT;
const FD_NEED = new Map(SIZES.map((n) => [n, FD_LIMIT === undefined ? 0 : fdNeedAt(n)]));
const RUN_SIZES = SIZES.filter((n) => fits(FD_NEED.get(n) ?? 0));
/**
 * Sizes past the limit with the defaults that fit with `skipCheck=true` on every service: run on
 * their own (a fresh Consul and fleet), so the numbers at that size exist, and labelled as such.
 */
const SKIPCHECK_NEED = new Map(SIZES.filter((n) => !RUN_SIZES.includes(n)).map((n) => [n, fdNeedAt(n, true)]));
const SKIPCHECK_SIZES = [...SKIPCHECK_NEED].filter(([, need]) => fits(need)).map(([n]) => n);
const SKIPPED = SIZES.filter((n) => !RUN_SIZES.includes(n) && !SKIPCHECK_SIZES.includes(n));
/** Nodes a proxy follows by a query of their own with the defaults: the watch budget less the others and the catalog and checks queries. */
const WATCHED_NODES = DEFAULT_CONSUL_BUDGET.watchConnections - OTHER_BLOCKING_QUERIES - 2;
const LIVE_SAMPLES = QUICK ? 5 : 20;
const SCALE_SAMPLES = QUICK ? 10 : 50;
const CHURN_EVENTS = QUICK ? 20 : 100;
const LOAD_SECONDS = { keepAlive: QUICK ? 10 : 40, close: QUICK ? 10 : 75 };
const ROUTE_SECONDS = QUICK ? 5 : 10;
const { out, note } = notebook();



const ms = (n: number) => `${n.toFixed(1)} ms`;

interface Proxy {
  proc: ChildProcess;
  api: string;
  http: string;
  stateDir: string;
}

interface Env {
  consul: ConsulAgent;
  /** The first of the three proxies (API calls go here unless a phase says otherwise). */
  api: string;
  http: string;
  proxy: ChildProcess;
  proxies: Proxy[];
  stateDir: string;
  backendPorts: number[];
}

/** One proxy as users run it: no tuning variables, only addresses, ports and its state directory. */
async function startProxy(consulAddress: string, stateDir: string): Promise<Proxy> {
  const apiPort = await freePort();
  const httpPort = await freePort();
  const proc = spawn(process.execPath, proxyArgs(), {
    env: { ...process.env, CONSUL_ADDRESS: consulAddress, STATE_DIR: stateDir, PORT: String(apiPort), IP: '127.0.0.1', DEFAULT_PORTS: String(httpPort), LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  return { proc, api: `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`, http: `http://127.0.0.1:${httpPort}`, stateDir };
}

async function startAll(backendPorts: number[]): Promise<Env> {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-bench-'));
  // Consul's default limits (200 connections per client address): what users run.
  // Telemetry kept for Prometheus so the bench can count Consul's requests; no limit is raised.
  const consul = await ConsulAgent.start({
    bin: path.join(PROJECT_ROOT, '.tools/bin/consul'),
    mode: CONSUL_MODE,
    dataDir: path.join(stateDir, 'consul'),
    hcl: ['telemetry { prometheus_retention_time = "10m" }'],
  });
  // Three proxies of one fleet behind one Consul agent, the seed's HA set-up.
  const proxies: Proxy[] = [];
  for (let i = 0; i < 3; i++) proxies.push(await startProxy(consul.address, path.join(stateDir, `proxy${i}`)));
  for (const p of proxies) await untilOk(`${p.api}/successfulinitreload`);
  const first = proxies[0] as Proxy;
  return { consul, api: first.api, http: first.http, proxy: first.proc, proxies, stateDir, backendPorts };
}

/** Established TCP connections from a process to a local port, from `ss` (captured, then matched). */
function connectionsTo(pid: number, port: number): number {
  const out = execFileSync('ss', ['-Htnp', 'state', 'established', 'dport', `= :${port}`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes(`pid=${pid},`)).length;
}

/** Requests Consul's HTTP server has answered so far: its cumulative Prometheus counters, every endpoint summed. */
async function consulRequests(address: string): Promise<number> {
  const text = await (await fetch(`${address}/v1/agent/metrics?format=prometheus`)).text();
  let n = 0;
  for (const line of text.split('\n')) {
    const m = /^consul_http_\w+_count(?:\{[^}]*\})? (\d+(?:\.\d+)?(?:e\+\d+)?)$/.exec(line);
    if (m?.[1]) n += Number(m[1]);
  }
  return n;
}

/** The three proxies: a change sent to one, until it is live on all three. */
async function fleetBench(env: Env): Promise<void> {
  const procs = env.proxies;
  const samples: number[] = [];
  const fresh: number[] = [];
  const waited: number[] = [];
  for (let k = 0; k < LIVE_SAMPLES * 2; k++) {
    const name = `fleet-${k}`;
    await register(env.consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: env.backendPorts[0] ?? 0 });
    await new Promise((r) => setTimeout(r, 100));
    const target = procs[k % 3];
    if (!target) continue;
    // A new service, then a change to it (a second path), each until live on all three.
    const t0 = performance.now();
    const res = await fetch(`${target.api}/reconfigure?serviceName=${name}&servicePath=/${name}/`);
    if (res.status !== 200) throw new Error(`fleet reconfigure: ${res.status}`);
    await Promise.all(procs.map((p) => firstOk(`${p.http}/${name}/`)));
    fresh.push(performance.now() - t0);
    const t1 = performance.now();
    const other = procs[(k + 1) % 3] ?? target;
    const changed = await fetch(`${other.api}/reconfigure?serviceName=${name}&servicePath=/${name}/,/${name}-b/`);
    if (changed.status !== 200) throw new Error(`fleet reconfigure: ${changed.status}`);
    await Promise.all(procs.map((p) => firstOk(`${p.http}/${name}-b/`)));
    samples.push(performance.now() - t1);
    const t2 = performance.now();
    const all = await fetch(`${target.api}/reconfigure?serviceName=${name}&servicePath=/${name}/,/${name}-b/,/${name}-c/&wait=all`);
    if (all.status !== 200) throw new Error(`fleet reconfigure wait=all: ${all.status}`);
    waited.push(performance.now() - t2);
  }
  note(`| a new service sent to one of 3 proxies, until its route answers 200 on all 3 | ${ms(pct(fresh, 50))} | ${ms(pct(fresh, 99))} |`);
  note(`| a change to it sent to another one, until live on all 3 | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} |`);
  note(`| a change with \`wait=all\`: until the API call returns (all 3 report the change applied) | ${ms(pct(waited, 50))} | ${ms(pct(waited, 99))} |`);
}

async function reconfigure(env: Env, params: Record<string, string>): Promise<void> {
  const res = await fetch(`${env.api}/reconfigure?${new URLSearchParams(params)}`);
  if (res.status !== 200) throw new Error(`reconfigure ${JSON.stringify(params)}: ${res.status} ${await res.text()}`);
}

interface Status {
  Applies: { kind: string; trigger: string; durationMs: number; at: string }[];
  ApplyCounts: { reload: number; runtime: number; none: number };
}

async function status(env: Env): Promise<Status> {
  return (await (await fetch(`${env.api}/status`)).json()) as Status;
}

/**
 * Keep-alive connections for the pollers below: a new connection per poll cost ~9 ms here, which
 * would be most of what a scale event is timed at (HAProxy balances each request, not each
 * connection, so a kept-alive poller sees a new instance as soon as HAProxy routes to it).
 */
const pollAgent = new http.Agent({ keepAlive: true, maxSockets: 8 });

function getOnce(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: pollAgent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timed out')));
  });
}

/**
 * Polls `url` until it answers 200 (with `want` in the body, when given), with `pollers` requests
 * in flight at once: a new instance behind round-robin gets one request in N, so a lone poller
 * would add up to N poll round trips (~3 ms each here) after HAProxy already routes to it.
 */
async function firstOk(url: string, want?: string, timeoutMs = 30_000, pollers = 1): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let found = false;
  const poll = async () => {
    while (!found) {
      try {
        const res = await getOnce(url);
        if (res.status === 200 && (want === undefined || res.text.includes(want))) found = true;
      } catch {
        // not yet (or a kept-alive connection HAProxy closed after a reload)
      }
      if (!found && Date.now() > deadline) throw new Error(`no 200 from ${url} within ${timeoutMs} ms`);
    }
  };
  await Promise.all(Array.from({ length: pollers }, poll));
}

const checks = (skipCheck: boolean): Record<string, string> => (skipCheck ? { skipCheck: 'true' } : {});

const svc = (i: number) => `svc${String(i).padStart(5, '0')}`;

/** Registers services [from, to) with INSTANCES instances each, then routes them with CLIENTS concurrent API clients. */
async function populate(env: Env, from: number, to: number, skipCheck: boolean): Promise<{ errors: string[]; seconds: number }> {
  const ids = Array.from({ length: (to - from) * INSTANCES }, (_, k) => k);
  const worker = async () => {
    for (let k = ids.shift(); k !== undefined; k = ids.shift()) {
      const i = from + Math.floor(k / INSTANCES);
      const n = k % INSTANCES;
      const port = env.backendPorts[(i + n) % 4] ?? 0;
      if (NODES <= 1) await register(env.consul.address, { name: svc(i), container: `${svc(i)}.${n}`, exposedPort: 80, hostPort: port });
      else await registerOnHost(env.consul.address, `docker-host-${(i + n) % NODES}`, svc(i), `${svc(i)}.${n}`, port);
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  const t0 = performance.now();
  const errors: string[] = [];
  const queue = Array.from({ length: to - from }, (_, k) => from + k);
  const client = async (c: number) => {
    // Every client talks to one of the three proxies: the fleet shares the work through Consul KV.
    const api = env.proxies[c % env.proxies.length]?.api ?? env.api;
    for (let i = queue.shift(); i !== undefined; i = queue.shift()) {
      const url = `${api}/reconfigure?${new URLSearchParams({ serviceName: svc(i), servicePath: `/${svc(i)}/`, ...checks(skipCheck) })}`;
      // A reconfigure is idempotent: sent again once if a kept-alive connection was closed under it.
      const res = await fetch(url).catch(() => fetch(url));
      if (res.status !== 200) errors.push(`${res.status} ${(await res.text()).slice(0, 200)}`);
      else await res.arrayBuffer();
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
  return { errors, seconds: (performance.now() - t0) / 1000 };
}

/** An instance as another Docker host's agent would register it (the catalog API, that host as its node). */
async function registerOnHost(consul: string, node: string, name: string, container: string, port: number): Promise<void> {
  const body = { Node: node, Address: '127.0.0.1', Service: { ID: `${node}:${container}:80`, Service: name, Address: '127.0.0.1', Port: port } };
  const res = await fetch(`${consul}/v1/catalog/register`, { method: 'PUT', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`registering ${container} on ${node}: ${res.status} ${await res.text()}`);
}

/** Connections to Consul per proxy, Consul requests over a quiet period, and RSS per proxy. */
async function consulLoad(env: Env, size: number): Promise<void> {
  const port = Number(new URL(env.consul.address).port);
  await new Promise((r) => setTimeout(r, 2000));
  const before = await consulRequests(env.consul.address);
  const quiet = 10;
  await new Promise((r) => setTimeout(r, quiet * 1000));
  const after = await consulRequests(env.consul.address);
  const conns = env.proxies.map((p) => connectionsTo(p.proc.pid ?? 0, port));
  const rss = env.proxies.map((p) => Number(execFileSync('ps', ['-o', 'rss=', '-p', String(p.proc.pid)], { encoding: 'utf8' }).trim()) / 1024);
  // The metrics read itself is one request.
  note(`| ${size.toLocaleString('en')} | ${conns.join(', ')} | ${after - before - 1} in ${quiet} s | ${rss.map((r) => r.toFixed(0)).join(', ')} MB |`);
}

/** A fourth proxy with a fresh STATE_DIR while every service is in KV: API up until ready, and until the last service routes. */
async function coldRestart(env: Env, size: number): Promise<void> {
  const p = await startProxy(env.consul.address, path.join(env.stateDir, `cold${size}`));
  try {
    await untilOk(`${p.api.replace('/v1/docker-flow-proxy', '')}/v1/docker-flow-proxy/ping`);
    const t0 = performance.now();
    await untilOk(`${p.api}/successfulinitreload`);
    const ready = performance.now() - t0;
    await firstOk(`${p.http}/${svc(size - 1)}/`);
    await firstOk(`${p.http}/${svc(0)}/`);
    note(`| ${size.toLocaleString('en')} | ${ms(ready)} | ${ms(performance.now() - t0)} |`);
  } finally {
    p.proc.kill('SIGTERM');
    await waitForExit(p.proc.pid ?? 0, 45_000);
  }
}

async function newServiceLive(env: Env, size: number, skipCheck: boolean): Promise<void> {
  const samples: number[] = [];
  const calls: number[] = [];
  const kinds = new Map<string, number>();
  let slowest = { ms: 0, what: '' };
  for (let k = 0; k < LIVE_SAMPLES; k++) {
    const name = `live${size}-${k}`;
    await register(env.consul.address, { name, container: `${name}.0`, exposedPort: 80, hostPort: env.backendPorts[0] ?? 0 });
    await new Promise((r) => setTimeout(r, 200)); // let watches settle: only the API call is timed
    const t0 = performance.now();
    const wall0 = Date.now();
    await reconfigure(env, { serviceName: name, servicePath: `/${name}/`, ...checks(skipCheck) });
    const call = performance.now() - t0;
    const wall1 = Date.now();
    await firstOk(`${env.http}/${name}/x`);
    const total = performance.now() - t0;
    samples.push(total);
    calls.push(call);
    const applies = (await status(env)).Applies;
    const last = applies.filter((a) => a.trigger === `reconfigure ${name}`).at(-1);
    // Applies that ended during the call (what it may have waited behind), for the slowest sample.
    const during = applies.filter((a) => Date.parse(a.at) >= wall0 && Date.parse(a.at) <= wall1 && a !== last).map((a) => `${a.kind} ${ms(a.durationMs)} (${a.trigger})`);
    const kind = last?.kind ?? 'batched';
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    // Where the slowest sample's time went, on the console (an outlier's cause, not a table row).
    if (total > slowest.ms) slowest = { ms: total, what: `sample ${k + 1} of ${LIVE_SAMPLES}: API call ${ms(call)}, apply ${last ? ms(last.durationMs) : 'batched'} (${kind}); other applies ended during the call: ${during.join('; ') || 'none'}` };
  }
  console.log(`(new service at ${size}: slowest ${ms(slowest.ms)}: ${slowest.what})`);
  note(`| ${size.toLocaleString('en')} | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} | ${ms(pct(calls, 50))} | ${[...kinds].map(([k, n]) => `${n}× ${k}`).join(', ')} |`);
}

/**
 * Until `url` has answered `rounds` times in a row without `tag`: the instance behind the tag is
 * out of rotation (behind round-robin over a few instances, a live one shows up well within that).
 */
async function outOfRotation(url: string, tag: string, rounds: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let clean = 0;
  while (clean < rounds) {
    if (Date.now() > deadline) throw new Error(`${tag} still answers ${url} after ${timeoutMs} ms`);
    try {
      const res = await getOnce(url);
      clean = res.status === 200 && !res.text.includes(tag) ? clean + 1 : 0;
    } catch {
      clean = 0;
    }
  }
}

async function scaleEvents(env: Env): Promise<void> {
  const base = svc(0);
  const url = `${env.http}/${base}/`;
  const before = (await status(env)).ApplyCounts;
  const samples: number[] = [];
  const removals: number[] = [];
  for (let k = 0; k < SCALE_SAMPLES; k++) {
    // Backends b4 and b5 serve no service: traffic from one of them is the new instance's.
    const which = 4 + (k % 2);
    const t0 = performance.now();
    const id = await register(env.consul.address, { name: base, container: `${base}.scale${k}`, exposedPort: 80, hostPort: env.backendPorts[which] ?? 0 });
    // As many pollers as the service will have instances: traffic reaches the new one as soon
    // as HAProxy routes to it, within about one poll round trip.
    await firstOk(url, `"b${which}"`, 30_000, INSTANCES + 1);
    samples.push(performance.now() - t0);
    const t1 = performance.now();
    await deregister(env.consul.address, id);
    // Out of rotation before the next event: otherwise, while applies lag, the next event on the
    // same backend would be answered by this instance and timed as fast (seen at 10,000 services).
    await outOfRotation(url, `"b${which}"`, 4 * (INSTANCES + 1));
    removals.push(performance.now() - t1);
  }
  const after = (await status(env)).ApplyCounts;
  const applies = `${after.reload - before.reload} reloads, ${after.runtime - before.runtime} runtime applies`;
  note(`| ${SCALE_SAMPLES} scale events: registration until the new instance gets traffic | ${ms(pct(samples, 50))} | ${ms(pct(samples, 99))} | ${applies} |`);
  note(`| the same instances: deregistration until ${4 * (INSTANCES + 1)} requests in a row miss it | ${ms(pct(removals, 50))} | ${ms(pct(removals, 99))} | (same) |`);
}

function load(url: string, seconds: number, close: boolean, connections = 20): Promise<WrkResult> {
  return wrk(url, { seconds, close, connections, threads: 2 });
}

async function churnUnderLoad(env: Env, close: boolean): Promise<void> {
  const seconds = close ? LOAD_SECONDS.close : LOAD_SECONDS.keepAlive;
  const base = svc(1);
  const loaded = load(`${env.http}/${base}/`, seconds, close);
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
  const result = await loaded;
  const after = (await status(env)).ApplyCounts;
  note(
    `| ${close ? '`Connection: close`' : 'keep-alive'} | ${seconds} s | ${result.requests.toLocaleString('en')} | ${reconfigures} + ${scales} | ${result.errors} | ${result.non2xx} | ${Math.round(result.rps).toLocaleString('en')} | ${after.reload - before.reload} reloads, ${after.runtime - before.runtime} runtime |`,
  );
}

async function routeCost(env: Env, size: number): Promise<void> {
  const first = `${env.http}/${svc(0)}/`;
  const last = `${env.http}/${svc(size - 1)}/`;
  const a1 = await load(first, ROUTE_SECONDS, false, 50);
  const b1 = await load(last, ROUTE_SECONDS, false, 50);
  const a2 = await load(first, ROUTE_SECONDS, false, 50);
  const b2 = await load(last, ROUTE_SECONDS, false, 50);
  const firstRps = (a1.rps + a2.rps) / 2;
  const lastRps = (b1.rps + b2.rps) / 2;
  note(`| ${size.toLocaleString('en')} | ${Math.round(firstRps).toLocaleString('en')} (${Math.round(a1.rps)}, ${Math.round(a2.rps)}) | ${Math.round(lastRps).toLocaleString('en')} (${Math.round(b1.rps)}, ${Math.round(b2.rps)}) | **${(lastRps / firstRps).toFixed(2)}** | ${a1.errors + a2.errors + b1.errors + b2.errors + a1.non2xx + a2.non2xx + b1.non2xx + b2.non2xx} |`);
}


/** The sections measured at the largest size an environment reached. */
async function atLargest(env: Env, populated: number, loads: string[]): Promise<void> {
  note('\n## Scale event at the largest size\n\n| what | p50 | p99 | reloads |\n|---|---|---|---|');
  await scaleEvents(env);
  note(`\n## Routing ${loads.length > 1 ? 'them' : `${populated.toLocaleString('en')} services`} with ${CLIENTS} concurrent API clients\n\nAim: no Consul error.\n`);
  note('| services | time to route them | failed reconfigures |\n|---|---|---|');
  for (const l of loads) note(l);
  note(`\n## Consul load and memory at ${populated.toLocaleString('en')} services x ${INSTANCES} instances\n\nAim: at most 10 connections per proxy to Consul, no request while nothing changes apart from blocking-query renewals (and the replica report's session renewal, one per 5 s per proxy), control-plane RSS <= 150 MB.\n`);
  note('| services | connections to Consul (per proxy) | Consul requests while quiet (all proxies) | RSS (per proxy) |\n|---|---|---|---|');
  await consulLoad(env, populated);
  note('\n## Cold restart: a new proxy with a fresh STATE_DIR, every service in KV\n\nAim: ready and every route live within 5 s of the API coming up.\n');
  note('| services | API up until ready | API up until the first and last service route |\n|---|---|---|');
  await coldRestart(env, populated);
  note(`\n## Route cost: the 1st vs the ${populated.toLocaleString('en')}th route\n\nAim: ratio >= 0.9. wrk -t2 -c50, ${ROUTE_SECONDS} s per run, runs alternated (first, last, first, last).\n`);
  note('| services | 1st route req/s (runs) | last route req/s (runs) | last / first | errors |\n|---|---|---|---|---|');
  await routeCost(env, populated);
}

async function populateTo(env: Env, from: number, size: number, skipCheck: boolean, loads: string[]): Promise<void> {
  const { errors, seconds } = await populate(env, from, size, skipCheck);
  loads.push(`| ${size.toLocaleString('en')} | ${seconds.toFixed(0)} s | ${errors.length}${errors.length ? ` (first: ${errors[0]})` : ''} |`);
  const port = Number(new URL(env.consul.address).port);
  console.log(`(populated ${size} services in ${seconds.toFixed(1)} s, ${errors.length} errors; connections to Consul: ${env.proxies.map((p) => connectionsTo(p.proc.pid ?? 0, port)).join(', ')})`);
}

async function stopAll(env: Env): Promise<void> {
  for (const p of env.proxies) p.proc.kill('SIGTERM');
  for (const p of env.proxies) await waitForExit(p.proc.pid ?? 0, 45_000);
  await env.consul.stop('SIGKILL');
  rmSync(env.stateDir, { recursive: true, force: true });
}

const fds = (n: number | undefined) => `~${(n ?? 0).toLocaleString('en')} file descriptors`;

async function main(): Promise<void> {
  ensureInstalled('wrk', 'wrk');
  const started = new Date();
  const backends = spawn(process.execPath, [path.join(PROJECT_ROOT, 'dist/bench/backends.js'), '6'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const ports = new Promise<number[]>((resolve) => {
    createInterface({ input: backends.stdout as NodeJS.ReadableStream }).once('line', (l) => resolve((JSON.parse(l) as { ports: number[] }).ports));
  });
  let env: Env | undefined;
  try {
    env = await startAll(await ports);
    const limitNote =
      SKIPCHECK_SIZES.length + SKIPPED.length === 0
        ? ''
        : ` **This machine's hard open-files limit is ${FD_LIMIT?.toLocaleString('en')}** and cannot be raised here (Docker's default is 1,048,576). HAProxy reserves a descriptor per health-checked server slot, spare backends included, and past the limit the proxy refuses the change and names it (operations.md, "File descriptors"). ${SKIPCHECK_SIZES.map((n) => `${n.toLocaleString('en')} services need ${fds(FD_NEED.get(n))} with the defaults, ${fds(SKIPCHECK_NEED.get(n))} with \`skipCheck=true\`: that size runs separately, on a fresh Consul and fleet, with \`skipCheck=true\` on every service (its own sections below say so; everything else at its default).`).join(' ')}${SKIPPED.map((n) => ` Not run: ${n.toLocaleString('en')} services (${fds(FD_NEED.get(n))}, ${fds(SKIPCHECK_NEED.get(n))} even with \`skipCheck=true\`).`).join('')}`;
    note(`# Benchmarks\n\nRun ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${machine(`Consul 1.8.7 ${CONSUL_MODE === 'dev' ? 'dev agent' : 'single-server agent'}`)}.`);
    note(
      `${QUICK ? '**Quick run (BENCH_QUICK=1): smaller sizes, fewer samples.** ' : ''}Produced by \`npm run bench\` (bench/run.ts). What users run: three proxies of one fleet with their **default settings** (no tuning variable; only addresses, ports and state directories) on **${CONSUL_MODE === 'dev' ? 'one Consul dev agent (BENCH_CONSUL=dev: in-memory, and it pretty-prints every JSON answer, about twice the bytes of a normal agent\'s)' : 'one Consul server agent, as `npm start` brings up without CONSUL_ADDRESS (raft on disk; compact JSON answers, as every non-dev agent sends)'} with Consul's default limits** (200 connections per client address). Each service has ${INSTANCES} instances, ${NODES > 1 ? `spread over ${NODES} Consul nodes (one per Docker host, as with Registrator; registered through the catalog API)` : 'all on the agent\'s own node'}; ${CLIENTS} concurrent API clients route them, spread over the three proxies.${limitNote} wrk, HAProxy, the proxies, Consul and the Node backends share the same cores, so compare numbers within this run only.\n`,
    );
    note('## New service live: API call until the first 200 on its route\n\nAim: <= 50 ms p50 at 2,000 services, <= 100 ms p50 and <= 250 ms p99 at 10,000.\n');
    note('| services already routed | p50 | p99 | API call alone, p50 | how it was applied |\n|---|---|---|---|---|');
    let populated = 0;
    const loads: string[] = [];
    for (const size of RUN_SIZES) {
      await populateTo(env, populated, size, false, loads);
      populated = size;
      await newServiceLive(env, size, false);
      if (size !== RUN_SIZES[0]) continue;
      note(
        `\n## Scale event: instance registered in Consul until it gets traffic\n\nAim: <= 20 ms p50, 0 reloads. Timed from the registration call (the agent's own API, as Registrator registers on its host's agent: that node holds only the instances registered this way, the ${NODES} other nodes hold the services' instances; with the default CONSUL_WATCH_CONNECTIONS a proxy follows ${WATCHED_NODES} nodes with queries of their own, the biggest, and re-reads the others when the catalog changes) until a request through HAProxy is answered by the new instance; ${INSTANCES + 1} keep-alive pollers keep requests in flight, as traffic would (one poller behind round-robin would add a poll round trip per instance).\n`,
      );
      note('| what | p50 | p99 | reloads |\n|---|---|---|---|');
      await scaleEvents(env);
      note('\n## Failed requests during churn under load\n\nAim: 0 failed of at least 500,000. Each run: wrk -t2 -c20 on one route while the other services are reconfigured (one in five needs a reload) and the loaded service scales up and down through Consul.\n');
      note('| clients | duration | requests | reconfigures + scale events | socket errors | non-2xx | req/s | reloads |\n|---|---|---|---|---|---|---|---|');
      await churnUnderLoad(env, false);
      await churnUnderLoad(env, true);
      note('\n## Fleet: a change on one of three proxies until it is live on all three\n\nAim: p99 <= 150 ms, for new services and for changes to existing ones.\n');
      note('| what | p50 | p99 |\n|---|---|---|');
      await fleetBench(env);
      note('\n## New service live, continued\n\n| services already routed | p50 | p99 | API call alone, p50 | how it was applied |\n|---|---|---|---|---|');
    }
    if (populated > 0) await atLargest(env, populated, loads);
    for (const size of SKIPCHECK_SIZES) {
      await stopAll(env);
      env = undefined;
      env = await startAll(await ports);
      note(
        `\n# ${size.toLocaleString('en')} services, \`skipCheck=true\` on every service\n\nThis machine's open-files limit (above) does not fit ${size.toLocaleString('en')} services with HAProxy's checks on. A fresh Consul agent and a fresh fleet of three proxies, default settings; every service routed with \`skipCheck=true\` (no HAProxy health checks on its slots; Consul's checks still take failing instances out). The spare backends follow the services: no checks either.\n`,
      );
      const loadsAt: string[] = [];
      await populateTo(env, 0, size, true, loadsAt);
      note('## New service live\n\n| services already routed | p50 | p99 | API call alone, p50 | how it was applied |\n|---|---|---|---|---|');
      await newServiceLive(env, size, true);
      await atLargest(env, size, loadsAt);
    }
  } finally {
    pollAgent.destroy();
    if (env) await stopAll(env);
    backends.kill('SIGKILL');
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
