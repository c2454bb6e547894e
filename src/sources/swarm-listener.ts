import { ListenerUnavailableError } from '../errors.js';
import { Params } from '../spec/params.js';
import { type ParseOptions, parseReconfigure, type ReconfigureRequest } from '../spec/parse.js';
import type { Logger } from '../util/log.js';

/**
 * The Docker Flow Swarm Listener's pull API: `get-services` lists one notification per service
 * (its parameters as a string map, exactly what it would send to `reconfigure`), and
 * `notify-services` makes it send them all again.
 */
export class SwarmListener {
  constructor(
    readonly baseUrl: string,
    private readonly log: Logger,
  ) {}

  /**
   * The listener's services, parsed like notifications: unknown parameters ignored, `replicas=0`
   * a remove. One that can never work is logged and skipped (the others still apply). Tries every
   * `intervalMs` until the listener answers, or until `signal` aborts (then undefined).
   */
  async services(opts: ParseOptions, intervalMs: number, signal: AbortSignal): Promise<ReconfigureRequest[] | undefined> {
    const url = `${this.baseUrl}/v1/docker-flow-swarm-listener/get-services`;
    for (let attempt = 1; !signal.aborted; attempt++) {
      try {
        const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(10_000)]) });
        const body = await res.text();
        if (res.status !== 200) throw new Error(`HTTP ${res.status} ${body.slice(0, 200)}`);
        return this.parse(body, opts);
      } catch (err) {
        if (signal.aborted) return undefined;
        this.log.warn(`the Swarm Listener at ${url} did not answer (${(err as Error).message}); trying again in ${intervalMs} ms (attempt ${attempt})`);
        await new Promise((r) => setTimeout(r, intervalMs));
      }
    }
    return undefined;
  }

  /** `reload?fromListener=true`: asks the listener to send every notification again. */
  async notifyServices(): Promise<void> {
    const url = `${this.baseUrl}/v1/docker-flow-swarm-listener/notify-services`;
    let status: number;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
      await res.arrayBuffer();
      status = res.status;
    } catch (err) {
      throw new ListenerUnavailableError(`the Swarm Listener at ${url} did not answer: ${(err as Error).message}`, err);
    }
    if (status !== 200) throw new ListenerUnavailableError(`the Swarm Listener answered ${status} to ${url}`);
  }

  private parse(body: string, opts: ParseOptions): ReconfigureRequest[] {
    const list = JSON.parse(body) as unknown;
    if (!Array.isArray(list)) throw new Error('get-services did not answer a JSON array');
    const out: ReconfigureRequest[] = [];
    for (const item of list) {
      if (typeof item !== 'object' || item === null) continue;
      const pairs = Object.entries(item as Record<string, unknown>).filter((e): e is [string, string] => typeof e[1] === 'string');
      try {
        out.push(parseReconfigure(new Params(pairs), opts));
      } catch (err) {
        const name = pairs.find(([k]) => k === 'serviceName')?.[1] ?? '(no serviceName)';
        this.log.error(`the Swarm Listener's service ${name} cannot be routed: ${(err as Error).message}; skipped`);
      }
    }
    return out;
  }
}
