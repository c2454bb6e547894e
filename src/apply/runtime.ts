import { ReloadFailedError } from '../errors.js';
import type { HaproxyProcess } from '../haproxy/process.js';
import { type MapName, serverAddress } from '../render/haproxy-config.js';
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
    case 'add-server':
      return `add server ${op.backend}/${op.server.name} ${serverAddress(op.server)}${op.server.check ? ' check' : ''}`;
    case 'set-addr':
      return `set server ${op.backend}/${op.server.name} addr ${op.server.address} port ${op.server.port}`;
    case 'set-map':
      return `${op.isNew ? 'add' : 'set'} map ${mapFiles[op.map]} ${op.key} ${op.value}`;
    case 'del-map':
      return `del map ${mapFiles[op.map]} ${op.key}`;
    case 'del-server':
      return `del server ${op.backend}/${op.server}`;
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
      case 'add-server': {
        const id = `${op.backend}/${op.server.name}`;
        // Dynamic servers inherit no default-server settings: every keyword is explicit.
        await expect(haproxy, command('add', 'server', id, serverAddress(op.server), ...(op.server.check ? ['check'] : [])), /New server registered/);
        if (op.server.check) await expect(haproxy, command('enable', 'health', id), EMPTY);
        await expect(haproxy, command('enable', 'server', id), EMPTY);
        break;
      }
      case 'set-addr':
        await expect(haproxy, command('set', 'server', `${op.backend}/${op.server.name}`, 'addr', op.server.address, 'port', String(op.server.port)), /changed|no need/i);
        break;
      case 'set-map':
        await expect(haproxy, command(op.isNew ? 'add' : 'set', 'map', mapFiles[op.map], op.key, op.value), EMPTY);
        break;
      case 'del-map':
        await expect(haproxy, command('del', 'map', mapFiles[op.map], op.key), EMPTY);
        break;
      case 'del-server': {
        const id = `${op.backend}/${op.server}`;
        // maint stops new requests at once; requests in flight finish. Deletion waits for them.
        await expect(haproxy, command('set', 'server', id, 'state', 'maint'), EMPTY);
        const deadline = Date.now() + 5000;
        for (;;) {
          const reply = (await haproxy.adminCommand(command('del', 'server', id))).trim();
          if (/Server deleted/.test(reply)) break;
          if (!/still has connections|not in maintenance|is being/.test(reply) || Date.now() > deadline) {
            throw new ReloadFailedError(`runtime API: "del server ${id}" answered ${JSON.stringify(reply.slice(0, 200))}`);
          }
          await new Promise((r) => setTimeout(r, 10));
        }
        break;
      }
    }
  }
}
