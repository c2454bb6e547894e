import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ReloadFailedError } from '../../src/errors.js';
import { HaproxyProcess } from '../../src/haproxy/process.js';
import { createLogger } from '../../src/util/log.js';

/**
 * How a reload is confirmed, against stand-ins for HAProxy's two sockets: the master CLI (`show
 * proc`, `reload`) and the worker's admin socket (`show info`). Real HAProxy reloads run through
 * every integration suite; these pin the cases a real one cannot be made to show on demand, such
 * as a master that stays busy long after its new worker serves (what 10,000 services do).
 */
describe('reload confirmation', () => {
  let dir: string;
  let stand: ReturnType<typeof spawn>;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-reload-'));
    // adopt() supervises a PID: a process that lives while the tests run stands for the master.
    stand = spawn('sleep', ['120'], { stdio: 'ignore' });
  });
  after(() => {
    stand.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  const showProc = (workers: number[], failed = 0) =>
    `#<PID>          <type>          <reloads>       <uptime>        <version>\n${stand.pid} master 1 [failed: ${failed}] 0d00h00m01s 2.6.12\n# workers\n${workers.map((w) => `${w} worker 0 0d00h00m01s 2.6.12`).join('\n')}\n`;

  /** A socket answering each command with what `answer` gives (a promise: a busy process, late). */
  async function socket(file: string, answer: (command: string) => string | Promise<string>): Promise<net.Server> {
    const server = net.createServer((c) => {
      let text = '';
      c.on('data', (d) => {
        text += d.toString();
        if (!text.endsWith('\n')) return;
        void Promise.resolve(answer(text.trim())).then((reply) => c.end(reply));
      });
      c.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(file, resolve));
    return server;
  }

  function process(name: string): HaproxyProcess {
    const base = path.join(dir, name);
    const p = new HaproxyProcess(
      '/bin/false',
      { config: `${base}.cfg`, secrets: `${base}.secrets`, masterSocket: `${base}.master`, adminSocket: `${base}.admin`, pidFile: `${base}.pid`, outputFifo: `${base}.fifo` },
      createLogger('error'),
    );
    p.adopt(stand.pid as number);
    return p;
  }

  it('is confirmed by the new worker on the admin socket while the master does not answer yet', async () => {
    const p = process('busy');
    let reloadedAt: number | undefined;
    let held = 0;
    // After a reload the master answers only 1.5 s later (at 10,000 services: ~1.6 s), then lists the new worker.
    const master = await socket(path.join(dir, 'busy.master'), async (cmd) => {
      if (cmd === 'reload') {
        reloadedAt = performance.now();
        return '';
      }
      const at = reloadedAt;
      if (at === undefined) return showProc([100]);
      held++;
      await new Promise((r) => setTimeout(r, Math.max(0, at + 1500 - performance.now())));
      return showProc([200]);
    });
    const admin = await socket(path.join(dir, 'busy.admin'), () => `Name: HAProxy\nPid: ${reloadedAt === undefined ? 100 : 200}\n`);
    try {
      await p.reload(20_000);
      const confirmedIn = performance.now() - (reloadedAt ?? 0);
      assert.ok(confirmedIn < 1000, `confirmed ${confirmedIn.toFixed(0)} ms after the reload command, before the master answers`);
      assert.ok(held > 0, 'the master was asked');
      // Leaving HAProxy serving waits for the master: the next start must find it answering.
      await p.detach();
      assert.ok(performance.now() - (reloadedAt ?? 0) >= 1400, 'detach waited for the master');
    } finally {
      master.close();
      admin.close();
    }
  });

  it('an answer from the old worker is not taken for the new one', async () => {
    const p = process('old');
    let reloaded = false;
    let asks = 0;
    const master = await socket(path.join(dir, 'old.master'), (cmd) => {
      if (cmd === 'reload') {
        reloaded = true;
        return '';
      }
      // Lists the new worker only after the admin socket was asked a few times with the old one there.
      return showProc(reloaded && asks > 5 ? [300] : [100]);
    });
    const admin = await socket(path.join(dir, 'old.admin'), () => {
      asks++;
      return 'Pid: 100\n';
    });
    try {
      await p.reload(20_000);
      assert.ok(asks > 5, `the old worker's answers did not confirm it (${asks} asks)`);
    } finally {
      await p.detach();
      master.close();
      admin.close();
    }
  });

  it('a reload the master refuses fails with its reason, whatever the old worker answers', async () => {
    const p = process('refused');
    let reloaded = false;
    const master = await socket(path.join(dir, 'refused.master'), (cmd) => {
      if (cmd === 'reload') {
        reloaded = true;
        return '';
      }
      return showProc([100], reloaded ? 1 : 0);
    });
    const admin = await socket(path.join(dir, 'refused.admin'), () => 'Pid: 100\n');
    try {
      await assert.rejects(p.reload(20_000), (err: unknown) => err instanceof ReloadFailedError && /refused to reload/.test(err.message));
    } finally {
      await p.detach();
      master.close();
      admin.close();
    }
  });
});
