import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadSettings } from '../src/config/settings.js';
import { ConsulAgent } from '../src/consul/agent.js';
import { renderSettings } from '../src/proxy.js';
import { register } from '../src/consul/registrator.js';
import { MAP_FILES, MAP_NAMES, type RenderSettings, renderConfig } from '../src/render/haproxy-config.js';
import type { ServiceState } from '../src/state/service-state.js';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';
import { PROJECT_ROOT, proxyArgs } from '../src/util/project.js';
import { ensureInstalled, HAND_WRITTEN_HEAD, keptNotes, machine, pct, startNginx, untilOk, type WrkResult, wrk, notebook, treeCpuMs, keptSection } from './common.js';
import { spec } from '../src/spec/defaults.js';

/**
 * `npm run bench:http`: the HTTP routing set's bars, measured side by side in one run and written
 * to docs/benchmarks-http.md. Default settings throughout: the proxy with no tuning variables, a
 * Consul dev agent with Consul's default limits (200 connections per client). nginx serves as the
 * backend (C, one worker: the proxy, not the backend, should be what limits), wrk drives the load;
 * all of it on 127.0.0.1, every phase bounded in time. BENCH_QUICK=1 shrinks it for a smoke run.
 *
 * 1. Data plane, from the renderer's own output for 10,000 domain services: the 1st vs the
 *    10,000th domain and a wildcard, plain and TLS, against a hand-written haproxy.cfg with the same
 *    certificate and backend.
 * 2. Control plane, the proxy as users run it: a new domain route live (API call until the first
 *    200 through HAProxy) with 1,000 services routed, and how it was applied.
 */

const QUICK = process.env.BENCH_QUICK === '1';
const DOMAINS = QUICK ? 1000 : 10_000;
const ROUTED = Number(process.env.BENCH_ROUTED ?? (QUICK ? 200 : 1000));
const SECONDS = QUICK ? 3 : 8;
const SAMPLES = QUICK ? 5 : 20;
const { out, note } = notebook();


const k = (n: number) => Math.round(n).toLocaleString('en');


function selfSigned(dir: string, cn: string): string {
  const key = path.join(dir, `${cn}.key`);
  const crt = path.join(dir, `${cn}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-days', '2', '-keyout', key, '-out', crt], { stdio: 'ignore' });
  const pem = path.join(dir, `${cn}.pem`);
  writeFileSync(pem, readFileSync(crt, 'utf8') + readFileSync(key, 'utf8'));
  return pem;
}

async function startHaproxy(files: string[]): Promise<ChildProcess> {
  execFileSync('haproxy', ['-c', ...files.flatMap((f) => ['-f', f])], { stdio: 'ignore' });
  const proc = spawn('haproxy', files.flatMap((f) => ['-f', f]), { stdio: ['ignore', 'ignore', 'inherit'] });
  await new Promise((r) => setTimeout(r, QUICK ? 1500 : 4000));
  return proc;
}

const domain = (i: number) => `d${i}.example.com`;

/** The status of one GET through HAProxy with this Host, on a fresh connection (0: no answer). */
function status(port: number, host: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/x', headers: { Host: host, Connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
  });
}

/** Part 1: the renderer's config for DOMAINS domain services vs a hand-written one. */
async function dataPlane(dir: string, backendPort: number): Promise<void> {
  const [plain, tls, handPlain, handTls, handHeaders] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  const pem = selfSigned(dir, 'bench.example.com');
  const crtList = path.join(dir, 'crt-list.txt');
  writeFileSync(crtList, `${pem}\n`);
  const instance = [{ id: 'bench:nginx:80', address: '127.0.0.1', port: backendPort }];
  // skipCheck: HAProxy reserves a file descriptor per server with health checks, and 10,000
  // backends with their default server slots need more than this machine's 20,000 (docs/operations.md,
  // "File descriptors"). Health checks do not change what this part measures, routing cost.
  const services: ServiceState[] = Array.from({ length: DOMAINS }, (_, i) => ({
    spec: spec({ serviceName: `d${i + 1}`, skipCheck: true, destinations: [{ servicePath: ['/'], serviceDomain: [domain(i + 1)] }] }),
    instances: instance,
  }));
  services.push({ spec: spec({ serviceName: 'wild', skipCheck: true, destinations: [{ servicePath: ['/'], serviceDomain: ['*.wild.example.com'] }] }), instances: instance });
  // The proxy's defaults, as it derives them from an empty environment; only ports and paths set.
  const settings: RenderSettings = {
    ...renderSettings(loadSettings({ STATE_DIR: dir, SECRETS_DIR: path.join(dir, 'no-secrets') }), path.join(dir, 'admin.sock')),
    listeners: [
      { port: plain, ssl: false, options: '' },
      { port: tls, ssl: true, options: '' },
    ],
    mapDir: dir,
    crtList,
  };
  const rendered = renderConfig(settings, services);
  for (const m of MAP_NAMES) writeFileSync(path.join(dir, MAP_FILES[m]), rendered.maps[m]);
  writeFileSync(path.join(dir, 'haproxy.cfg'), rendered.config);
  writeFileSync(path.join(dir, 'credentials.cfg'), rendered.secrets);
  // The same global and defaults, one frontend, one backend: what an operator would write by hand.
  const handCfg = path.join(dir, 'hand.cfg');
  writeFileSync(
    handCfg,
    `${HAND_WRITTEN_HEAD}frontend hand
    bind 127.0.0.1:${handPlain}
    bind 127.0.0.1:${handTls} ssl crt ${pem} alpn h2,http/1.1
    default_backend b
# The same, plus the headers the managed config adds for the instances (X-Forwarded-For, -Proto).
frontend hand_headers
    bind 127.0.0.1:${handHeaders} ssl crt ${pem} alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    default_backend b
backend b
    server s1 127.0.0.1:${backendPort} check
`,
  );
  const managed = await startHaproxy([path.join(dir, 'haproxy.cfg'), path.join(dir, 'credentials.cfg')]);
  const hand = await startHaproxy([handCfg]);
  try {
    const cases: { label: string; url: string; host?: string }[] = [
      { label: 'hand-written, plain', url: `http://127.0.0.1:${handPlain}/x` },
      { label: '1st domain, plain', url: `http://127.0.0.1:${plain}/x`, host: domain(1) },
      { label: `${k(DOMAINS)}th domain, plain`, url: `http://127.0.0.1:${plain}/x`, host: domain(DOMAINS) },
      { label: 'wildcard domain, plain', url: `http://127.0.0.1:${plain}/x`, host: 'a.wild.example.com' },
      { label: 'hand-written, TLS', url: `https://127.0.0.1:${handTls}/x` },
      { label: 'hand-written + forwarding headers, TLS', url: `https://127.0.0.1:${handHeaders}/x` },
      { label: '1st domain, TLS', url: `https://127.0.0.1:${tls}/x`, host: domain(1) },
      { label: `${k(DOMAINS)}th domain, TLS`, url: `https://127.0.0.1:${tls}/x`, host: domain(DOMAINS) },
    ];
    // Two rounds, cases interleaved, so drift on a noisy machine hits every case alike.
    const results = new Map<string, WrkResult[]>();
    /** HAProxy CPU µs per request, per case and run. */
    const cpu = new Map<string, number[]>();
    for (let round = 0; round < 2; round++) {
      for (const c of cases) {
        const pid = (c.label.startsWith('hand-written') ? hand.pid : managed.pid) ?? 0;
        const before = treeCpuMs(pid);
        const r = await wrk(c.url, { seconds: SECONDS, ...(c.host ? { host: c.host } : {}) });
        results.set(c.label, [...(results.get(c.label) ?? []), r]);
        cpu.set(c.label, [...(cpu.get(c.label) ?? []), ((treeCpuMs(pid) - before) * 1000) / Math.max(1, r.requests)]);
      }
    }
    const cpuMean = (label: string) => {
      const xs = cpu.get(label) ?? [];
      return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    };
    const mean = (label: string) => {
      const rs = results.get(label) ?? [];
      return rs.reduce((a, r) => a + r.rps, 0) / Math.max(1, rs.length);
    };
    note(
      `\n## Data plane: the renderer's config for ${k(DOMAINS)} domain services\n\nHAProxy CPU per request is the user + system time of its processes (from /proc) over the run's requests: wrk and nginx share the same two cores, which moves requests/s by 10-20 % between runs of the same case but barely moves CPU per request. One HAProxy runs the config the renderer writes for ${k(DOMAINS)} services, each with its own \`serviceDomain\` and \`/\`, plus a \`*.\` wildcard service; another runs a hand-written config (one frontend, \`default_backend\`) with the same certificate and the same nginx backend. wrk -t1 -c32, ${SECONDS} s per run, two rounds with the cases interleaved. TLS: the connection is kept alive, so this measures TLS record work, not handshakes.\n`,
    );
    note('| case | req/s (runs) | errors + non-2xx | vs hand-written | HAProxy CPU per request | hand-written / this (CPU) |\n|---|---|---|---|---|---|');
    for (const c of cases) {
      const rs = results.get(c.label) ?? [];
      const baseLabel = c.label.endsWith('TLS') ? 'hand-written, TLS' : 'hand-written, plain';
      note(
        `| ${c.label} | ${k(mean(c.label))} (${rs.map((r) => k(r.rps)).join(', ')}) | ${rs.reduce((a, r) => a + r.errors + r.non2xx, 0)} | ${(mean(c.label) / mean(baseLabel)).toFixed(2)} | ${cpuMean(c.label).toFixed(1)} µs (${(cpu.get(c.label) ?? []).map((x) => x.toFixed(1)).join(', ')}) | ${(cpuMean(baseLabel) / cpuMean(c.label)).toFixed(2)} |`,
      );
    }
    note(
      `\n**${k(DOMAINS)}th domain / 1st domain:** plain **${(mean(`${k(DOMAINS)}th domain, plain`) / mean('1st domain, plain')).toFixed(2)}**, TLS **${(mean(`${k(DOMAINS)}th domain, TLS`) / mean('1st domain, TLS')).toFixed(2)}** (aim >= 0.9). **Managed / hand-written, TLS:** **${(mean(`${k(DOMAINS)}th domain, TLS`) / mean('hand-written, TLS')).toFixed(2)}** (aim >= 0.97); against the hand-written config that also adds the forwarding headers: **${(mean(`${k(DOMAINS)}th domain, TLS`) / mean('hand-written + forwarding headers, TLS')).toFixed(2)}**. In HAProxy CPU per request (hand-written / managed, 1.00 = as cheap): **${(cpuMean('hand-written, TLS') / cpuMean(`${k(DOMAINS)}th domain, TLS`)).toFixed(2)}** TLS, **${(cpuMean('hand-written, plain') / cpuMean(`${k(DOMAINS)}th domain, plain`)).toFixed(2)}** plain.`,
    );
  } finally {
    managed.kill('SIGKILL');
    hand.kill('SIGKILL');
    await waitForExit(managed.pid ?? 0, 5000);
    await waitForExit(hand.pid ?? 0, 5000);
  }
}

interface Status {
  ApplyCounts: { reload: number; runtime: number; none: number };
}

/** Part 2: the proxy as users run it, with ROUTED domain services. */
async function controlPlane(dir: string, backendPort: number): Promise<void> {
  const consul = await ConsulAgent.start({ bin: path.join(PROJECT_ROOT, '.tools/bin/consul'), mode: 'dev', dataDir: path.join(dir, 'consul') });
  const apiPort = await freePort();
  const httpPort = await freePort();
  const proxy = spawn(process.execPath, proxyArgs(), {
    // Only what a test run must set: addresses, ports and the state directory. No tuning.
    env: { ...process.env, CONSUL_ADDRESS: consul.address, STATE_DIR: path.join(dir, 'proxy'), PORT: String(apiPort), IP: '127.0.0.1', DEFAULT_PORTS: String(httpPort), LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const api = `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`;
  const reconfigure = async (params: Record<string, string>) => {
    const res = await fetch(`${api}/reconfigure?${new URLSearchParams(params)}`);
    if (res.status !== 200) throw new Error(`reconfigure ${JSON.stringify(params)}: ${res.status} ${await res.text()}`);
  };
  const counts = async () => ((await (await fetch(`${api}/status`)).json()) as Status).ApplyCounts;
  const firstOk = async (host: string) => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if ((await status(httpPort, host)) === 200) return;
      if (Date.now() > deadline) throw new Error(`no 200 for ${host}`);
    }
  };
  const consulErrors: string[] = [];
  try {
    await untilOk(`${api}/successfulinitreload`);
    const name = (i: number) => `r${i}`;
    const t0 = performance.now();
    for (let i = 0; i < ROUTED + SAMPLES; i++) {
      await register(consul.address, { name: name(i), container: `${name(i)}.0`, exposedPort: 80, hostPort: backendPort });
    }
    // One client at a time: with Consul's default limits, concurrent clients are issue 9's case.
    for (let i = 0; i < ROUTED; i++) {
      await reconfigure({ serviceName: name(i), serviceDomain: `${name(i)}.example.com` }).catch((err: unknown) => {
        consulErrors.push((err as Error).message);
      });
    }
    const populated = (performance.now() - t0) / 1000;
    const measure = async (label: string, params: (n: number) => Record<string, string>, host: (n: number) => string) => {
      const before = await counts();
      const times: number[] = [];
      for (let n = 0; n < SAMPLES; n++) {
        const started = performance.now();
        await reconfigure(params(n));
        await firstOk(host(n));
        times.push(performance.now() - started);
      }
      const after = await counts();
      note(`| ${label} | ${times.length} | ${pct(times, 50).toFixed(1)} ms | ${pct(times, 99).toFixed(1)} ms | ${after.reload - before.reload} reloads, ${after.runtime - before.runtime} runtime |`);
    };
    note(
      `\n## Control plane: a new domain route live\n\nThe proxy with its default settings on a Consul dev agent with Consul's default limits; ${k(ROUTED)} domain services routed first, one API client at a time (${populated.toFixed(0)} s${consulErrors.length ? `; **${consulErrors.length} reconfigures failed**, first: ${consulErrors[0]}` : ', no error'}). Time from the API call until the first 200 through HAProxy for the new host. Aim: p50 <= 50 ms, no reload when the backend and certificate exist.\n`,
    );
    note('| change | samples | p50 | p99 | how it was applied |\n|---|---|---|---|---|');
    await measure('a new service with a domain (takes a spare backend)', (n) => ({ serviceName: name(ROUTED + n), serviceDomain: `${name(ROUTED + n)}.example.com` }), (n) => `${name(ROUTED + n)}.example.com`);
    await measure('one more domain on a routed service (its backend exists)', (n) => ({ serviceName: name(n), serviceDomain: `${name(n)}.example.com,extra${n}.example.com` }), (n) => `extra${n}.example.com`);
  } finally {
    const stopStarted = performance.now();
    proxy.kill('SIGTERM');
    if (!(await waitForExit(proxy.pid ?? 0, 45_000))) {
      note(`\n**The proxy did not exit within 45 s of SIGTERM** (its shutdown watchdog should have ended it after 40 s); killed.`);
      proxy.kill('SIGKILL');
    } else console.log(`(proxy stopped in ${((performance.now() - stopStarted) / 1000).toFixed(1)} s)`);
    await consul.stop('SIGKILL');
  }
}

const docFile = path.join(PROJECT_ROOT, QUICK ? 'bench-results/benchmarks-http-quick.md' : 'docs/benchmarks-http.md');

async function main(): Promise<void> {
  ensureInstalled('wrk', 'wrk');
  ensureInstalled('nginx', 'nginx-light');
  const started = new Date();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-bench-http-'));
  const nginx = await startNginx(dir);
  try {
    note(`# Benchmarks: the HTTP routing set\n\nRun ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${machine('nginx-light as the backend')}.`);
    note(
      `${QUICK ? '**Quick run (BENCH_QUICK=1): smaller sizes, fewer samples.** ' : ''}Produced by \`npm run bench:http\` (bench/http.ts). wrk, HAProxy, nginx, the proxy and Consul share the same cores: compare numbers within this run only.`,
    );
    // BENCH_PART=data or control runs one part alone; the other part's section is kept from the
    // doc as it was, and the doc says so.
    const port = nginx.ports[0] ?? 0;
    const part = process.env.BENCH_PART;
    const kept = (heading: string) => {
      const section = keptSection(docFile, heading);
      if (section) note(`\n${section.replace(/\n/, `\n\n_Kept from an earlier run of this doc (only BENCH_PART=${part} ran on ${started.toISOString().slice(0, 10)})._\n`)}`);
    };
    if (part !== 'control') await dataPlane(dir, port);
    else kept('Data plane');
    if (part !== 'data') await controlPlane(dir, port);
    else kept('Control plane');
  } finally {
    await nginx.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const file = docFile;
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, `${out.join('\n')}\n${QUICK ? '' : keptNotes(file)}`);
  console.log(`\nwritten to ${path.relative(PROJECT_ROOT, file)}`);
}


void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
