import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { CHANGE_SOURCES } from '../../src/metrics/metrics.js';
import { freePort } from '../../src/util/ports.js';
import { type Backend, callApi, eventually, startConsul, startInstance, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';
import { type Family, parsePrometheusText, total } from '../helpers/prom-text.js';

async function scrape(url: string): Promise<Map<string, Family>> {
  const res = await fetch(url);
  assert.equal(res.status, 200, url);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  // The whole scrape, every line: a malformed one fails here with its line number.
  return parsePrometheusText(await res.text());
}

const ours = (p: TestProxy) => scrape(`http://127.0.0.1:${p.proxy.apiPort}/metrics`);

async function instancesOf(p: TestProxy, service: string): Promise<number> {
  const services = (await callApi(p, 'status')).body.Services as { ServiceName: string; Instances: number }[];
  return services.find((s) => s.ServiceName === service)?.Instances ?? -1;
}

/** A real scrape of a real proxy: the metrics move with what the proxy does. */
describe('metrics', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let promPort: number;
  const backends: Backend[] = [];
  const others: TestProxy[] = [];

  before(async () => {
    consul = await startConsul();
    promPort = await freePort();
    proxy = await startProxy(consul.address, { PROMETHEUS_PORT: String(promPort) });
  });

  after(async () => {
    for (const p of others) await p.stop();
    await proxy?.stop();
    for (const b of backends) await b.close();
    if (consul) await stopConsul(consul);
  });

  async function instance(service: string, n: number): Promise<Backend> {
    const b = await startInstance(consul.address, service, n);
    backends.push(b);
    return b;
  }

  it('20 reconfigures and 20 scale events each leave a propagation sample, with their trigger', async () => {
    await instance('scale', 0);
    assert.equal((await callApi(proxy, 'reconfigure', { serviceName: 'scale', servicePath: '/scale' })).status, 200);
    const before = await ours(proxy);
    const count = (f: Map<string, Family>, trigger: string) => total(f, 'dfp_propagation_seconds', { trigger }, 'dfp_propagation_seconds_count');

    for (let i = 0; i < 20; i++) {
      await instance(`m${i}`, 0);
      const res = await callApi(proxy, 'reconfigure', { serviceName: `m${i}`, servicePath: `/m${i}` });
      assert.equal(res.status, 200, res.text);
    }
    // Scale events: a new instance registered in Consul, nothing else; each waited for until live.
    for (let n = 1; n <= 20; n++) {
      await instance('scale', n);
      await eventually(`scale has ${n + 1} instances`, () => instancesOf(proxy, 'scale'), (v) => v === n + 1);
    }
    assert.equal((await through(proxy, '/m19')).instance, 'm19.0', 'the last reconfigured service is served');
    const after = await ours(proxy);

    assert.equal(count(after, 'api') - count(before, 'api'), 20, 'one sample per reconfigure');
    assert.ok(count(after, 'consul-instances') - count(before, 'consul-instances') >= 20, 'one sample per scale event at least');
    assert.ok(
      total(after, 'dfp_propagation_seconds', {}, 'dfp_propagation_seconds_count') - total(before, 'dfp_propagation_seconds', {}, 'dfp_propagation_seconds_count') >= 40,
    );
    for (const s of after.get('dfp_propagation_seconds')?.samples ?? []) {
      assert.ok((CHANGE_SOURCES as readonly string[]).includes(s.labels.trigger ?? ''), `trigger label ${s.labels.trigger}`);
      assert.ok(['runtime', 'reload', 'none'].includes(s.labels.kind ?? ''), `kind label ${s.labels.kind}`);
    }
    // Propagation took time, but not more than the test did.
    const sum = total(after, 'dfp_propagation_seconds', { trigger: 'consul-instances' }, 'dfp_propagation_seconds_sum');
    assert.ok(sum > 0 && sum < 120, `propagation seconds ${sum}`);

    const delta = (family: string, match: Record<string, string> = {}, sample = family) => total(after, family, match, sample) - total(before, family, match, sample);
    assert.equal(delta('dfp_api_requests_total', { endpoint: 'reconfigure', outcome: 'ok' }), 20);
    assert.equal(delta('dfp_api_request_duration_seconds', { endpoint: 'reconfigure' }, 'dfp_api_request_duration_seconds_count'), 20);
    assert.ok(delta('dfp_applies_total') >= 40, 'applies counted');
    assert.ok(delta('dfp_apply_duration_seconds', { kind: 'runtime' }, 'dfp_apply_duration_seconds_count') > 0, 'the apply histogram grows');
    assert.ok(delta('dfp_consul_requests_total', { kind: 'blocking', class: '2xx' }) >= 20, 'the watches answered');
    assert.ok(delta('dfp_consul_requests_total', { kind: 'ordinary', class: '2xx' }) >= 20, 'reconfigures read Consul');

    const status = (await callApi(proxy, 'status')).body;
    assert.equal(total(after, 'dfp_generation'), status.Generation);
    assert.equal(total(after, 'dfp_services'), 21);
    assert.equal(total(after, 'dfp_ready'), 1);
    assert.equal(total(after, 'dfp_haproxy_up'), 1);
    assert.ok(total(after, 'dfp_consul_open_watches') >= 3, 'node list, checks, a node and the change log');
    assert.deepEqual([total(after, 'dfp_fleet_known'), total(after, 'dfp_fleet_replicas'), total(after, 'dfp_fleet_in_agreement')], [1, 1, 1]);
    assert.equal(total(after, 'dfp_reload_failures_total'), 0);
    assert.equal(after.get('dfp_applies_total')?.type, 'counter');
    assert.equal(after.get('dfp_propagation_seconds')?.type, 'histogram');
    assert.ok(after.has('process_resident_memory_bytes'));
    // The ring a dashboard reads holds the same applies, with their propagation.
    const recent = proxy.proxy.metrics.recent.toArray();
    assert.ok(recent.some((r) => r.propagation.some((p) => p.source === 'consul-instances')));
  });

  it("HAProxy's own exporter on PROMETHEUS_PORT parses whole and counts requests", async () => {
    const url = `http://127.0.0.1:${promPort}/metrics`;
    const requests = (f: Map<string, Family>) => total(f, 'haproxy_frontend_http_requests_total', { proxy: 'services' });
    const first = requests(await scrape(url));
    for (let i = 0; i < 5; i++) assert.equal((await through(proxy, '/scale')).status, 200);
    assert.ok(requests(await scrape(url)) >= first + 5);
    assert.match(await (await callApi(proxy, 'config')).text, /http-request use-service prometheus-exporter if \{ path \/metrics \}/);
  });

  it("metrics (the original's endpoint): HAProxy's CSV, and every replica's with distribute=true", async () => {
    const res = await fetch(`${proxy.api}/metrics`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/csv; charset=utf-8');
    const csv = await res.text();
    assert.match(csv, /^# pxname,svname,/);
    assert.match(csv, /^services,FRONTEND,/m);
    assert.match(csv, /^scale-be_0,s1,/m);

    const second = await startProxy(consul.address);
    others.push(second);
    await eventually('two replicas', async () => total(await ours(proxy), 'dfp_fleet_replicas'), (n) => n === 2);
    const both = await callApi(proxy, 'metrics', { distribute: 'true' });
    assert.equal(both.status, 200);
    assert.equal((both.text.match(/^# pxname,svname,/gm) ?? []).length, 2, 'one CSV per replica');
  });

  it('METRICS=false: no /metrics, the rest works', async () => {
    const off = await startProxy(consul.address, { METRICS: 'false' });
    others.push(off);
    const res = await fetch(`http://127.0.0.1:${off.proxy.apiPort}/metrics`);
    assert.equal(res.status, 404);
    assert.equal(((await res.json()) as { Code: string }).Code, 'DFP_ERR_NOT_FOUND');
    assert.equal((await callApi(off, 'metrics')).status, 200, "HAProxy's CSV does not depend on METRICS");
  });
});
