import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConsulAgent } from '../../src/consul/agent.js';
import { SettingsError } from '../../src/errors.js';
import { callApi, haproxyGeneration, startConsul, stopConsul, tempDir } from '../helpers/harness.js';
import { certCall, hello, keyLines, makeCert, type Pem, startTlsProxy, type TlsProxy } from '../helpers/tls.js';

/**
 * CRT_LIST_PATH: an operator's crt-list, checked line by line at start-up and merged with the
 * managed certificates; what HAProxy loads are validated copies, so a file changed afterwards
 * never reaches it. A line outside the grammar stops start-up naming the variable and the line.
 */
describe('CRT_LIST_PATH: an operator crt-list merged with the managed certificates', () => {
  let consul: ConsulAgent;
  let dir: string;
  let f: Pem;
  let g: Pem;
  let h: Pem;
  const proxies: TlsProxy[] = [];
  let p: TlsProxy;

  before(async () => {
    dir = tempDir();
    mkdirSync(path.join(dir, 'sub'));
    f = makeCert(dir, 'f.com', ['f.com', '*.f.com']);
    g = makeCert(dir, 'g.com');
    h = makeCert(dir, 'h.com');
    writeFileSync(path.join(dir, 'f.pem'), f.bundle);
    writeFileSync(path.join(dir, 'g.pem'), g.bundle);
    writeFileSync(
      path.join(dir, 'list.txt'),
      [
        '# the operator list',
        '',
        'g.pem',
        `${path.join(dir, 'f.pem')} [alpn http/1.1 ssl-min-ver TLSv1.2] F.com`,
        './sub/../f.pem [alpn h2] *.f.com !y.f.com',
      ].join('\n'),
    );
    consul = await startConsul();
    p = await startTlsProxy(consul.address, { CRT_LIST_PATH: path.join(dir, 'list.txt') });
    proxies.push(p);
  });

  after(async () => {
    for (const x of proxies) await x.stop().catch(() => undefined);
    if (consul) await stopConsul(consul);
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the lines with their SNI filters and options; the first line is the default', async () => {
    assert.match((await callApi(p, 'config')).text, /ssl crt-list \S+crt-list\.txt /, 'the :ssl listener is bound without any managed certificate');
    assert.deepEqual(await hello(p.tlsPort, 'unknown.example'), { cn: 'g.com', fingerprint256: g.fingerprint256, alpn: 'h2' });
    const fLine = await hello(p.tlsPort, 'f.com');
    assert.equal(fLine.fingerprint256, f.fingerprint256);
    assert.equal(fLine.alpn, 'http/1.1', 'the line`s alpn replaces the bind`s');
    const wildcard = await hello(p.tlsPort, 'x.f.com');
    assert.equal(wildcard.fingerprint256, f.fingerprint256);
    assert.equal(wildcard.alpn, 'h2');
    assert.equal((await hello(p.tlsPort, 'y.f.com')).cn, 'g.com', '!y.f.com excludes it');
    const live = readFileSync(path.join(p.stateDir, 'crt-list.txt'), 'utf8');
    const copies = path.join(p.stateDir, 'certs-live', 'crt-list');
    assert.equal(live, [`${copies}/1-g.pem`, `${copies}/2-f.pem [alpn http/1.1 ssl-min-ver TLSv1.2] f.com`, `${copies}/2-f.pem [alpn h2] *.f.com !y.f.com`, ''].join('\n'));
    assert.deepEqual(
      ((await callApi(p, 'certs')).body.Certs as Record<string, unknown>[]).map((x) => [x.ProxyServiceName, x.Source, x.Fingerprint256]),
      [
        ['g.pem', 'crt-list', g.fingerprint256],
        ['f.pem', 'crt-list', f.fingerprint256],
      ],
    );
  });

  it('a managed certificate joins at the end of the crt-list at run time; crt-list lines are not deletable', async () => {
    const generation = await haproxyGeneration(p);
    const res = await certCall(p, 'PUT', 'h.com', h.bundle);
    assert.equal(res.status, 200, res.text);
    assert.equal((await hello(p.tlsPort, 'h.com')).fingerprint256, h.fingerprint256);
    assert.equal((await hello(p.tlsPort, 'unknown.example')).cn, 'g.com', 'the default stays');
    assert.equal(await haproxyGeneration(p), generation, 'no reload');
    const lines = readFileSync(path.join(p.stateDir, 'crt-list.txt'), 'utf8').trimEnd().split('\n');
    assert.equal(lines.at(-1), path.join(p.stateDir, 'certs-live', 'h.com.pem'));
    assert.equal(lines.length, 4);
    for (const name of ['g.pem', 'g', 'f.pem']) {
      const del = await certCall(p, 'DELETE', name);
      assert.equal(del.status, 404, `${name}: ${del.text}`);
    }
  });

  it('HAProxy loads the validated copies: an operator file changed after start-up never reaches it', async () => {
    writeFileSync(path.join(dir, 'g.pem'), 'garbage, and not what was validated');
    const res = await callApi(p, 'reload');
    assert.equal(res.status, 200, res.text);
    assert.equal((await hello(p.tlsPort, 'g.com')).fingerprint256, g.fingerprint256);
    writeFileSync(path.join(dir, 'g.pem'), g.bundle);
  });

  it('PREFERRED_CERTIFICATE puts managed certificates before the operator lines', async () => {
    const q = await startTlsProxy(consul.address, { CRT_LIST_PATH: path.join(dir, 'list.txt'), PREFERRED_CERTIFICATE: 'h.*' });
    proxies.push(q);
    assert.equal((await hello(q.tlsPort, 'unknown.example')).cn, 'h.com');
    const lines = readFileSync(path.join(q.stateDir, 'crt-list.txt'), 'utf8').trimEnd().split('\n');
    assert.equal(lines[0], path.join(q.stateDir, 'certs-live', 'h.com.pem'));
    assert.match(lines[1] ?? '', /1-g\.pem$/);
  });

  it('refuses to start on a line outside the grammar, naming CRT_LIST_PATH and the line', async () => {
    const cases: [string, RegExp][] = [
      ['g.pem\ng.pem [crt-ignore-err all]', /line 2: option "crt-ignore-err" is not accepted/],
      ['g.pem [alpn h2;x]', /line 1: alpn must be/],
      ['g.pem [verify]', /line 1: option verify needs a value/],
      ['g.pem f..com', /line 1: SNI filters must be/],
      ['g.pem\n\n# x\nmissing.pem', /line 4: certificate file \S+missing\.pem does not exist/],
      ['list.txt', /line 1: certificate file \S+list\.txt: no PEM certificate found/],
      ['g.pem "a.com"', /line 1: quotes, backslashes and \$ are not allowed/],
      ['g.pem\u0007', /line 1: only printable ASCII/],
      ['g.pem ] a.com', /line 1: "\]" without "\["/],
      ['g.pem [alpn h2] [verify none]', /line 1: at most one \[options\] block/],
      ['g.pem\nbind :1 ssl crt /etc/passwd', /line 2: certificate file \S+bind does not exist/],
      [`${g.key}`, /is a PEM file, not a crt-list/],
    ];
    for (const [text, expected] of cases) {
      const file = path.join(dir, 'bad-list.txt');
      writeFileSync(file, text);
      const stateDir = tempDir();
      await assert.rejects(
        startTlsProxy(consul.address, { STATE_DIR: stateDir, CRT_LIST_PATH: file }),
        (err: Error) => {
          assert.ok(err instanceof SettingsError, `${text}: ${err.message}`);
          assert.equal(err.parameter, 'CRT_LIST_PATH');
          assert.match(err.message, /^CRT_LIST_PATH: /);
          assert.match(err.message, expected, text);
          for (const line of keyLines(g)) assert.ok(!err.message.includes(line), 'no key material in the error');
          return true;
        },
      );
      rmSync(stateDir, { recursive: true, force: true });
    }
    const stateDir = tempDir();
    await assert.rejects(startTlsProxy(consul.address, { STATE_DIR: stateDir, CRT_LIST_PATH: path.join(dir, 'nope.txt') }), /CRT_LIST_PATH: \S+nope\.txt: no such file/);
    rmSync(stateDir, { recursive: true, force: true });
  });
});
