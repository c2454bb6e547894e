import { ReloadFailedError } from '../errors.js';
import type { HaproxyProcess } from '../haproxy/process.js';
import type { MapName } from '../render/haproxy-config.js';
import type { RuntimeOp } from './plan.js';

/** Every argument we send is a single token: no whitespace, no ';' (the CLI's command separator). */
const TOKEN = /^[^\s;]+$/;

function command(...parts: string[]): string {
  for (const p of parts) if (!TOKEN.test(p)) throw new ReloadFailedError(`refusing runtime API argument ${JSON.stringify(p)}`);
  return parts.join(' ');
}

async function expect(haproxy: HaproxyProcess, cmd: string, ok: RegExp): Promise<string> {
  const reply = (await haproxy.adminCommand(cmd)).trim();
  if (!ok.test(reply)) throw new ReloadFailedError(`runtime API: "${cmd}" answered ${JSON.stringify(reply.slice(0, 200))}`);
  return reply;
}

const EMPTY = /^$/;

/** The first command of an op, as a dry run shows it. */
export function describeOp(op: RuntimeOp, mapFiles: Readonly<Record<MapName, string>>): string {
  switch (op.kind) {
    case 'fill-slot':
      return `set server ${op.backend}/${op.slot} addr ${op.address} port ${op.port}`;
    case 'free-slot':
      return `set server ${op.backend}/${op.slot} state maint`;
    case 'set-map':
      return `${op.isNew ? 'add' : 'set'} map ${mapFiles[op.map]} ${op.key} ${op.value}`;
    case 'del-map':
      return `del map ${mapFiles[op.map]} ${op.key}`;
  }
}

/**
 * Runs the runtime API commands of a plan against the current worker (measured sequences from
 * the HAProxy 2.6 handbook). Any unexpected answer throws: the applier then falls back to a full,
 * validated reload, which is always correct.
 */
export async function runRuntimeOps(haproxy: HaproxyProcess, ops: readonly RuntimeOp[], mapFiles: Readonly<Record<MapName, string>>): Promise<void> {
  for (const op of ops) {
    switch (op.kind) {
      case 'fill-slot': {
        const id = `${op.backend}/${op.slot}`;
        await expect(haproxy, command('set', 'server', id, 'addr', op.address, 'port', String(op.port)), /changed|no need/i);
        // Leaving maintenance with checks on, HAProxy counts the server up and checks it at once.
        await expect(haproxy, command('set', 'server', id, 'state', 'ready'), EMPTY);
        break;
      }
      case 'free-slot':
        // maint stops new requests at once; requests in flight finish.
        await expect(haproxy, command('set', 'server', `${op.backend}/${op.slot}`, 'state', 'maint'), EMPTY);
        break;
      case 'set-map':
        await expect(haproxy, command(op.isNew ? 'add' : 'set', 'map', mapFiles[op.map], op.key, op.value), EMPTY);
        break;
      case 'del-map':
        await expect(haproxy, command('del', 'map', mapFiles[op.map], op.key), EMPTY);
        break;
    }
  }
}
