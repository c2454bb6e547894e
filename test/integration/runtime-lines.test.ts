import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { runRuntimeOps } from '../../src/apply/runtime.js';
import type { RuntimeOp } from '../../src/apply/plan.js';
import { ReloadFailedError } from '../../src/errors.js';
import type { HaproxyProcess } from '../../src/haproxy/process.js';
import { socketCommand } from '../../src/haproxy/socket.js';
import { MAP_FILES, type MapName } from '../../src/render/routes.js';
import { freePort } from '../../src/util/ports.js';
import { tempDir, track } from '../helpers/harness.js';

/**
 * A plan's runtime commands go out `;`-joined, many per connection, in lines under HAProxy's request
 * buffer. Against a real HAProxy: a plan long enough for several lines lands whole, and a command
 * HAProxy refuses in the middle of a line is reported (the applier then reloads).
 */
describe('runtime commands sent as lines of many', () => {
  const dir = tempDir();
  const socket = path.join(dir, 'admin.sock');
  const pidFile = path.join(dir, 'haproxy.pid');
  const SLOTS = 300;
  const maps = Object.fromEntries(Object.entries(MAP_FILES).map(([k, f]) => [k, path.join(dir, f)])) as Record<MapName, string>;
  const haproxy = { adminCommand: (command: string) => socketCommand(socket, command) } as unknown as HaproxyProcess;

  before(async () => {
    for (const f of Object.values(maps)) writeFileSync(f, '');
    const port = await freePort();
    const servers = Array.from({ length: SLOTS }, (_, i) => `    server s${i + 1} 0.0.0.0:0 disabled`).join('\n');
    writeFileSync(
      path.join(dir, 'h.cfg'),
      `global\n    stats socket ${socket} mode 600 level admin\n    pidfile ${pidFile}\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\nfrontend f\n    bind 127.0.0.1:${port}\n    use_backend %[path,map_beg(${maps.prefix})]\n    default_backend be\nbackend be\n${servers}\n`,
    );
    spawn(process.env.HAPROXY_BIN ?? 'haproxy', ['-D', '-f', path.join(dir, 'h.cfg')], { stdio: 'ignore' });
    for (let i = 0; i < 100; i++) {
      try {
        await socketCommand(socket, 'show info', { retryForMs: 0 });
        break;
      } catch {
        await sleep(50);
      }
    }
    track(Number(readFileSync(pidFile, 'utf8').trim()));
  });

  after(() => {
    try {
      process.kill(Number(readFileSync(pidFile, 'utf8').trim()), 'SIGKILL');
    } catch {
      // gone
    }
  });

  it(`${SLOTS} slots filled and ${SLOTS} map entries in one plan (several lines) all land`, async () => {
    const ops: RuntimeOp[] = [];
    for (let i = 0; i < SLOTS; i++) ops.push({ kind: 'fill-slot', backend: 'be', slot: `s${i + 1}`, address: `127.0.${i >> 8}.${i & 255}`, port: 1000 + i } as RuntimeOp);
    for (let i = 0; i < SLOTS; i++) ops.push({ kind: 'set-map', map: 'prefix', key: `/route-${i}/`, value: 'be', isNew: true } as RuntimeOp);
    await runRuntimeOps(haproxy, ops, maps);
    const state = await socketCommand(socket, 'show servers state be');
    for (let i = 0; i < SLOTS; i++) assert.match(state, new RegExp(` s${i + 1} 127\\.0\\.${i >> 8}\\.${i & 255} 2 \\d+ `), `s${i + 1} running at its address`);
    const map = await socketCommand(socket, `show map ${maps.prefix}`);
    assert.equal(map.split('\n').filter((l) => l.includes('/route-')).length, SLOTS);
  });

  it('a command HAProxy refuses in the middle of a line fails the plan, naming the answer', async () => {
    const ops = [
      { kind: 'free-slot', backend: 'be', slot: 's1' },
      { kind: 'fill-slot', backend: 'be', slot: 'nope', address: '127.0.0.1', port: 1 },
      { kind: 'free-slot', backend: 'be', slot: 's2' },
    ] as RuntimeOp[];
    await assert.rejects(runRuntimeOps(haproxy, ops, maps), (err: unknown) => err instanceof ReloadFailedError && /No such server/.test(err.message));
  });
});
