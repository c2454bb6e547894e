import { isIP } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { Pool } from 'undici';
import { ConsulUnavailableError } from '../errors.js';

export interface ConsulResponse {
  readonly status: number;
  readonly body: string;
  /** `X-Consul-Index`, for blocking queries. */
  readonly index: number | undefined;
  readonly address: string;
  /** `performance.now()` when the answer was read: when a change it carries was seen. */
  readonly arrivedAt: number;
}

/** Which connection budget a request uses. */
export type ConsulBudgetName = 'watch' | 'request';

export interface ConsulRequest {
  readonly method?: 'GET' | 'PUT' | 'DELETE';
  readonly body?: string;
  /**
   * How long Consul has to answer once the request is on a connection (headers, then body).
   * Waiting in line for one of the budget's connections does not start it: a burst of API calls
   * queued behind two connections is not "Consul timed out". The whole call, waits and every
   * address tried included, is bounded by timeoutMs + queueLimitMs(timeoutMs).
   */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /**
   * `watch` for a blocking query, `request` for anything else. Default: `watch` when the path
   * carries `index=<n>` with n > 0 (what makes Consul hold the request), `request` otherwise.
   */
  readonly budget?: ConsulBudgetName;
}

/**
 * Connections per Consul address. Consul agents allow 200 per client address by default
 * (`limits.http_max_conns_per_client`) and drop the connections past it; three proxies on one
 * host share that limit, so each stays small.
 */
export interface ConsulBudget {
  /**
   * Blocking queries held at once (`CONSUL_WATCH_CONNECTIONS`): each pending one holds a
   * connection. Requests past it wait in line for one to answer, so the holders (the KV watch
   * of the change log in fleet.ts, which also wakes certs/manager.ts, and the instance watcher)
   * must stay within it together.
   */
  readonly watchConnections: number;
  /** Every other request (`CONSUL_REQUEST_CONNECTIONS`); past it they wait in line, briefly. */
  readonly requestConnections: number;
}

/**
 * Consul's own conventions for a secured agent: an ACL token (`CONSUL_HTTP_TOKEN`), sent as
 * `X-Consul-Token` on every request, and for https addresses the CA to trust (`CONSUL_CACERT`)
 * and a client certificate (`CONSUL_CLIENT_CERT` / `CONSUL_CLIENT_KEY`) for agents that verify
 * incoming connections. PEM text, not paths: settings read the files once at start-up.
 */
export interface ConsulAccess {
  readonly token?: string;
  readonly tls?: { readonly ca?: string; readonly cert?: string; readonly key?: string };
}

export const DEFAULT_CONSUL_BUDGET: ConsulBudget = { watchConnections: 8, requestConnections: 2 };

/** Counters since the client was created (tests, and status). */
export interface ConsulClientStats {
  /** Requests sent, each attempt counted (a failover to another address is a second one). */
  readonly sent: Readonly<Record<ConsulBudgetName, number>>;
  /** Requests holding or waiting for a connection now. */
  readonly inFlight: Readonly<Record<ConsulBudgetName, number>>;
  /** Connections open now, over every address. */
  readonly connections: Readonly<Record<ConsulBudgetName, number>>;
}

interface Target {
  readonly origin: string;
  /** A path prefix of the address (`http://host/consul`), prepended to every request. */
  readonly prefix: string;
  pools: Record<ConsulBudgetName, Pool> | undefined;
  /** The last TLS alert diagnosis of a closed connection (https only). */
  alert?: { at: number; code: string | undefined };
}

const BLOCKING = /[?&]index=0*[1-9]/;

/**
 * The one Consul HTTP client of a proxy: undici connection pools per Consul address, one for
 * blocking queries and one for everything else, so a burst of API calls can neither starve the
 * watches nor be starved by them, and the proxy never holds more than
 * `watchConnections + requestConnections` connections to an agent.
 *
 * `CONSUL_ADDRESS` may list several agents: each request tries them in order, starting with the
 * last one that answered, and moves on when one cannot be reached or answers 5xx (no leader, rpc
 * error). 4xx answers are the caller's to judge.
 *
 * Aborting a request (its signal or its timeout) destroys its connection, and the pool opens a
 * new one when needed. Consul 1.8.7 releases the per-client slot of an abandoned *blocking* query
 * only when the query would have answered (measured: 9 aborted queries still held 9 of 10 slots),
 * so watchers should not abort blocking queries except when stopping; a fresh read beside a
 * pending query is cheaper than replacing it.
 */
export class ConsulClient {
  private preferred = 0;
  private readonly targets: Target[];
  private readonly counters = {
    sent: { watch: 0, request: 0 },
    inFlight: { watch: 0, request: 0 },
  };
  private closed = false;
  /** Called before every attempt (tests count requests with it). */
  onRequest: ((path: string, budget: ConsulBudgetName, address: string) => void) | undefined;
  /** Called after every attempt with its outcome: `2xx` … `5xx`, `error` (no answer) or `aborted` (metrics). */
  onResult: ((budget: ConsulBudgetName, outcome: string) => void) | undefined;

  constructor(
    readonly addresses: readonly string[],
    private readonly defaultTimeoutMs = 5000,
    readonly budget: ConsulBudget = DEFAULT_CONSUL_BUDGET,
    private readonly access: ConsulAccess = {},
  ) {
    if (addresses.length === 0) throw new Error('ConsulClient needs at least one address');
    if (!(budget.watchConnections >= 1 && budget.requestConnections >= 1)) throw new Error('ConsulClient needs at least one connection per budget');
    this.targets = addresses.map((a) => {
      const url = new URL(a);
      return { origin: url.origin, prefix: url.pathname.replace(/\/+$/, ''), pools: undefined };
    });
  }

  async request(path: string, req: ConsulRequest = {}): Promise<ConsulResponse> {
    if (this.closed) throw new ConsulUnavailableError('Consul client is closed');
    const budget = req.budget ?? (BLOCKING.test(path) ? 'watch' : 'request');
    const failures: string[] = [];
    let answered5xx = false;
    const timeoutMs = req.timeoutMs ?? this.defaultTimeoutMs;
    // One deadline for every address tried: a caller waits at most this long in all.
    const deadline = AbortSignal.timeout(timeoutMs + queueLimitMs(timeoutMs));
    const signal = req.signal ? AbortSignal.any([req.signal, deadline]) : deadline;
    for (let i = 0; i < this.addresses.length && !deadline.aborted; i++) {
      const at = (this.preferred + i) % this.addresses.length;
      const address = this.addresses[at] as string;
      const target = this.targets[at] as Target;
      this.counters.sent[budget]++;
      this.counters.inFlight[budget]++;
      this.onRequest?.(path, budget, address);
      try {
        const res = await this.pool(target, budget).request({
          path: `${target.prefix}${path}`,
          method: req.method ?? 'GET',
          // Every request, reads included: a default-deny ACL filters what an unknown caller may see.
          ...(this.access.token === undefined ? {} : { headers: { 'x-consul-token': this.access.token } }),
          ...(req.body === undefined ? {} : { body: req.body }),
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs,
          signal,
        });
        const body = await res.body.text();
        this.onResult?.(budget, `${Math.floor(res.statusCode / 100)}xx`);
        if (res.statusCode >= 500) {
          answered5xx = true;
          failures.push(`${address}: HTTP ${res.statusCode} ${body.trim().slice(0, 200)}`);
          continue;
        }
        this.preferred = at;
        const rawIndex = res.headers['x-consul-index'];
        const index = typeof rawIndex === 'string' ? Number(rawIndex) : undefined;
        return { status: res.statusCode, body, index: index !== undefined && Number.isFinite(index) ? index : undefined, address, arrivedAt: performance.now() };
      } catch (err) {
        this.onResult?.(budget, req.signal?.aborted ? 'aborted' : 'error');
        if (req.signal?.aborted) throw err;
        const clientCert = this.access.tls?.cert !== undefined;
        const alert = (err as { code?: string }).code === 'UND_ERR_SOCKET' ? await this.tlsAlert(target) : undefined;
        failures.push(`${address}: ${alert ? `TLS: ${alert} (${tlsHint(alert, clientCert) ?? 'Consul closed the connection during TLS'})` : describeError(err, timeoutMs, budget, this.budget, clientCert)}`);
      } finally {
        this.counters.inFlight[budget]--;
      }
    }
    throw new ConsulUnavailableError(`Consul is unavailable (${failures.join('; ')})`, undefined, answered5xx);
  }

  stats(): ConsulClientStats {
    const connections = { watch: 0, request: 0 };
    for (const t of this.targets) {
      if (!t.pools) continue;
      connections.watch += t.pools.watch.stats.connected;
      connections.request += t.pools.request.stats.connected;
    }
    return { sent: { ...this.counters.sent }, inFlight: { ...this.counters.inFlight }, connections };
  }

  /** Closes every connection; requests in flight fail. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.targets.flatMap((t) => (t.pools ? [t.pools.watch.destroy(), t.pools.request.destroy()] : [])));
  }

  /**
   * For a connection an https Consul closed: the TLS alert behind it, if any (see tlsAlert). Asked
   * at most once every 5 s per address, so a Consul that dies under many requests costs one probe.
   */
  private async tlsAlert(target: Target): Promise<string | undefined> {
    if (!target.origin.startsWith('https:')) return undefined;
    const now = Date.now();
    if (target.alert && now - target.alert.at < 5000) return target.alert.code;
    const code = await tlsAlert(target.origin, this.access.tls ?? {}, 2000);
    target.alert = { at: now, code };
    return code;
  }

  private pool(target: Target, budget: ConsulBudgetName): Pool {
    if (!target.pools) {
      // Timeouts are per request (timeoutMs): undici's own 300 s headers timeout would cut a
      // blocking query waiting its full `wait` plus Consul's jitter (up to wait/16).
      const tls = target.origin.startsWith('https:') ? (this.access.tls ?? {}) : {};
      const options = { pipelining: 1, headersTimeout: 0, bodyTimeout: 0, connect: { timeout: 5000, ...tls } };
      target.pools = {
        watch: new Pool(target.origin, { ...options, connections: this.budget.watchConnections }),
        request: new Pool(target.origin, { ...options, connections: this.budget.requestConnections }),
      };
    }
    return target.pools[budget];
  }
}

/**
 * Retries while Consul answers 5xx (a leader election takes ~3 s with raft_multiplier 1), for up
 * to `budgetMs`; an unreachable Consul gets one more second, so callers get their 503 quickly.
 */
export async function retryTransient<T>(fn: () => Promise<T>, budgetMs = 10_000, onRetry?: (err: ConsulUnavailableError) => void): Promise<T> {
  const started = Date.now();
  let delay = 100;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof ConsulUnavailableError)) throw err;
      const budget = err.transient ? budgetMs : 1000;
      if (Date.now() + delay > started + budget) throw err;
      onRetry?.(err);
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

/**
 * How long a request may wait in line for a connection of its budget, on top of its own timeout.
 * Long enough for a burst of hundreds of API calls on two connections on a slow machine; short
 * enough that a Consul that accepts connections and never answers fails callers within a minute.
 */
export function queueLimitMs(timeoutMs: number): number {
  return Math.max(4 * timeoutMs, 20_000);
}

function describeError(err: unknown, timeoutMs: number, budget: ConsulBudgetName, limits: ConsulBudget, clientCert: boolean): string {
  const e = err as Error & { code?: string; cause?: { code?: string; message?: string } };
  if (e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_BODY_TIMEOUT') return `no answer within ${timeoutMs} ms`;
  if (e.name === 'TimeoutError') {
    const connections = budget === 'watch' ? limits.watchConnections : limits.requestConnections;
    return `timed out: no answer within ${timeoutMs + queueLimitMs(timeoutMs)} ms, waiting in line for one of ${connections} connections included`;
  }
  const code = e.code ?? e.cause?.code;
  const hint = code === undefined ? undefined : tlsHint(code, clientCert);
  if (hint !== undefined) return `TLS: ${code} (${hint})`;
  return code ?? e.cause?.message ?? e.message;
}

const UNTRUSTED = "Consul's certificate is not signed by a CA the proxy trusts: set CONSUL_CACERT to the CA file that signed it";

/** What to do about a TLS failure an https CONSUL_ADDRESS meets, by Node's error code. */
function tlsHint(code: string, clientCert: boolean): string | undefined {
  switch (code) {
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'UNABLE_TO_GET_ISSUER_CERT':
      return UNTRUSTED;
    case 'CERT_HAS_EXPIRED':
      return "Consul's certificate has expired";
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return "Consul's certificate does not name the host of CONSUL_ADDRESS";
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return 'the address does not speak TLS: is it the http port rather than the https one?';
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
      return clientCert
        ? "Consul verifies incoming connections (verify_incoming) and refused CONSUL_CLIENT_CERT: it must be signed by a CA in Consul's ca_file"
        : 'Consul verifies incoming connections (verify_incoming) and needs a client certificate: set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY';
    default:
      return undefined;
  }
}

/**
 * Why an https Consul closed the connection, when a TLS alert says so. Under TLS 1.3 a server that
 * refuses the client's certificate (or its absence) does it after the client considers the
 * handshake done, so the HTTP client only sees "other side closed"; a bare TLS connection that
 * sends a request reads the alert itself. Undefined when there was none.
 */
function tlsAlert(origin: string, tlsOptions: ConnectionOptions, timeoutMs: number): Promise<string | undefined> {
  const url = new URL(origin);
  return new Promise((resolve) => {
    const socket = tlsConnect({ ...tlsOptions, host: url.hostname, port: Number(url.port || 443), ...(isIP(url.hostname) ? {} : { servername: url.hostname }) }, () => {
      socket.write(`GET /v1/status/leader HTTP/1.1\r\nHost: ${url.host}\r\nConnection: close\r\n\r\n`);
    });
    const done = (code: string | undefined) => {
      socket.destroy();
      resolve(code);
    };
    socket.setTimeout(timeoutMs, () => done(undefined));
    socket.once('data', () => done(undefined));
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code?.startsWith('ERR_SSL_') ? err.code : undefined));
    socket.once('close', () => done(undefined));
  });
}

/**
 * An ACL's refusal in Consul's answer, in words: 403 `ACL not found` (a token Consul does not know)
 * or `Permission denied` (403, or inside a rolled-back transaction's 409). Undefined for other answers.
 */
export function aclRefusal(status: number, body: string): string | undefined {
  if (status === 403 && /ACL not found/i.test(body)) return "ACL not found: Consul does not know the token; check CONSUL_HTTP_TOKEN";
  if (status === 403 || (status === 409 && /"What":\s*"Permission denied"/.test(body))) {
    return "Permission denied: Consul's ACL refused it; CONSUL_HTTP_TOKEN is missing or its policy lacks this permission";
  }
  return undefined;
}

/**
 * Consul's answer to a request it refused, for messages: the status, then the ACL's reason in
 * words, else Consul's own text (short). `withBody: false` for answers that may echo what was sent
 * (a transaction carrying a key). Consul never puts the token in an answer.
 */
export function consulAnswer(status: number, body: string, withBody = true): string {
  const acl = aclRefusal(status, body);
  if (acl !== undefined) return `${status} (${acl})`;
  return withBody ? `${status} ${body.trim().slice(0, 200) || '(no reason given)'}` : `${status}`;
}
