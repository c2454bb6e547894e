import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { parseShowProc, socketCommand } from '../../src/haproxy/socket.js';
import { freePort } from '../../src/util/ports.js';
import { commandArgs, isGone, killQuietly, waitForExit } from '../../src/util/process.js';
import { type Backend, callApi, deregister, eventually, liveConfig, registerLikeRegistrator, startBackend, startConsul, startProxy, stopConsul, type TestProxy, tempDir, through, spawnProxyProcess, track } from '../helpers/harness.js';
import { type LoadResult, runLoad } from '../helpers/load.js';
import { hello, makeCert } from '../helpers/tls.js';

/**
 * HAProxy is the data plane and outlives the control plane: a proxy killed, or stopped to be
 * upgraded, and started again with the same STATE_DIR takes over the HAProxy still serving, and no
 * request fails meanwhile. The proxy runs as its own process (`node dist/src/main.js`), HAProxy
 * and Consul are real, the load runs on loopback from this process for a few seconds per case.
 */
describe('restarts of the control plane cost no request', () => {
  let consul: ConsulAgent;
  const backends: Backend[] = [];
  const children: ChildProcess[] = [];
  const strangers: number[] = [];
  const dirs: string[] = [];

  before(async () => {
    consul = await startConsul();
    for (const i of [0, 1]) await addInstance('web', i);
  });

  after(async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        c.kill('SIGTERM');
        await waitForExit(c.pid ?? 0, 20_000);
      }
    }
    // Anything still serving a test directory (a test that failed half-way) goes by PID.
    for (const dir of dirs) {
      const pid = pidIn(dir);
      if (pid !== undefined && loadsOurConfig(pid, dir)) {
        killQuietly(-pid, 'SIGKILL');
        killQuietly(pid, 'SIGKILL');
      }
    }
    for (const pid of strangers) killQuietly(pid, 'SIGKILL');
    for (const b of backends) await b.close();
    await stopConsul(consul);
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  async function addInstance(name: string, i: number): Promise<Backend> {
    const b = await startBackend(`${name}.${i}`);
    backends.push(b);
    await registerLikeRegistrator(consul.address, { name, container: `${name}.${i}`, exposedPort: 8080, hostPort: b.port });
    return b;
  }

  interface Proxy {
    readonly child: ChildProcess;
    readonly api: string;
    readonly output: () => string;
  }

  interface Site {
    readonly stateDir: string;
    readonly apiPort: number;
    readonly httpPort: number;
    readonly url: string;
  }

  async function site(): Promise<Site> {
    const stateDir = tempDir();
    dirs.push(stateDir);
    const httpPort = await freePort();
    return { stateDir, apiPort: await freePort(), httpPort, url: `http://127.0.0.1:${httpPort}/web` };
  }

  /** `node dist/src/main.js` on this site; resolves once `waitFor` shows in its log. */
  async function launch(s: Site, env: Record<string, string> = {}, waitFor = /ready: serving /): Promise<Proxy> {
    const proxy = spawnProxyProcess({
      CONSUL_ADDRESS: consul.address,
      STATE_DIR: s.stateDir,
      SECRETS_DIR: path.join(s.stateDir, 'no-secrets'),
      PORT: String(s.apiPort),
      IP: '127.0.0.1',
      DEFAULT_PORTS: String(s.httpPort),
      LOG_LEVEL: 'info',
      LOG_FORMAT: 'json',
      ...env,
    });
    children.push(proxy.child);
    await proxy.waitFor(waitFor);
    const { child } = proxy;
    // Whatever HAProxy this proxy serves with is killed at the latest when the test process exits.
    track(pidIn(s.stateDir));
    return { child, api: `http://127.0.0.1:${s.apiPort}/v1/docker-flow-proxy`, output: proxy.output };
  }

  async function exited(p: Proxy): Promise<number | null> {
    if (p.child.exitCode === null && p.child.signalCode === null) await once(p.child, 'exit');
    return p.child.exitCode;
  }

  const pidIn = (dir: string): number | undefined => {
    try {
      return Number(readFileSync(path.join(dir, 'haproxy.pid'), 'utf8'));
    } catch {
      return undefined;
    }
  };

  function loadsOurConfig(pid: number, dir: string): boolean {
    const args = commandArgs(pid) ?? [];
    return args.some((a, i) => a === '-f' && args[i + 1] === path.join(dir, 'haproxy.cfg'));
  }

  const showProc = async (s: Site) => parseShowProc(await socketCommand(path.join(s.stateDir, 'haproxy-master.sock'), 'show proc'));

  async function status(p: Proxy): Promise<{ Haproxy: { masterPid: number; takenOver: boolean; running: boolean }; Applies: { kind: string; trigger: string; reloadBecause?: string[] }[] }> {
    return (await fetch(`${p.api}/status`)).json() as never;
  }

  /** The instances a few requests reach. */
  async function reached(s: Site, n = 12): Promise<Set<string>> {
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const res = await fetch(s.url);
      if (res.status === 200) seen.add(((await res.json()) as { instance: string }).instance);
      else await res.body?.cancel();
    }
    return seen;
  }

  /** Keep-alive and `Connection: close` clients at once, until stopped. */
  function load(s: Site): { stop: () => Promise<{ keepAlive: LoadResult; close: LoadResult }> } {
    const ctrl = new AbortController();
    const keepAlive = runLoad(s.url, { workers: 6, durationMs: 120_000, keepAlive: true, stop: ctrl.signal });
    const close = runLoad(s.url, { workers: 3, durationMs: 120_000, keepAlive: false, stop: ctrl.signal });
    return {
      stop: async () => {
        ctrl.abort();
        return { keepAlive: await keepAlive, close: await close };
      },
    };
  }

  function assertNoFailure(r: { keepAlive: LoadResult; close: LoadResult }, what: string): void {
    for (const [kind, result] of Object.entries(r)) {
      assert.deepEqual({ failed: result.failed, errors: result.errors }, { failed: 0, errors: [] }, `${what}, ${kind}: ${result.ok} ok`);
      assert.ok(result.ok > 100, `${what}, ${kind}: enough requests to mean something (${result.ok})`);
    }
    console.log(`${what}: ${r.keepAlive.ok} keep-alive and ${r.close.ok} close requests, 0 failed`);
  }

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('(a) SIGKILL of the proxy under load, then a start with the same STATE_DIR: the same master serves on, 0 failed requests', async () => {
    const s = await site();
    const first = await launch(s);
    assert.equal((await fetch(`${first.api}/reconfigure?serviceName=web&servicePath=/web`)).status, 200);
    assert.deepEqual(await reached(s), new Set(['web.0', 'web.1']));
    const master = pidIn(s.stateDir);
    assert.ok(master);
    const workers = (await showProc(s)).workers;
    await sleep(1200); // the files of the last apply are on disk well before a kill

    const traffic = load(s);
    await sleep(500);
    first.child.kill('SIGKILL');
    await exited(first);
    assert.ok(!isGone(master), 'HAProxy outlives the SIGKILLed proxy');
    await sleep(300);
    const second = await launch(s);
    await sleep(700);
    // The load keeps running through a scale event on the master taken over (runtime API).
    await addInstance('web', 2);
    await eventually('the new instance in rotation', () => reached(s), (seen) => seen.has('web.2'));
    await sleep(300);
    assertNoFailure(await traffic.stop(), 'SIGKILL and restart');

    assert.equal(pidIn(s.stateDir), master, 'the pid file names the same master');
    const st = await status(second);
    assert.deepEqual({ masterPid: st.Haproxy.masterPid, takenOver: st.Haproxy.takenOver, running: st.Haproxy.running }, { masterPid: master, takenOver: true, running: true });
    assert.ok(
      st.Applies.some((a) => a.kind === 'none' && /start-up restore.*serves it already/.test(a.trigger)),
      `the restore kept HAProxy as it was: ${JSON.stringify(st.Applies)}`,
    );
    assert.deepEqual((await showProc(s)).workers, workers, 'the same worker: no reload at all');
    assert.match(second.output(), /took over HAProxy master/);

    // Supervised by polling: the master taken over dies, the proxy starts HAProxy again.
    process.kill(master, 'SIGKILL');
    const restarted = await eventually('a new HAProxy master', () => status(second), (x) => x.Haproxy.running && x.Haproxy.masterPid !== master);
    assert.equal(restarted.Haproxy.takenOver, false, 'the new master is the proxy child');
    track(restarted.Haproxy.masterPid);
    assert.deepEqual(await eventually('the routes served again', () => reached(s), (seen) => seen.size === 3), new Set(['web.0', 'web.1', 'web.2']));

    // A plain SIGTERM (HAPROXY_ON_STOP=stop, the default) stops HAProxy with the proxy.
    second.child.kill('SIGTERM');
    assert.equal(await exited(second), 0);
    assert.ok(await waitForExit(restarted.Haproxy.masterPid, 5000), 'HAProxy stopped with the proxy');
  });

  it('(b) graceful restarts under load (SIGTERM with HAPROXY_ON_STOP=keep, SIGUSR2): 0 failed requests, the restored config reloaded in seamlessly', async () => {
    const s = await site();
    const first = await launch(s, { HAPROXY_ON_STOP: 'keep' });
    assert.equal((await fetch(`${first.api}/reconfigure?serviceName=web&servicePath=/web`)).status, 200);
    const master = pidIn(s.stateDir);
    assert.ok(master);
    const workersBefore = (await showProc(s)).workers;

    const traffic = load(s);
    await sleep(500);
    first.child.kill('SIGTERM');
    assert.equal(await exited(first), 0);
    assert.match(first.output(), /leaving HAProxy master \d+ serving/);
    assert.ok(!isGone(master), 'HAProxy keeps serving');
    // While no proxy runs, an instance comes: the restore differs from what HAProxy serves.
    await addInstance('web', 3);
    const second = await launch(s, { LOG_LEVEL: 'debug' }); // HAPROXY_ON_STOP unset: stop
    await sleep(700);
    const st = await status(second);
    assert.equal(st.Haproxy.masterPid, master);
    // The master taken over is heard again (its output goes through STATE_DIR's named pipe).
    assert.match(second.output(), new RegExp(`"scope":"dfp:haproxy"[^\\n]*"pid":${master}[^\\n]*Loading success`));
    const restore = st.Applies.find((a) => /start-up restore/.test(a.trigger));
    assert.equal(restore?.kind, 'reload', JSON.stringify(st.Applies));
    assert.match(String(restore?.reloadBecause), /the restored services differ/);
    const workersAfter = (await showProc(s)).workers;
    assert.notDeepEqual(workersAfter, workersBefore, 'reloaded: a new worker under the same master');
    assert.ok((await reached(s, 20)).has('web.3'), 'the restored config serves the new instance');

    // SIGUSR2: an upgrade of the control plane whatever HAPROXY_ON_STOP says.
    second.child.kill('SIGUSR2');
    assert.equal(await exited(second), 0);
    assert.ok(!isGone(master), 'HAProxy keeps serving after SIGUSR2');
    const third = await launch(s);
    await sleep(700);
    assertNoFailure(await traffic.stop(), 'two graceful restarts');
    const st3 = await status(third);
    assert.equal(st3.Haproxy.masterPid, master, 'still the first master');
    assert.ok(st3.Applies.some((a) => a.kind === 'none' && /serves it already/.test(a.trigger)), JSON.stringify(st3.Applies));
    assert.deepEqual((await showProc(s)).workers, workersAfter, 'nothing changed: no reload');

    third.child.kill('SIGTERM');
    assert.equal(await exited(third), 0);
    assert.ok(await waitForExit(master, 5000), 'a plain SIGTERM stops the master taken over');
  });

  it('(c) a pid file naming a process that is not our HAProxy: left alone, HAProxy starts fresh, from the files of the last run', async () => {
    const s = await site();
    // A recycled PID: some other process now has it.
    const sleeper = spawn('sleep', ['120'], { stdio: 'ignore' });
    assert.ok(sleeper.pid);
    strangers.push(sleeper.pid);
    writeFileSync(path.join(s.stateDir, 'haproxy.pid'), `${sleeper.pid}\n`);
    const first = await launch(s);
    assert.match(first.output(), new RegExp(`names PID ${sleeper.pid}, which is not an HAProxy master of this state directory`));
    assert.ok(!isGone(sleeper.pid), 'the stranger is not signalled');
    const master = pidIn(s.stateDir);
    assert.ok(master && master !== sleeper.pid && loadsOurConfig(master, s.stateDir), 'a fresh HAProxy of ours');
    assert.equal((await fetch(`${first.api}/reconfigure?serviceName=web&servicePath=/web`)).status, 200);
    assert.ok((await reached(s)).size > 0);
    first.child.kill('SIGTERM');
    assert.equal(await exited(first), 0);
    assert.ok(await waitForExit(master, 5000));

    // Another directory's HAProxy under the PID in the file, and a Consul that does not answer:
    // the stranger is left alone, and the routes serve from the files the last run left.
    const other = tempDir();
    dirs.push(other);
    const otherPort = await freePort();
    writeFileSync(path.join(other, 'h.cfg'), `global\n    master-worker\ndefaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n    timeout server 5s\nfrontend f\n    bind 127.0.0.1:${otherPort}\n    http-request return status 200\n`);
    const foreign = spawn('haproxy', ['-W', '-S', path.join(other, 'm.sock'), '-f', path.join(other, 'h.cfg')], { stdio: 'ignore', detached: true });
    assert.ok(foreign.pid);
    strangers.push(foreign.pid);
    track(foreign.pid);
    await eventually('the foreign HAProxy', () => fetch(`http://127.0.0.1:${otherPort}/`).then((r) => r.status), (x) => x === 200);
    writeFileSync(path.join(s.stateDir, 'haproxy.pid'), `${foreign.pid}\n`);
    const answers: string[] = [];
    let polling = true;
    const poller = (async () => {
      while (polling) {
        answers.push(await fetch(s.url).then(
          async (r) => {
            await r.body?.cancel();
            return String(r.status);
          },
          () => 'refused',
        ));
        await sleep(5);
      }
    })();
    const deadConsul = `http://127.0.0.1:${await freePort()}`;
    const second = await launch(s, { CONSUL_ADDRESS: deadConsul }, /API listening/);
    await eventually('the route served', async () => answers.at(-1), (a) => a === '200');
    polling = false;
    await poller;
    const firstAnswer = answers.findIndex((a) => a !== 'refused');
    assert.deepEqual([...new Set(answers.slice(firstAnswer))], ['200'], 'from the first answer on, the route serves (never a 503)');
    assert.equal((await fetch(`${second.api}/successfulinitreload`)).status, 503, 'the restore from Consul has not happened: the files of the last run serve');
    assert.ok(!isGone(foreign.pid), 'the foreign HAProxy is not signalled');
    assert.equal((await fetch(`http://127.0.0.1:${otherPort}/`)).status, 200);
    const fresh = pidIn(s.stateDir);
    assert.ok(fresh && fresh !== foreign.pid && loadsOurConfig(fresh, s.stateDir));
    const st = await status(second);
    assert.equal(st.Haproxy.takenOver, false);
    assert.match(st.Applies[0]?.trigger ?? '', /start from the files of the last run/);
    second.child.kill('SIGTERM');
    assert.equal(await exited(second), 0);
    assert.ok(await waitForExit(fresh, 5000));
  });
});

/**
 * What the first apply after a takeover does when the master does not serve exactly what the
 * restore renders: one reload into the restored config, for a reason it names; slot holders stay
 * where they were. In-process proxies (stop({ keepHaproxy: true }) leaves HAProxy serving).
 */
describe('the first apply after a takeover', () => {
  let consul: ConsulAgent;
  const backends: Backend[] = [];
  const ids: string[] = [];

  before(async () => {
    consul = await startConsul();
    for (const i of [0, 1]) {
      const b = await startBackend(`app.${i}`);
      backends.push(b);
      ids.push((await registerLikeRegistrator(consul.address, { name: 'app', container: `app.${i}`, exposedPort: 8080, hostPort: b.port })).id);
    }
  });

  after(async () => {
    for (const b of backends) await b.close();
    await stopConsul(consul);
  });

  /** A proxy routing app at /app, stopped leaving HAProxy serving; `meanwhile` runs, then the next start. */
  async function takeover(env: Record<string, string>, meanwhile: (stateDir: string) => Promise<void> | void, next: Record<string, string> = {}): Promise<{ p: TestProxy; master: number; restore: { kind: string; trigger: string; reloadBecause?: string[] } | undefined }> {
    const stateDir = tempDir();
    const base = { STATE_DIR: stateDir, DEFAULT_PORTS: String(await freePort()), ...env };
    const first = await startProxy(consul.address, base);
    assert.equal((await callApi(first, 'reconfigure', { serviceName: 'app', servicePath: '/app' })).status, 200);
    const master = first.proxy.haproxy.status().masterPid ?? 0;
    await first.proxy.stop({ keepHaproxy: true });
    assert.ok(!isGone(master));
    await meanwhile(stateDir);
    const p = await startProxy(consul.address, { ...base, ...next });
    const applies = (await callApi(p, 'status')).body.Applies as { kind: string; trigger: string; reloadBecause?: string[] }[];
    const restore = applies.find((a) => /start-up restore/.test(a.trigger));
    return { p, master, restore };
  }

  /** The restore reloaded the master taken over, for this reason, and it serves. */
  async function assertReloaded(t: Awaited<ReturnType<typeof takeover>>, because: RegExp): Promise<void> {
    assert.equal(t.p.proxy.haproxy.status().masterPid, t.master, 'taken over, and still the same master');
    assert.equal(t.restore?.kind, 'reload', JSON.stringify(t.restore));
    assert.match(String(t.restore?.reloadBecause), because);
    assert.equal((await through(t.p, '/app')).status, 200);
  }

  it('no pid file, but a master of this directory answers on its socket: taken over as it is', async () => {
    const t = await takeover({}, (dir) => rmSync(path.join(dir, 'haproxy.pid')));
    try {
      assert.equal(t.p.proxy.haproxy.status().masterPid, t.master);
      assert.equal(t.restore?.kind, 'none', JSON.stringify(t.restore));
      assert.equal(Number(readFileSync(path.join(t.p.stateDir, 'haproxy.pid'), 'utf8')), t.master, 'the pid file is written again');
    } finally {
      await t.p.stop();
    }
  });

  it('runtime API changes the files did not show yet: reloaded', async () => {
    const t = await takeover({}, (dir) => writeFileSync(path.join(dir, 'haproxy-live.pending'), ''));
    try {
      await assertReloaded(t, /runtime API changes were under way/);
    } finally {
      await t.p.stop();
    }
  });

  it('files on disk the master was not confirmed to serve (a reload under way): reloaded, and the files rewritten', async () => {
    const t = await takeover({}, (dir) => writeFileSync(path.join(dir, 'haproxy.cfg'), `${readFileSync(path.join(dir, 'haproxy.cfg'), 'utf8')}# half-way\n`));
    try {
      await assertReloaded(t, /not the ones it was last confirmed to serve/);
      assert.doesNotMatch(readFileSync(path.join(t.p.stateDir, 'haproxy.cfg'), 'utf8'), /half-way/);
    } finally {
      await t.p.stop();
    }
  });

  it('other settings: reloaded into them', async () => {
    const t = await takeover({}, () => undefined, { TIMEOUT_CONNECT: '7' });
    try {
      await assertReloaded(t, /the settings changed/);
      assert.match(await liveConfig(t.p), /timeout connect 7s/);
    } finally {
      await t.p.stop();
    }
  });

  it('a certificate changed on disk: reloaded, the new one served', async () => {
    const work = tempDir();
    const certs = path.join(work, 'certs');
    mkdirSync(certs);
    const tlsPort = await freePort();
    const before = makeCert(work, 'a.example.com');
    const after = makeCert(work, 'a.example.com');
    writeFileSync(path.join(certs, 'a.example.com.pem'), before.bundle);
    const env = { CERTS_DIR: certs, DEFAULT_PORTS: `${await freePort()},${tlsPort}:ssl` };
    try {
      const t = await takeover(env, () => writeFileSync(path.join(certs, 'a.example.com.pem'), after.bundle));
      try {
        await assertReloaded(t, /certificate files changed/);
        assert.equal((await hello(tlsPort, 'a.example.com')).fingerprint256, after.fingerprint256);
      } finally {
        await t.p.stop();
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('scale events and a service added at run time, written by patching the files: the restore renders those very files, kept as it is', async () => {
    const base = { STATE_DIR: tempDir(), DEFAULT_PORTS: String(await freePort()) };
    const first = await startProxy(consul.address, base);
    const status = async (p: TestProxy) => (await callApi(p, 'status')).body as { Applies: { kind: string; trigger: string }[]; FileWrites: { patched: number; rendered: number } };
    const instance = async (name: string, i: number) => {
      const b = await startBackend(`${name}.${i}`);
      backends.push(b);
      return (await registerLikeRegistrator(consul.address, { name, container: `${name}.${i}`, exposedPort: 8080, hostPort: b.port })).id;
    };
    let p: TestProxy | undefined;
    try {
      const p0 = await instance('patch', 0);
      assert.equal((await callApi(first, 'reconfigure', { serviceName: 'patch', servicePath: '/patch' })).status, 200);
      await instance('patch', 1);
      await eventually('patch.1 serves', () => through(first, '/patch'), (r) => r.instance === 'patch.1', 10_000);
      await deregister(consul.address, p0);
      await eventually('only patch.1 serves', async () => [await through(first, '/patch'), await through(first, '/patch')], (rs) => rs.every((r) => r.instance === 'patch.1'));
      await instance('later', 0);
      assert.equal((await callApi(first, 'reconfigure', { serviceName: 'later', servicePath: '/later' })).status, 200);
      await liveConfig(first); // writes what lags, as the stop below would
      const before = await status(first);
      const runtime = before.Applies.filter((a) => /patch|later/.test(a.trigger) && !/reconfigure patch/.test(a.trigger));
      assert.ok(runtime.length >= 3 && runtime.every((a) => a.kind === 'runtime'), JSON.stringify(runtime));
      await first.proxy.stop({ keepHaproxy: true });
      p = await startProxy(consul.address, base);
      const after = await status(p);
      const restore = after.Applies.find((a) => /start-up restore/.test(a.trigger));
      assert.equal(restore?.kind, 'none', `the restored services render to other files than the patched ones: ${JSON.stringify(restore)}`);
      assert.equal((await through(p, '/later')).instance, 'later.0');
      assert.equal((await through(p, '/patch')).instance, 'patch.1');
      // The files were written by patches, never by a full render.
      assert.ok(before.FileWrites.rendered === 0 && before.FileWrites.patched > 0, JSON.stringify(before.FileWrites));
    } finally {
      await p?.stop();
      await first.stop().catch(() => undefined);
    }
  });

  it('instances changed meanwhile: reloaded, and the instance that stayed keeps its server slot', async () => {
    let added: string | undefined;
    const t = await takeover({}, async () => {
      // app.0 (slot s1) leaves, app.2 comes: a fresh allocation would put app.1 in s1.
      await deregister(consul.address, ids[0] ?? '');
      const b = await startBackend('app.2');
      backends.push(b);
      added = (await registerLikeRegistrator(consul.address, { name: 'app', container: 'app.2', exposedPort: 8080, hostPort: b.port })).id;
    });
    try {
      await assertReloaded(t, /the restored services differ/);
      const config = await liveConfig(t.p);
      assert.match(config, new RegExp(`server s2 \\S+.*# ${ids[1]}`), config);
      assert.match(config, new RegExp(`server s1 \\S+.*# ${added}`), config);
    } finally {
      await t.p.stop();
    }
  });
});
