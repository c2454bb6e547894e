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
      return `add server ${op.backend}/${op.server.name} ${serverAddress(op.server)}${op.options}`;
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
 *
 * `parked` holds servers taken out of rotation whose deletion HAProxy refused because a client's
 * keep-alive session still holds a connection to them: they stay in maintenance (no new requests)
 * until a later apply can delete them, the next reload drops them, or the instance comes back.
 */
export async function runRuntimeOps(
  haproxy: HaproxyProcess,
  ops: readonly RuntimeOp[],
  mapFiles: Readonly<Record<MapName, string>>,
  parked: Set<string>,
): Promise<void> {
  const returning = new Set(ops.filter((op) => op.kind === 'add-server').map((op) => `${op.backend}/${op.server.name}`));
  for (const id of [...parked]) {
    if (!returning.has(id) && (await tryDelete(haproxy, id, 1))) parked.delete(id);
  }
  for (const op of ops) {
    switch (op.kind) {
      case 'add-server': {
        const id = `${op.backend}/${op.server.name}`;
        if (parked.has(id)) {
          await expect(haproxy, command('set', 'server', id, 'addr', op.server.address, 'port', String(op.server.port)), /changed|no need/i);
          await expect(haproxy, command(op.server.check ? 'enable' : 'disable', 'health', id), EMPTY);
          parked.delete(id);
        } else {
          // Dynamic servers inherit no default-server settings: every keyword is explicit.
          await expect(haproxy, command('add', 'server', id, serverAddress(op.server), ...op.options.split(' ').filter((w) => w !== '')), /New server registered/);
          if (op.server.check) await expect(haproxy, command('enable', 'health', id), EMPTY);
        }
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
        // maint stops new requests at once; requests in flight finish.
        await expect(haproxy, command('set', 'server', id, 'state', 'maint'), EMPTY);
        if (!(await tryDelete(haproxy, id, 5))) parked.add(id);
        break;
      }
    }
  }
}

/** `del server`, retried briefly while connections drain. False when they outlast the tries. */
async function tryDelete(haproxy: HaproxyProcess, id: string, attempts: number): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    const reply = (await haproxy.adminCommand(command('del', 'server', id))).trim();
    if (/Server deleted/.test(reply)) return true;
    if (/No such server/i.test(reply)) return true;
    if (!/still has connections|not in maintenance|is being|still attached|has streams|queue/i.test(reply)) {
      throw new ReloadFailedError(`runtime API: "del server ${id}" answered ${JSON.stringify(reply.slice(0, 200))}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}
