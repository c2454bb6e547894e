import { readFileSync } from 'node:fs';
import type { RenderedConfig } from '../render/haproxy-config.js';

/**
 * HAProxy reserves file descriptors up front: two per connection (`maxconn`: client and server
 * side) and one per server with health checks, free server slots included. Past the process's
 * hard limit (`ulimit -Hn`) the new worker refuses to start ("Cannot raise FD limit"), which
 * `haproxy -c` does not catch; this says so before anything goes live.
 */
export function fdNeed(rendered: Pick<RenderedConfig, 'backends'>, maxconn: number): { need: number; checked: number } {
  let checked = 0;
  for (const b of rendered.backends.values()) {
    const first = b.slots[0];
    if (first && b.serverOptions(first.name).includes(' check')) checked += b.slots.length;
  }
  // Listeners, sockets, pipes: HAProxy's own few (measured: 17 over 2 x maxconn + checks).
  return { need: 2 * maxconn + checked + 64, checked };
}

/** The hard limit on open files this process (and so HAProxy, its child) may raise itself to. */
export function fdHardLimit(limitsFile = '/proc/self/limits'): number | undefined {
  try {
    const line = readFileSync(limitsFile, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const hard = line?.trim().split(/\s+/)[4];
    return hard === undefined || hard === 'unlimited' ? undefined : Number(hard);
  } catch {
    return undefined;
  }
}

/** Why this config cannot start under the limit, or undefined when it fits. */
export function fdShortfall(rendered: Pick<RenderedConfig, 'backends'>, maxconn: number, limit: number | undefined): string | undefined {
  if (limit === undefined) return undefined;
  const { need, checked } = fdNeed(rendered, maxconn);
  if (need <= limit) return undefined;
  return (
    `HAProxy would need about ${need} file descriptors (2 x MAXCONN ${maxconn}, plus ${checked} health-checked server slots), ` +
    `but this process may open at most ${limit} (ulimit -n). Raise the limit, or lower MAXCONN or SERVER_SLOTS, or set skipCheck on services that do not need HAProxy's checks`
  );
}
