import { ConsulUnavailableError } from '../errors.js';

export interface ConsulResponse {
  readonly status: number;
  readonly body: string;
  /** `X-Consul-Index`, for blocking queries. */
  readonly index: number | undefined;
  readonly address: string;
}

export interface ConsulRequest {
  readonly method?: 'GET' | 'PUT' | 'DELETE';
  readonly body?: string;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/**
 * A small Consul HTTP client on Node's fetch. `CONSUL_ADDRESS` may list several agents: each
 * request tries them in order, starting with the last one that answered, and moves on when one
 * cannot be reached or answers 5xx (no leader, rpc error). 4xx answers are the caller's to judge.
 */
export class ConsulClient {
  private preferred = 0;

  constructor(
    readonly addresses: readonly string[],
    private readonly defaultTimeoutMs = 5000,
  ) {
    if (addresses.length === 0) throw new Error('ConsulClient needs at least one address');
  }

  async request(path: string, req: ConsulRequest = {}): Promise<ConsulResponse> {
    const failures: string[] = [];
    let answered5xx = false;
    for (let i = 0; i < this.addresses.length; i++) {
      const at = (this.preferred + i) % this.addresses.length;
      const address = this.addresses[at] as string;
      const timeout = AbortSignal.timeout(req.timeoutMs ?? this.defaultTimeoutMs);
      const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
      try {
        const res = await fetch(`${address}${path}`, {
          method: req.method ?? 'GET',
          ...(req.body === undefined ? {} : { body: req.body }),
          signal,
        });
        const body = await res.text();
        if (res.status >= 500) {
          answered5xx = true;
          failures.push(`${address}: HTTP ${res.status} ${body.trim().slice(0, 200)}`);
          continue;
        }
        this.preferred = at;
        const rawIndex = res.headers.get('x-consul-index');
        return { status: res.status, body, index: rawIndex === null ? undefined : Number(rawIndex), address };
      } catch (err) {
        if (req.signal?.aborted) throw err;
        failures.push(`${address}: ${describeFetchError(err)}`);
      }
    }
    throw new ConsulUnavailableError(`Consul is unavailable (${failures.join('; ')})`, undefined, answered5xx);
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

function describeFetchError(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError') return 'timed out';
  return e.cause?.code ?? e.cause?.message ?? e.message;
}
