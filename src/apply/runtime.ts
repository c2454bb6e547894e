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

/** The one line `set server … addr … port …` answers when it worked (HAProxy 2.6). */
const ADDR_CHANGED = /^(IP changed from '|no need to change the addr)/;

/**
 * Commands per line: HAProxy runs `;`-separated commands of one line in order and answers each in
 * turn, so a plan goes out over one connection instead of one per command. The line stays well
 * under HAProxy's request buffer (tune.bufsize, 16 KB by default).
 */
const LINE_LIMIT = 8000;

interface Command {
  readonly text: string;
  /** It answers one line (`set server addr`); every other command here answers nothing when it works. */
  readonly answers: boolean;
}

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
  const commands: Command[] = [];
  for (const op of ops) {
    switch (op.kind) {
      case 'fill-slot': {
        const id = `${op.backend}/${op.slot}`;
        commands.push({ text: command('set', 'server', id, 'addr', op.address, 'port', String(op.port)), answers: true });
        // Leaving maintenance with checks on, HAProxy counts the server up and checks it at once.
        commands.push({ text: command('set', 'server', id, 'state', 'ready'), answers: false });
        break;
      }
      case 'free-slot':
        // maint stops new requests at once; requests in flight finish.
        commands.push({ text: command('set', 'server', `${op.backend}/${op.slot}`, 'state', 'maint'), answers: false });
        break;
      case 'set-map':
        commands.push({ text: command(op.isNew ? 'add' : 'set', 'map', mapFiles[op.map], op.key, op.value), answers: false });
        break;
      case 'del-map':
        commands.push({ text: command('del', 'map', mapFiles[op.map], op.key), answers: false });
        break;
    }
  }
  let line: Command[] = [];
  let length = 0;
  for (const c of commands) {
    if (line.length > 0 && length + c.text.length + 1 > LINE_LIMIT) {
      await send(haproxy, line);
      line = [];
      length = 0;
    }
    line.push(c);
    length += c.text.length + 1;
  }
  if (line.length > 0) await send(haproxy, line);
}

/**
 * One line of commands. Their answers come concatenated (blank lines between): exactly one
 * ADDR_CHANGED line per `set server addr` and nothing else, or it failed (an error is a line of
 * its own, e.g. "No such server."). The commands after a failed one still ran; the caller then
 * reloads, which is always correct.
 */
async function send(haproxy: HaproxyProcess, line: readonly Command[]): Promise<void> {
  const text = line.map((c) => c.text).join(';');
  const reply = await haproxy.adminCommand(text);
  const answered = reply
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const expected = line.filter((c) => c.answers).length;
  if (answered.length !== expected || !answered.every((l) => ADDR_CHANGED.test(l))) {
    throw new ReloadFailedError(`runtime API: ${line.length} command${line.length === 1 ? '' : 's'} from "${line[0]?.text}" answered ${JSON.stringify(reply.trim().slice(0, 200))}`);
  }
}
