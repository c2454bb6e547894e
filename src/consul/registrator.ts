/**
 * What Registrator (gliderlabs/registrator v7, run with `-ip <ip>`) sends to Consul for one
 * published container port. The demo and the tests register instances exactly this way, so the
 * proxy is exercised with the registrations it meets in production.
 */
export interface ContainerPort {
  /** Consul service name: SERVICE_NAME, or the image base name (with `-<port>` for multi-port containers). */
  readonly name: string;
  /** Container name without the leading '/'. */
  readonly container: string;
  /** The port the container exposes; part of the ID. */
  readonly exposedPort: number;
  /** The published host port: what Consul reports and what HAProxy connects to. */
  readonly hostPort: number;
  /** Registrator's `-ip` value. */
  readonly ip?: string;
  /** Registrator's own hostname (first part of the ID). */
  readonly host?: string;
  /** SERVICE_CHECK_HTTP / SERVICE_CHECK_INTERVAL. */
  readonly checkHttp?: string;
  readonly checkInterval?: string;
  /** SERVICE_CHECK_INITIAL_STATUS, e.g. `passing` so the instance gets traffic before its first check. */
  readonly checkInitialStatus?: string;
}

export function registratorBody(p: ContainerPort): { id: string; body: Record<string, unknown> } {
  const ip = p.ip ?? '127.0.0.1';
  const id = `${p.host ?? 'host1'}:${p.container}:${p.exposedPort}`;
  const body: Record<string, unknown> = { ID: id, Name: p.name, Port: p.hostPort, Address: ip };
  if (p.checkHttp !== undefined) {
    const interval = p.checkInterval ?? '10s';
    // Meta keeps every remaining SERVICE_* key, check_* included; empty Tags/Meta are omitted.
    const meta: Record<string, string> = { check_http: p.checkHttp, check_interval: interval };
    const check: Record<string, unknown> = { HTTP: `http://${ip}:${p.hostPort}${p.checkHttp}`, Interval: interval };
    if (p.checkInitialStatus !== undefined) {
      meta.check_initial_status = p.checkInitialStatus;
      check.Status = p.checkInitialStatus;
    }
    body.Meta = meta;
    body.Check = check;
  } else {
    body.Check = null;
  }
  return { id, body };
}

/** `token`: Registrator's own ACL token (its CONSUL_HTTP_TOKEN), for a Consul that enforces ACLs. */
export async function register(consul: string, p: ContainerPort, token?: string): Promise<string> {
  const { id, body } = registratorBody(p);
  const res = await fetch(`${consul}/v1/agent/service/register`, { method: 'PUT', body: JSON.stringify(body), ...(token ? { headers: { 'X-Consul-Token': token } } : {}) });
  if (!res.ok) throw new Error(`registering ${id} failed: ${res.status} ${await res.text()}`);
  return id;
}

/** What Registrator does on a container's `die` event. */
export async function deregister(consul: string, id: string, token?: string): Promise<void> {
  const res = await fetch(`${consul}/v1/agent/service/deregister/${encodeURIComponent(id)}`, { method: 'PUT', ...(token ? { headers: { 'X-Consul-Token': token } } : {}) });
  if (!res.ok) throw new Error(`deregistering ${id} failed: ${res.status}`);
}
