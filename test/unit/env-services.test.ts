import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DfpError } from '../../src/errors.js';
import { envServices } from '../../src/sources/env-services.js';

const opts = { separator: ',', listenerPorts: new Set([80, 443]) };

describe('services from the environment (DFP_SERVICE_*)', () => {
  it('the unnumbered service and numbered ones, up to the first without SERVICE_NAME', () => {
    const services = envServices(
      {
        DFP_SERVICE_SERVICE_NAME: 'books',
        DFP_SERVICE_SERVICE_PATH: '/api/v1/books',
        DFP_SERVICE_1_SERVICE_NAME: 'shop',
        DFP_SERVICE_1_SERVICE_DOMAIN: 'shop.com',
        DFP_SERVICE_1_HTTPS_ONLY: 'true',
        DFP_SERVICE_3_SERVICE_NAME: 'never',
        DFP_SERVICE_3_SERVICE_PATH: '/never',
        OTHER: 'x',
      },
      opts,
    );
    assert.deepEqual(
      services.map((s) => [s.prefix, s.spec.serviceName, s.spec.destinations.map((d) => [d.index, d.servicePath.join(','), d.serviceDomain.join(','), d.httpsOnly])]),
      [
        ['DFP_SERVICE_', 'books', [[0, '/api/v1/books', '', false]]],
        ['DFP_SERVICE_1_', 'shop', [[0, '/', 'shop.com', true]]],
      ],
    );
  });

  it('the unindexed destination is kept beside indexed ones; an indexed one needs SERVICE_PATH_N and PORT_N', () => {
    const [svc] = envServices(
      {
        DFP_SERVICE_1_SERVICE_NAME: 'web',
        DFP_SERVICE_1_SERVICE_PATH: '/web',
        DFP_SERVICE_1_SERVICE_PATH_1: '/a',
        DFP_SERVICE_1_PORT_1: '8080',
        DFP_SERVICE_1_SERVICE_PATH_2: '/b',
        DFP_SERVICE_1_PORT_2: '8081',
        // No PORT_3: scanning stops, so destination 4 is not read either.
        DFP_SERVICE_1_SERVICE_PATH_3: '/c',
        DFP_SERVICE_1_SERVICE_PATH_4: '/d',
        DFP_SERVICE_1_PORT_4: '8083',
      },
      opts,
    );
    assert.deepEqual(
      svc?.spec.destinations.map((d) => [d.index, d.servicePath.join(','), d.port]),
      [
        [0, '/web', undefined],
        [1, '/a', 8080],
        [2, '/b', 8081],
      ],
    );
  });

  it('REQ_MODE defaults to DEFAULT_PROTOCOL; tcp services from the environment', () => {
    const [svc] = envServices({ DFP_SERVICE_1_SERVICE_NAME: 'redis', DFP_SERVICE_1_SRC_PORT: '6379', DFP_SERVICE_1_PORT: '6379' }, opts, 'tcp');
    assert.deepEqual(
      svc?.spec.destinations.map((d) => [d.reqMode, d.srcPort]),
      [['tcp', 6379]],
    );
  });

  it('a mixed service: an indexed TCP destination (PORT_N with REQ_MODE_N=tcp) beside an HTTP one; no fallbacks between destinations', () => {
    const [svc] = envServices(
      {
        DFP_SERVICE_1_SERVICE_NAME: 'db',
        DFP_SERVICE_1_SERVICE_PATH: '/ui',
        DFP_SERVICE_1_SRC_PORT: '80',
        DFP_SERVICE_1_REQ_MODE_1: 'tcp',
        DFP_SERVICE_1_PORT_1: '5432',
        DFP_SERVICE_1_SRC_PORT_1: '5432',
      },
      opts,
    );
    assert.deepEqual(
      svc?.spec.destinations.map((d) => [d.index, d.reqMode, d.srcPort, d.servicePath.join(',')]),
      [
        [0, 'http', 80, '/ui'],
        [1, 'tcp', 5432, ''],
      ],
    );
  });

  it('anything invalid stops start-up with an error naming the variable', () => {
    const fails = (env: Record<string, string>, variable: string) =>
      assert.throws(
        () => envServices(env, opts),
        (e: unknown) => e instanceof DfpError && e.code === 'DFP_ERR_SETTINGS' && e.parameter === variable && e.message.startsWith(`${variable}: `),
        JSON.stringify(env),
      );
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'web', DFP_SERVICE_1_SERVICE_PATH: '/x', DFP_SERVICE_1_TIMEOUT_SERVER: 'abc' }, 'DFP_SERVICE_1_TIMEOUT_SERVER');
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'web', DFP_SERVICE_1_SERVICE_PATH: '/x', DFP_SERVICE_1_SERVICE_PATH_1: '/a b', DFP_SERVICE_1_PORT_1: '80' }, 'DFP_SERVICE_1_SERVICE_PATH_1');
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'web' }, 'DFP_SERVICE_1_SERVICE_PATH');
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'web', DFP_SERVICE_1_SERVICE_PATH: '/x', DFP_SERVICE_1_BACKEND_EXTRA: 'x' }, 'DFP_SERVICE_1_BACKEND_EXTRA');
    fails({ DFP_SERVICE_SERVICE_NAME: 'web', DFP_SERVICE_SERVICE_PATH: '/x', DFP_SERVICE_1_SERVICE_NAME: 'web', DFP_SERVICE_1_SERVICE_PATH: '/y' }, 'DFP_SERVICE_1_SERVICE_NAME');
    // A misspelt variable is not ignored.
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'web', DFP_SERVICE_1_SERVCE_PATH: '/x' }, 'DFP_SERVICE_1_SERVCE_PATH');
    // Together they must fit: two TCP services on one port, or one aclName twice.
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'a', DFP_SERVICE_1_REQ_MODE: 'tcp', DFP_SERVICE_1_SRC_PORT: '6379', DFP_SERVICE_2_SERVICE_NAME: 'b', DFP_SERVICE_2_REQ_MODE: 'tcp', DFP_SERVICE_2_SRC_PORT: '6379' }, 'DFP_SERVICE_2_SRC_PORT');
    fails({ DFP_SERVICE_1_SERVICE_NAME: 'a', DFP_SERVICE_1_SERVICE_PATH: '/a', DFP_SERVICE_2_SERVICE_NAME: 'b', DFP_SERVICE_2_ACL_NAME: 'a', DFP_SERVICE_2_SERVICE_PATH: '/b' }, 'DFP_SERVICE_2_ACL_NAME');
  });
});
