import { type ChildProcess, spawn } from 'node:child_process';
import http from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConsulAgent } from '../src/consul/agent.js';
import { register } from '../src/consul/registrator.js';
import { freePort } from '../src/util/ports.js';
import { waitForExit } from '../src/util/process.js';
import { PROJECT_ROOT, proxyArgs } from '../src/util/project.js';
import { ensureInstalled, keptNotes, machine, notebook, pct, startNginx, treeCpuMs, untilOk, wrk } from './common.js';

/**
 * `npm run bench:metrics` (the last part of `npm run bench`): what the metrics cost, side by side
 * in one run. The proxy as users run it, once with METRICS=true and PROMETHEUS_PORT set, both
 * scraped every second (ten times Prometheus' usual 15 s), and once with METRICS=false and no
 * exporter; each mode runs ROUNDS times, interleaved, on a fresh proxy and its own
 * PROXY_INSTANCE_NAME. Per run: requests/s through HAProxy (wrk) and the latency of a new route
 * (API call until the first 200 through HAProxy). Aim: within 2 %. BENCH_QUICK=1 shrinks it.
 */

const QUICK = process.env.BENCH_QUICK === '1';
const ROUTED = QUICK ? 50 : 200;
const SAMPLES = QUICK ? 10 : 30;
const SECONDS = QUICK ? 3 : 8;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (QUICK ? 1 : 3));
const { out, note } = notebook();

/** The status of one GET through HAProxy on a fresh connection (0: no answer). */
function status(port: number, urlPath: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, headers: { Connection: 'close' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
  });
}

interface Run {
  readonly metrics: boolean;
  readonly rps: number;
  readonly errors: number;
  readonly p50: number;
  readonly p99: number;
  /** The control plane's CPU over the run (ms), the Node process alone. */
  readonly cpuMs: number;
  /** HAProxy's CPU (master and workers) per request of the wrk run, µs: steadier than req/s on shared cores. */
  readonly haproxyUsPerRequest: number;
  readonly scrapes: number;
}

async function oneRun(dir: string, consul: ConsulAgent, backendPort: number, metrics: boolean, round: number): Promise<Run> {
  const [apiPort, httpPort, promPort] = await Promise.all([freePort(), freePort(), freePort()]);
  const instance = `bench-${metrics ? 'on' : 'off'}-${round}`;
  const proxy: ChildProcess = spawn(process.execPath, proxyArgs(), {
    env: {
      ...process.env,
      CONSUL_ADDRESS: consul.address,
      STATE_DIR: path.join(dir, instance),
      PORT: String(apiPort),
      IP: '127.0.0.1',
      DEFAULT_PORTS: String(httpPort),
      PROXY_INSTANCE_NAME: instance,
      LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      METRICS: String(metrics),
      ...(metrics ? { PROMETHEUS_PORT: String(promPort) } : {}),
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const api = `http://127.0.0.1:${apiPort}/v1/docker-flow-proxy`;
  let scraping = true;
  let scrapes = 0;
  const scraper = (async () => {
    while (metrics && scraping) {
      for (const url of [`http://127.0.0.1:${apiPort}/metrics`, `http://127.0.0.1:${promPort}/metrics`]) {
        try {
          const res = await fetch(url);
          await res.text();
          if (res.ok) scrapes++;
        } catch {
          // starting or stopping
        }
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  try {
    await untilOk(`${api}/successfulinitreload`);
    const name = (i: number) => `${instance}-r${i}`;
    for (let i = 0; i < ROUTED + SAMPLES; i++) await register(consul.address, { name: name(i), container: `${name(i)}.0`, exposedPort: 80, hostPort: backendPort });
    const reconfigure = async (i: number) => {
      const res = await fetch(`${api}/reconfigure?serviceName=${name(i)}&servicePath=/${name(i)}`);
      if (res.status !== 200) throw new Error(`reconfigure ${name(i)}: ${res.status} ${await res.text()}`);
    };
    for (let i = 0; i < ROUTED; i++) await reconfigure(i);
    const cpu0 = treeCpuMs(proxy.pid ?? 0);
    const times: number[] = [];
    for (let n = ROUTED; n < ROUTED + SAMPLES; n++) {
      const started = performance.now();
      await reconfigure(n);
      const deadline = Date.now() + 30_000;
      while ((await status(httpPort, `/${name(n)}`)) !== 200) if (Date.now() > deadline) throw new Error(`no 200 for ${name(n)}`);
      times.push(performance.now() - started);
    }
    const haproxyPid = Number(readFileSync(path.join(dir, instance, 'haproxy.pid'), 'utf8').trim());
    const h0 = treeCpuMs(haproxyPid);
    const load = await wrk(`http://127.0.0.1:${httpPort}/${name(0)}`, { seconds: SECONDS });
    const haproxyUsPerRequest = ((treeCpuMs(haproxyPid) - h0) * 1000) / Math.max(1, load.requests);
    const cpuMs = treeCpuMs(proxy.pid ?? 0) - cpu0;
    return { metrics, rps: load.rps, errors: load.errors + load.non2xx, p50: pct(times, 50), p99: pct(times, 99), cpuMs, haproxyUsPerRequest, scrapes };
  } finally {
    scraping = false;
    await scraper;
    proxy.kill('SIGTERM');
    if (!(await waitForExit(proxy.pid ?? 0, 45_000))) proxy.kill('SIGKILL');
  }
}

const docFile = path.join(PROJECT_ROOT, QUICK ? 'bench-results/benchmarks-metrics-quick.md' : 'docs/benchmarks-metrics.md');

async function main(): Promise<void> {
  ensureInstalled('wrk', 'wrk');
  ensureInstalled('nginx', 'nginx-light');
  const started = new Date();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-bench-metrics-'));
  const nginx = await startNginx(dir);
  const consul = await ConsulAgent.start({ bin: path.join(PROJECT_ROOT, '.tools/bin/consul'), mode: 'dev', dataDir: path.join(dir, 'consul') });
  const runs: Run[] = [];
  try {
    note(`# Benchmarks: the cost of metrics\n\nRun ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC on ${machine('nginx-light as the backend')}.`);
    note(
      `${QUICK ? '**Quick run (BENCH_QUICK=1): smaller sizes, fewer samples.** ' : ''}Produced by \`npm run bench:metrics\` (bench/metrics.ts). The proxy with its defaults on a Consul dev agent, ${ROUTED} path services routed first; **on**: \`METRICS=true\` and \`PROMETHEUS_PORT\` set, both endpoints scraped every second throughout; **off**: \`METRICS=false\`, no exporter. ${ROUNDS} run(s) of each, interleaved, each on a fresh proxy. Per run: ${SAMPLES} new routes timed from the API call until the first 200 through HAProxy, then wrk -t1 -c32 for ${SECONDS} s through HAProxy to one of them; the control plane's CPU is the Node process's over both. wrk, HAProxy, nginx, the proxy and Consul share the same cores: compare numbers within this run only.\n`,
    );
    note('| run | metrics | req/s | HAProxy CPU per request | errors | new route p50 | new route p99 | control-plane CPU | scrapes |\n|---|---|---|---|---|---|---|---|---|');
    const order = Array.from({ length: ROUNDS }, (_, r) => (r % 2 === 0 ? [true, false] : [false, true])).flat();
    for (const [i, metrics] of order.entries()) {
      const r = await oneRun(dir, consul, nginx.ports[0] ?? 0, metrics, i);
      runs.push(r);
      note(`| ${i + 1} | ${metrics ? 'on' : 'off'} | ${Math.round(r.rps).toLocaleString('en')} | ${r.haproxyUsPerRequest.toFixed(1)} µs | ${r.errors} | ${r.p50.toFixed(1)} ms | ${r.p99.toFixed(1)} ms | ${Math.round(r.cpuMs)} ms | ${r.scrapes} |`);
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const on = runs.filter((r) => r.metrics);
    const off = runs.filter((r) => !r.metrics);
    const rps = mean(on.map((r) => r.rps)) / mean(off.map((r) => r.rps));
    const p50 = mean(on.map((r) => r.p50)) / mean(off.map((r) => r.p50));
    const cpu = mean(on.map((r) => r.cpuMs)) / mean(off.map((r) => r.cpuMs));
    const hcpu = mean(on.map((r) => r.haproxyUsPerRequest)) / mean(off.map((r) => r.haproxyUsPerRequest));
    note(
      `\n**On / off** (means over the runs): requests/s **${rps.toFixed(3)}** (aim >= 0.98), HAProxy CPU per request **${hcpu.toFixed(3)}**, new-route p50 **${p50.toFixed(3)}** (aim <= 1.02), control-plane CPU **${cpu.toFixed(3)}**. Load average at the end: ${os.loadavg().map((l) => l.toFixed(1)).join(', ')} (other work on the machine moves every figure).`,
    );
  } finally {
    await consul.stop('SIGKILL');
    await nginx.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  mkdirSync(path.dirname(docFile), { recursive: true });
  writeFileSync(docFile, `${out.join('\n')}\n${QUICK ? '' : keptNotes(docFile)}`);
  console.log(`\nwritten to ${path.relative(PROJECT_ROOT, docFile)}`);
}

void main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
