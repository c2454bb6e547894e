import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { HaproxyUnavailableError } from '../../src/errors.js';
import { execRefusal, validateConfig } from '../../src/haproxy/validate.js';

describe('HAProxy that cannot be executed', () => {
  it('EPERM at exec (file capabilities the container lacks) names NET_BIND_SERVICE', () => {
    const err = Object.assign(new Error('spawn /usr/sbin/haproxy EPERM'), { code: 'EPERM' });
    const message = execRefusal('/usr/sbin/haproxy', err);
    assert.match(message ?? '', /^cannot execute \/usr\/sbin\/haproxy \(EPERM\): .*--cap-add NET_BIND_SERVICE/);
    assert.equal(execRefusal('/usr/sbin/haproxy', Object.assign(new Error('x'), { code: 'EACCES' })), undefined);
  });

  it('any other exec failure of haproxy -c says it could not run, with the reason', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-exec-'));
    try {
      const bin = path.join(dir, 'haproxy');
      writeFileSync(bin, '#!/bin/sh\n');
      chmodSync(bin, 0o644); // not executable: EACCES
      await assert.rejects(validateConfig(bin, [path.join(dir, 'haproxy.cfg')]), (err: unknown) => {
        assert.ok(err instanceof HaproxyUnavailableError);
        assert.match(err.message, /^cannot run .*haproxy: .*EACCES/);
        return true;
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
