import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ApiAuthenticator } from '../../src/api/auth.js';
import { loadSettings } from '../../src/config/settings.js';
import { aclRefusal, consulAnswer } from '../../src/consul/client.js';
import { SettingsError } from '../../src/errors.js';
import { makeCert } from '../helpers/tls.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'dfp-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Settings from `env` with an empty secrets directory of its own. */
function load(env: Record<string, string>, secrets: Record<string, string> = {}) {
  const secretsDir = mkdtempSync(path.join(dir, 'secrets-'));
  for (const [name, value] of Object.entries(secrets)) writeFileSync(path.join(secretsDir, name), value);
  return loadSettings({ SECRETS_DIR: secretsDir, ...env });
}

/** The SettingsError `fn` throws, checked to name `variable` and to echo none of `secrets`. */
function refused(fn: () => unknown, variable: string, secrets: string[] = []): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof SettingsError, String(err));
    assert.equal(err.parameter, variable, err.message);
    assert.ok(err.message.startsWith(`${variable}: `), err.message);
    for (const s of secrets) assert.ok(!err.message.includes(s), `the message echoes a secret: ${err.message}`);
    return err.message;
  }
  assert.fail(`no error naming ${variable}`);
}

describe('API_USER / API_PASSWORD / API_TOKEN settings', () => {
  it('are off by default', () => {
    assert.equal(load({}).apiAuth, undefined);
  });

  it('API_USER without API_PASSWORD, or the reverse, stops start-up naming the missing variable', () => {
    assert.match(refused(() => load({ API_USER: 'ops' }), 'API_PASSWORD'), /API_USER is set/);
    assert.match(refused(() => load({ API_PASSWORD: 's3cret-value' }), 'API_USER', ['s3cret-value']), /API_PASSWORD is set/);
    // A token does not stand in for the missing half.
    refused(() => load({ API_USER: 'ops', API_TOKEN: 'abc' }), 'API_PASSWORD');
  });

  it('bad values stop start-up without echoing them', () => {
    refused(() => load({ API_USER: 'ops:evil', API_PASSWORD: 'x' }), 'API_USER', ['ops:evil']);
    refused(() => load({ API_USER: 'ops', API_PASSWORD: 'line\nbreak-secret' }), 'API_PASSWORD', ['break-secret']);
    refused(() => load({ API_TOKEN: 'has space-secret' }), 'API_TOKEN', ['space-secret']);
    refused(() => load({ API_TOKEN: 'quote"secret' }), 'API_TOKEN', ['secret']);
  });

  it('come from the secret files dfp_api_user, dfp_api_password, dfp_api_token, which win over the variables', () => {
    const s = load({ API_USER: 'env-user', API_PASSWORD: 'env-pass', API_TOKEN: 'env-token' }, { dfp_api_user: 'file-user\n', dfp_api_password: 'file pass: with spaces\n', dfp_api_token: 'file-token\n' });
    assert.deepEqual(s.apiAuth, { basic: { user: 'file-user', password: 'file pass: with spaces' }, token: 'file-token' });
    assert.deepEqual(load({ API_TOKEN: 't0k' }).apiAuth, { basic: undefined, token: 't0k' });
  });
});

describe('the API authenticator', () => {
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
  const both = new ApiAuthenticator({ basic: { user: 'ops', password: 'pä:ss' }, token: 'tok' });

  it('judges Authorization headers', () => {
    assert.equal(both.check(undefined), 'missing');
    assert.equal(both.check(''), 'missing');
    assert.equal(both.check(basic('ops', 'pä:ss')), 'ok'); // UTF-8, and a colon in the password
    assert.equal(both.check(`basic ${basic('ops', 'pä:ss').slice(6)}`), 'ok');
    assert.equal(both.check('Bearer tok'), 'ok');
    assert.equal(both.check('BEARER tok'), 'ok');
    for (const wrong of [basic('ops', 'pä:s'), basic('ops', 'pä:ssx'), basic('Ops', 'pä:ss'), basic('', ''), 'Basic', 'Basic a b', 'Bearer tok2', 'Bearer to', 'Token tok', 'tok']) {
      assert.equal(both.check(wrong), 'wrong', wrong);
    }
  });

  it('accepts only the schemes configured, and offers them', () => {
    const tokenOnly = new ApiAuthenticator({ basic: undefined, token: 'tok' });
    assert.equal(tokenOnly.check(basic('ops', 'tok')), 'wrong');
    assert.deepEqual(tokenOnly.challenges, ['Bearer realm="docker-flow-proxy"']);
    const basicOnly = new ApiAuthenticator({ basic: { user: 'ops', password: 'pw' }, token: undefined });
    assert.equal(basicOnly.check('Bearer pw'), 'wrong');
    assert.deepEqual(basicOnly.challenges, ['Basic realm="docker-flow-proxy", charset="UTF-8"']);
  });
});

describe('Consul access settings (CONSUL_HTTP_TOKEN, CONSUL_CACERT, CONSUL_CLIENT_CERT/KEY)', () => {
  const ca = makeCert(dir, 'consul-ca');
  const client = makeCert(dir, 'client.dc1.consul');
  const file = (name: string, text: string) => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  it('read the token from the variable, the dfp_consul_http_token secret (which wins) or CONSUL_HTTP_TOKEN_FILE', () => {
    assert.deepEqual(load({}).consulAccess, {});
    assert.equal(load({ CONSUL_HTTP_TOKEN: 'env-token' }).consulAccess.token, 'env-token');
    assert.equal(load({ CONSUL_HTTP_TOKEN: 'env-token' }, { dfp_consul_http_token: 'file-token\n' }).consulAccess.token, 'file-token');
    assert.equal(load({ CONSUL_HTTP_TOKEN_FILE: file('token.txt', ' from-file \n') }).consulAccess.token, 'from-file');
    refused(() => load({ CONSUL_HTTP_TOKEN: 'two words-secret' }), 'CONSUL_HTTP_TOKEN', ['words-secret']);
    refused(() => load({ CONSUL_HTTP_TOKEN_FILE: path.join(dir, 'missing') }), 'CONSUL_HTTP_TOKEN_FILE');
  });

  it('read the CA and the client certificate and key, checked at start-up', () => {
    const access = load({ CONSUL_CACERT: file('ca.pem', ca.cert), CONSUL_CLIENT_CERT: file('client.pem', client.cert), CONSUL_CLIENT_KEY: file('client.key', client.key) }).consulAccess;
    assert.deepEqual(access.tls, { ca: ca.cert, cert: client.cert, key: client.key });
    assert.deepEqual(load({ CONSUL_CACERT: file('ca2.pem', ca.cert) }).consulAccess.tls, { ca: ca.cert });
    refused(() => load({ CONSUL_CACERT: path.join(dir, 'nope.pem') }), 'CONSUL_CACERT');
    refused(() => load({ CONSUL_CACERT: file('not-pem.txt', 'hello') }), 'CONSUL_CACERT');
    refused(() => load({ CONSUL_CACERT: file('bad.pem', '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n') }), 'CONSUL_CACERT');
    refused(() => load({ CONSUL_CLIENT_CERT: file('c1.pem', client.cert) }), 'CONSUL_CLIENT_KEY');
    refused(() => load({ CONSUL_CLIENT_KEY: file('k1.pem', client.key) }), 'CONSUL_CLIENT_CERT');
    // A key that is not the certificate's: named, and no key material in the message.
    const keyLine = ca.key.split('\n')[1] ?? '';
    refused(() => load({ CONSUL_CLIENT_CERT: file('c2.pem', client.cert), CONSUL_CLIENT_KEY: file('k2.pem', ca.key) }), 'CONSUL_CLIENT_KEY', [keyLine]);
  });
});

describe("Consul's refusals in words", () => {
  it('names ACL refusals and what to check, and keeps other answers', () => {
    assert.match(consulAnswer(403, 'ACL not found'), /^403 \(ACL not found: .*CONSUL_HTTP_TOKEN\)$/);
    assert.match(consulAnswer(403, 'Permission denied'), /^403 \(Permission denied: Consul's ACL refused it; CONSUL_HTTP_TOKEN/);
    const txn = JSON.stringify({ Results: null, Errors: [{ OpIndex: 0, What: 'Permission denied' }] }, null, 4);
    assert.match(consulAnswer(409, txn), /^409 \(Permission denied/);
    assert.equal(aclRefusal(409, JSON.stringify({ Errors: [{ OpIndex: 0, What: 'failed to set key "a", index is stale' }] })), undefined);
    assert.equal(consulAnswer(500, 'No cluster leader'), '500 No cluster leader');
    assert.equal(consulAnswer(409, '{"secret":"x"}', false), '409');
  });
});
