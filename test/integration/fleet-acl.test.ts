import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { ConsulAgent } from '../../src/consul/agent.js';
import { CONSUL_BIN, callApi, eventually, startProxy, stopConsul, type TestProxy, tempDir, track } from '../helpers/harness.js';

const INSTANCE = 'acl-fleet';
const REPLICA = 'replica-a';
/** Consul's anonymous token: what every request without X-Consul-Token runs as. */
const ANONYMOUS = '00000000-0000-0000-0000-000000000002';

/** What the proxy needs besides its KV: sessions for its report, the catalog for instances. */
const BASE_RULES = `
key_prefix "${INSTANCE}/" { policy = "write" }
key_prefix "${INSTANCE}/_dfp/replicas/" { policy = "deny" }
session_prefix "" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
`;

interface AclFleet {
  readonly consul: ConsulAgent;
  readonly proxy: TestProxy;
  /** A request with the master token (the test's view, not the proxy's). */
  asMaster(path: string): Promise<Response>;
  stop(): Promise<void>;
}

/**
 * A Consul with ACLs enforced (default deny) and one proxy whose requests run under `rules`. The
 * proxy is started without CONSUL_HTTP_TOKEN, so the rules are given to the anonymous token
 * (consul-secured.test.ts covers a token of its own). `keyListPolicy`: a recursive read needs `list` on the prefix, and Consul answers 403
 * instead of leaving out the entries the token cannot read.
 */
async function aclFleet(rules: string, keyListPolicy: boolean): Promise<AclFleet> {
  const master = randomUUID();
  const consul = await ConsulAgent.start({
    bin: CONSUL_BIN,
    mode: 'dev',
    dataDir: tempDir(),
    hcl: [`acl { enabled = true, default_policy = "deny", enable_key_list_policy = ${keyListPolicy}, tokens { master = "${master}" } }`],
  });
  track(consul.pid);
  const asMaster = (path: string, method = 'GET', body?: unknown) =>
    fetch(`${consul.address}${path}`, { method, headers: { 'X-Consul-Token': master }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  try {
    // The ACL system comes up a moment after the leader.
    await eventually('the ACL policy', () => asMaster('/v1/acl/policy', 'PUT', { Name: 'dfp-proxy', Rules: rules }), (res) => res.ok);
    const anon = await asMaster(`/v1/acl/token/${ANONYMOUS}`, 'PUT', { Description: 'the proxy (no token)', Policies: [{ Name: 'dfp-proxy' }] });
    assert.equal(anon.status, 200, await anon.text());
    const proxy = await startProxy(consul.address, { PROXY_INSTANCE_NAME: INSTANCE, REPLICA_ID: REPLICA, REPLICA_WAIT_TIMEOUT: '2', CONSUL_WATCH_WAIT: '30' });
    return {
      consul,
      proxy,
      asMaster,
      async stop() {
        await proxy.stop().catch(() => undefined);
        await stopConsul(consul);
      },
    };
  } catch (err) {
    await stopConsul(consul);
    throw err;
  }
}

async function fleetStatus(p: TestProxy): Promise<Record<string, unknown>> {
  const res = await callApi(p, 'status');
  assert.equal(res.status, 200);
  return res.body.Fleet as Record<string, unknown>;
}

/**
 * Regression (issue 9, item 4): a replica list Consul refused to give (403) was read as "no
 * replicas", so `status` said InAgreement: true and `wait=all` waited out its timeout to answer
 * DFP_ERR_REPLICAS_LAGGING with no laggard named. Unknown must be said as unknown.
 */
describe('replicas that Consul refuses to list (ACL, enable_key_list_policy: 403)', () => {
  let f: AclFleet;

  before(async () => {
    // Its own report, but not the list of the others: what an operator may well grant.
    f = await aclFleet(`${BASE_RULES}\nkey "${INSTANCE}/_dfp/replicas/${REPLICA}" { policy = "write" }\n`, true);
    // The fixture is what it claims: the proxy's reads of the list are refused...
    assert.equal((await fetch(`${f.consul.address}/v1/kv/${INSTANCE}/_dfp/replicas/?recurse`)).status, 403);
    // ...while a replica does exist (this one published its report): "none" would be a lie.
    await eventually('the replica report', () => f.asMaster(`/v1/kv/${INSTANCE}/_dfp/replicas/${REPLICA}`).then((r) => r.status), (s) => s === 200);
  });

  after(() => f?.stop());

  it('status does not claim agreement; it says the replicas are unknown and why', async () => {
    const fleet = await fleetStatus(f.proxy);
    assert.equal(fleet.InAgreement, null, `InAgreement: ${JSON.stringify(fleet.InAgreement)}`);
    assert.equal(fleet.Replicas, null);
    assert.match(String(fleet.ReplicasUnknown), /Consul answered 403 reading acl-fleet\/_dfp\/replicas\/ \(Permission denied\)/);
  });

  it('wait=all fails at once with its own code, naming why; the change is applied and stored all the same', async () => {
    const p = f.proxy;
    const started = Date.now();
    const res = await callApi(p, 'reconfigure', { serviceName: 'books', servicePath: '/books', wait: 'all' });
    assert.equal(res.body.Code, 'DFP_ERR_REPLICAS_UNKNOWN', res.text);
    assert.equal(res.status, 502);
    assert.match(String(res.body.Message), /^applied here, but whether every live replica applied it too is unknown.*403.*Permission denied/);
    assert.equal(res.body.Laggards, undefined);
    // Not a timeout in disguise (REPLICA_WAIT_TIMEOUT is 2 s).
    assert.ok(Date.now() - started < 1500, `answered after ${Date.now() - started} ms`);
    const services = (await callApi(p, 'status')).body.Services as { ServiceName: string }[];
    assert.deepEqual(
      services.map((s) => s.ServiceName),
      ['books'],
    );
    assert.equal((await f.asMaster(`/v1/kv/${INSTANCE}/_dfp/services/books`))?.status, 200);
  });

  it('remove with wait=all says the same', async () => {
    const res = await callApi(f.proxy, 'remove', { serviceName: 'books', wait: 'all' });
    assert.equal(res.body.Code, 'DFP_ERR_REPLICAS_UNKNOWN', res.text);
    assert.equal(res.status, 502);
  });
});

/**
 * Consul's default ACL behaviour: entries the token cannot read are left out and the answer looks
 * like "nothing there" (404). No report at all, not even this replica's own, is no proof of
 * agreement either.
 */
describe('replica reports that Consul hides (ACL, default: filtered out)', () => {
  let f: AclFleet;

  before(async () => {
    f = await aclFleet(BASE_RULES, false);
    assert.equal((await fetch(`${f.consul.address}/v1/kv/${INSTANCE}/_dfp/replicas/?recurse`)).status, 404);
  });

  after(() => f?.stop());

  it('status says unknown, not InAgreement: true over an empty list', async () => {
    const fleet = await fleetStatus(f.proxy);
    assert.equal(fleet.InAgreement, null, `InAgreement: ${JSON.stringify(fleet.InAgreement)}`);
    assert.deepEqual(fleet.Replicas, []);
    assert.match(String(fleet.ReplicasUnknown), /no replica report under acl-fleet\/_dfp\/replicas\/, not even this replica's/);
  });

  it('wait=all answers DFP_ERR_REPLICAS_UNKNOWN at its timeout, not LAGGING with no laggard', async () => {
    const res = await callApi(f.proxy, 'reconfigure', { serviceName: 'books', servicePath: '/books', wait: 'all' });
    assert.equal(res.body.Code, 'DFP_ERR_REPLICAS_UNKNOWN', res.text);
    assert.equal(res.status, 502);
    assert.match(String(res.body.Message), /not even this replica's/);
  });
});
