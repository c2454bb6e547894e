import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { canonicalAllocation } from '../../src/apply/plan.js';
import { fdHardLimit, fdNeed, fdShortfall } from '../../src/haproxy/fd-budget.js';
import { renderConfig } from '../../src/render/haproxy-config.js';
import { spec } from '../../src/spec/defaults.js';
import { defaultRenderSettings } from '../helpers/render-settings.js';

const SETTINGS = defaultRenderSettings({ listeners: [{ port: 80, ssl: false, options: '' }], adminSocket: '/run/admin.sock' });

describe('file-descriptor budget', () => {
  const one = (name: string, skipCheck: boolean) => ({ spec: spec({ serviceName: name, skipCheck, destinations: [{ servicePath: [`/${name}`] }] }), instances: [] });

  it('two per connection plus one per health-checked slot; skipCheck slots cost none', () => {
    const services = [one('a', false), one('b', true)];
    const rendered = renderConfig(SETTINGS, services, canonicalAllocation(services, 2, 4));
    // a: 4 slots with checks; b: 4 without; 2 spares x 4 with checks.
    assert.deepEqual(fdNeed(rendered, 1000), { need: 2000 + 12 + 64, checked: 12 });
    assert.equal(fdShortfall(rendered, 1000, 2076), undefined);
    assert.match(fdShortfall(rendered, 1000, 2075) ?? '', /about 2076 file descriptors \(2 x MAXCONN 1000, plus 12 health-checked server slots\), but this process may open at most 2075/);
    assert.equal(fdShortfall(rendered, 1000, undefined), undefined, 'no known limit: no verdict');
  });

  it("reads the hard limit from /proc's limits format", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-fd-'));
    const file = path.join(dir, 'limits');
    writeFileSync(file, 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 20000                files\n');
    assert.equal(fdHardLimit(file), 20000);
    writeFileSync(file, 'Max open files            unlimited            unlimited            files\n');
    assert.equal(fdHardLimit(file), undefined);
    assert.equal(fdHardLimit(path.join(dir, 'missing')), undefined);
  });
});
