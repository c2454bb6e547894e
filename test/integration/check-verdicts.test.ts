import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import { ConfigApplier } from '../../src/apply/applier.js';
import { loadSettings } from '../../src/config/settings.js';
import { HaproxyProcess } from '../../src/haproxy/process.js';
import { renderSettings, statePaths } from '../../src/proxy.js';
import { spec } from '../../src/spec/defaults.js';
import type { ServiceState } from '../../src/state/service-state.js';
import { createLogger } from '../../src/util/log.js';

/**
 * `haproxy -c` verdicts are shared by candidates that differ only in server slot addresses (a
 * reload whose instances moved since its precheck is not checked again). Anything else checks
 * anew. The real HAProxy binary judges; no HAProxy runs.
 */
const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-verdicts-'));
after(() => rmSync(dir, { recursive: true, force: true }));

it('a verdict holds for the same config with other slot addresses, and for nothing else', async () => {
  const settings = loadSettings({ STATE_DIR: dir, SECRETS_DIR: path.join(dir, 'no-secrets') });
  const paths = statePaths(dir);
  const log = createLogger('error');
  const applier = new ConfigApplier(settings.haproxyBin, new HaproxyProcess(settings.haproxyBin, paths, log), renderSettings(settings, paths.adminSocket), paths, log);
  const specs = Array.from({ length: 5 }, (_, i) => spec({ serviceName: `svc${i}`, destinations: [{ servicePath: [`/svc${i}`] }] }));
  const withInstances = (n: number, port = 20000): ServiceState[] =>
    specs.map((s, i) => ({ spec: s, instances: Array.from({ length: n }, (_, k) => ({ id: `host:${s.serviceName}.${k}:80`, address: '127.0.0.1', port: port + i * 10 + k })) }));

  await applier.precheck(withInstances(0));
  assert.equal(applier.validations, 1, 'checked: no verdict yet');
  await applier.precheck(withInstances(2));
  assert.equal(applier.validations, 1, 'instances in the slots only: the verdict holds');
  await applier.precheck(withInstances(3, 30000));
  assert.equal(applier.validations, 1, 'other addresses: still the same verdict');
  await applier.precheck(withInstances(settings.serverSlots + 2));
  assert.equal(applier.validations, 2, 'more instances than slots: more server lines, checked anew');
  await applier.precheck([...withInstances(1), { spec: spec({ serviceName: 'extra', destinations: [{ servicePath: ['/extra'] }] }), instances: [] }]);
  assert.equal(applier.validations, 3, 'another service: checked anew');
  // Two checks of one candidate at once: one run of haproxy -c.
  const other = withInstances(1).map((s, i) => (i === 0 ? { spec: spec({ serviceName: 'svc0', destinations: [{ servicePath: ['/moved'] }] }), instances: s.instances } : s));
  await Promise.all([applier.precheck(other), applier.precheck(other)]);
  assert.equal(applier.validations, 4, 'concurrent checks of the same candidate share one run');
});
