import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { waitForExit } from '../../src/util/process.js';
import { parsePrometheusText, total } from '../helpers/prom-text.js';
import { assertDead, callApi, eventually, liveConfig, type RoutedStack, startRoutedStack, type TestProxy, through, track } from '../helpers/harness.js';

/** HAProxy is supervised: a dead worker or master comes back with the last good config. */
describe('HAProxy supervision', () => {
  let stack: RoutedStack;
  let proxy: TestProxy;

  before(async () => {
    stack = await startRoutedStack('svc', '/svc');
    proxy = stack.proxy;
  });

  after(async () => {
    stack.proxy = proxy;
    await stack?.stop();
  });

  async function servesAgain(previousMaster: number): Promise<void> {
    await eventually('a new HAProxy master', async () => proxy.proxy.haproxy.status(), (s) => s.running && s.masterPid !== previousMaster);
    track(proxy.proxy.haproxy.status().masterPid);
    await eventually('the route to be served again', () => through(proxy, '/svc'), (r) => r.instance === 'svc.0');
  }

  it('killing the worker (SIGKILL) brings HAProxy back with the last good config', async () => {
    const { masterPid } = proxy.proxy.haproxy.status();
    const [worker] = (await proxy.proxy.haproxy.showProc()).workers;
    assert.ok(worker);
    const restarts = proxy.proxy.haproxy.status().restarts;
    const counted = async () => total(parsePrometheusText(await (await fetch(`http://127.0.0.1:${proxy.proxy.apiPort}/metrics`)).text()), 'dfp_haproxy_restarts_total');
    const countedBefore = await counted();
    process.kill(worker, 'SIGKILL');
    await servesAgain(masterPid ?? 0);
    assert.equal(proxy.proxy.haproxy.status().restarts, restarts + 1);
    assert.equal(await counted(), countedBefore + 1, 'dfp_haproxy_restarts_total counts it');
    assertDead(masterPid);
  });

  it('killing the master (SIGKILL) brings HAProxy back, and the old workers are gone', async () => {
    const { masterPid } = proxy.proxy.haproxy.status();
    const oldWorkers = (await proxy.proxy.haproxy.showProc()).workers;
    assert.ok(masterPid);
    process.kill(masterPid, 'SIGKILL');
    await servesAgain(masterPid);
    for (const w of oldWorkers) assert.ok(await waitForExit(w, 5000), `old worker ${w} exited`);
    // The API keeps working on the new master.
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '/svc,/svc2' })).status, 200);
    assert.equal((await through(proxy, '/svc2')).instance, 'svc.0');
  });

  it('HAProxy master not answering: a change that needs a reload gets a 5xx with the reason, the last good config stays', async () => {
    const { masterPid } = proxy.proxy.haproxy.status();
    assert.ok(masterPid);
    const config = await liveConfig(proxy);
    const scrape = async () => parsePrometheusText(await (await fetch(`http://127.0.0.1:${proxy.proxy.apiPort}/metrics`)).text());
    const before = await scrape();
    process.kill(masterPid, 'SIGSTOP');
    let res: Awaited<ReturnType<typeof callApi>>;
    try {
      // A regex route changes the frontend: only a reload (through the stopped master) can apply it.
      res = await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '^/other', pathType: 'path_reg' });
    } finally {
      process.kill(masterPid, 'SIGCONT');
    }
    assert.ok(res.status >= 500, res.text);
    assert.equal(res.body.Status, 'NOK');
    assert.match(String(res.body.Message), /HAProxy/);
    assert.equal(await liveConfig(proxy), config);
    assert.equal((await through(proxy, '/other')).status, 503);
    assert.equal((await through(proxy, '/svc2')).instance, 'svc.0');
    const after = await scrape();
    assert.equal(total(after, 'dfp_reload_failures_total', { stage: 'reload' }) - total(before, 'dfp_reload_failures_total', { stage: 'reload' }), 1, 'the failed reload is counted');
    assert.equal(total(after, 'dfp_api_requests_total', { endpoint: 'reconfigure', outcome: 'server_error' }) - total(before, 'dfp_api_requests_total', { endpoint: 'reconfigure', outcome: 'server_error' }), 1);
    // Once the master answers again, the same change goes through.
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '^/other', pathType: 'path_reg' })).status, 200);
    assert.equal((await through(proxy, '/other')).instance, 'svc.0');
  });

  it('stop() leaves no HAProxy process behind', async () => {
    const { masterPid } = proxy.proxy.haproxy.status();
    const workers = (await proxy.proxy.haproxy.showProc()).workers;
    await proxy.stop();
    assertDead(masterPid);
    for (const w of workers) assertDead(w);
    proxy = undefined as unknown as TestProxy;
  });
});

describe('HAProxy restarts from the last validated config', () => {
  it('when the live file on disk is damaged and HAProxy dies, it comes back from the last good config', async () => {
    const stack = await startRoutedStack('svc', '/svc');
    try {
      const { proxy } = stack;
      const { masterPid } = proxy.proxy.haproxy.status();
      assert.ok(masterPid);
      writeFileSync(path.join(proxy.stateDir, 'haproxy.cfg'), 'global\n    this is not a config\n');
      process.kill(masterPid, 'SIGKILL');
      await eventually('HAProxy back on the last good config', () => through(proxy, '/svc'), (r) => r.instance === 'svc.0', 20_000);
      track(proxy.proxy.haproxy.status().masterPid);
      assert.doesNotMatch(readFileSync(path.join(proxy.stateDir, 'haproxy.cfg'), 'utf8'), /this is not a config/);
      // The desired state was applied again with a validated reload, and changes keep working.
      await eventually(
        'the re-apply after recovery',
        async () => (await callApi(proxy, 'status')).body.Applies as { kind: string; trigger: string }[],
        (applies) => applies.some((a) => a.kind === 'reload' && a.trigger.startsWith('re-apply after HAProxy restarted')),
      );
      const res = await callApi(proxy, 'reconfigure', { serviceName: 'svc', servicePath: '/svc,/after' });
      assert.equal(res.status, 200, res.text);
      assert.equal((await through(proxy, '/after')).instance, 'svc.0');
    } finally {
      await stack.stop();
    }
  });
});
