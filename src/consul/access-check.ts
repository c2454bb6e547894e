import type { Logger } from '../util/log.js';
import { type ConsulClient, consulAnswer } from './client.js';
import { retryUntilDone } from './kv.js';

/** What the start-up check found: `acl` is false when Consul enforces no ACLs (or could not be asked). */
export interface AccessReport {
  readonly acl: boolean;
  /** One sentence per permission the proxy lacks, as logged (empty: it may do its work). */
  readonly problems: readonly string[];
}

const POLICY_DOC = 'docs/consul-acl.md';

/**
 * Says at start-up, in the log, whether Consul lets this proxy do its work. Under a default-deny
 * ACL most refusals are silent: a catalog read the token may not make answers an empty list, a KV
 * prefix it may not read answers 404, so a proxy with no token or a weak one would look like a
 * proxy of an empty cluster. So each permission the proxy needs is tried once with a request that
 * changes nothing of consequence, and each one missing is an error line naming Consul's answer and
 * the rule that grants it (docs/consul-acl.md has the whole policy):
 *
 * - `GET /v1/acl/token/self`: 401 means Consul enforces no ACLs (nothing more to check); 403 `ACL
 *   not found` with a token set means Consul does not know the token (every request will fail);
 * - KV write and read under `<instance>/` (creating the folder key of the shared specs, which the
 *   proxy creates anyway);
 * - a session (created and destroyed at once): the replica report lives in one;
 * - the node list and the service list, which are never empty to a token that may read them (the
 *   agent is a node, and the servers register `consul`).
 *
 * Runs beside start-up, never delays it, and retries while Consul cannot be reached.
 */
export async function checkConsulAccess(consul: ConsulClient, instanceName: string, tokenSet: boolean, log: Logger, signal: AbortSignal): Promise<AccessReport> {
  const options = { signal, timeoutMs: 5000 };
  const self = await retryUntilDone(signal, () => consul.request('/v1/acl/token/self', options), (err) => log.debug(`Consul access check: ${err.message}; retrying`));
  if (self === undefined) return { acl: false, problems: [] };
  if (self.status === 401 || (self.status !== 200 && self.status !== 403)) {
    // 401 "ACL support disabled": the token, if any, is sent and ignored.
    if (tokenSet) log.info(`Consul does not enforce ACLs (it answered ${consulAnswer(self.status, self.body)} to /v1/acl/token/self): CONSUL_HTTP_TOKEN is sent but not checked`);
    return { acl: false, problems: [] };
  }
  if (self.status === 403 && tokenSet) {
    const problem = `Consul answered ${consulAnswer(self.status, self.body)} for CONSUL_HTTP_TOKEN: Consul refuses every request made with a token it does not know, so nothing can be restored or stored and reconfigure, remove and cert answer 503. Set CONSUL_HTTP_TOKEN (or the dfp_consul_http_token secret) to the secret ID of a token with the proxy's policy (${POLICY_DOC})`;
    log.error(problem);
    return { acl: true, problems: [problem] };
  }
  let who: string;
  if (self.status === 200) {
    const token = parseToken(self.body);
    who = `the token in CONSUL_HTTP_TOKEN (accessor ${token.accessor})`;
    log.info(`Consul enforces ACLs: the proxy uses token ${token.accessor}, policies: ${token.policies.join(', ') || 'none'}`);
  } else {
    // No token: Consul answers 403 to the anonymous token's look-up of itself.
    who = "Consul's anonymous token (CONSUL_HTTP_TOKEN is not set)";
    log.info('Consul enforces ACLs and CONSUL_HTTP_TOKEN is not set: the proxy runs with the permissions of Consul\'s anonymous token');
  }
  const problems: string[] = [];
  const prefix = `${instanceName}/`;
  const refused = (what: string, status: number, body: string, effect: string, rule: string) =>
    problems.push(`Consul answered ${consulAnswer(status, body)} to ${what} by ${who}: ${effect}. The policy needs ${rule} (${POLICY_DOC})`);
  try {
    const folder = `${prefix}_dfp/services/`;
    const write = await consul.request(`/v1/kv/${folder}?cas=0`, { ...options, method: 'PUT', body: '' });
    if (write.status !== 200) refused(`a KV write under ${prefix}`, write.status, write.body, 'reconfigure, remove and cert fail with 503, and the shared state cannot be stored', `key_prefix "${prefix}" { policy = "write" }`);
    const read = await consul.request(`/v1/kv/${folder}`, options);
    if (read.status !== 200 && read.status !== 404) refused(`a KV read under ${prefix}`, read.status, read.body, 'the shared services and certificates cannot be restored or followed', `key_prefix "${prefix}" { policy = "write" }`);
    const session = await consul.request('/v1/session/create', { ...options, method: 'PUT', body: JSON.stringify({ Name: 'dfp-access-check', TTL: '10s', Behavior: 'delete' }) });
    if (session.status === 200) {
      const id = (JSON.parse(session.body) as { ID?: string }).ID;
      if (id) await consul.request(`/v1/session/destroy/${id}`, { ...options, method: 'PUT' }).catch(() => undefined);
    } else {
      refused('creating a session', session.status, session.body, "this replica's report is not published, so status cannot tell whether the fleet agrees and wait=all cannot succeed", 'session_prefix "" { policy = "write" }');
    }
    const nodes = await consul.request('/v1/catalog/nodes', options);
    if (nodes.status !== 200) refused('reading the node list', nodes.status, nodes.body, 'live discovery sees no instance', 'node_prefix "" { policy = "read" }');
    else if (nodes.body.trim() === '[]') {
      problems.push(`Consul lists no node to ${who}, not even its own: its ACL hides them, so live discovery sees no instance and every route answers 503. The policy needs node_prefix "" { policy = "read" } (${POLICY_DOC})`);
    }
    const services = await consul.request('/v1/catalog/services', options);
    if (services.status !== 200) refused('reading the service list', services.status, services.body, 'no instance can be found', 'service_prefix "" { policy = "read" }');
    else if (services.body.trim() === '{}') {
      problems.push(`Consul lists no service to ${who}, not even "consul": its ACL hides them, so every service seems to have no instance and its route answers 503. The policy needs service_prefix "" { policy = "read" }, or read on the services the proxy routes (${POLICY_DOC})`);
    }
  } catch (err) {
    if (signal.aborted) return { acl: true, problems };
    // Consul went away in the middle: the proxy's own requests report that.
    log.debug(`Consul access check stopped: ${(err as Error).message}`);
  }
  for (const p of problems) log.error(p);
  if (problems.length === 0) log.info(`Consul ACL: ${who} may do everything the proxy needs (KV under ${prefix}, sessions, node and service reads)`);
  return { acl: true, problems };
}

function parseToken(body: string): { accessor: string; policies: string[] } {
  try {
    // Only these fields: the answer also carries the token's SecretID, which must never be logged.
    const t = JSON.parse(body) as { AccessorID?: string; Policies?: { Name?: string }[] };
    return { accessor: t.AccessorID ?? '?', policies: (t.Policies ?? []).map((p) => p.Name ?? '?') };
  } catch {
    return { accessor: '?', policies: [] };
  }
}
