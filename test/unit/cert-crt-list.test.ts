import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { crtListLine, parseCrtList } from '../../src/certs/crt-list.js';
import { SettingsError } from '../../src/errors.js';
import { tempDir } from '../helpers/harness.js';
import { makeCert } from '../helpers/tls.js';

/** The CRT_LIST_PATH grammar: what is accepted, how it is normalised, and what is refused by line. */
describe('CRT_LIST_PATH grammar', () => {
  let dir: string;
  before(() => {
    dir = tempDir();
    writeFileSync(path.join(dir, 'a.pem'), makeCert(dir, 'a.com').bundle);
    writeFileSync(path.join(dir, 'ca.pem'), 'a CA bundle: HAProxy reads it, checked by haproxy -c');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts paths, every option of the grammar and SNI filters; normalises them', () => {
    const text = [
      '# comment',
      '  ',
      'a.pem\r',
      `${dir}/a.pem\t[alpn h2,http/1.1 ciphers ECDHE-RSA-AES128-GCM-SHA256:!aNULL ciphersuites TLS_AES_128_GCM_SHA256 curves X25519:P-256 ecdhe prime256v1 ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3 verify optional ca-file ca.pem crl-file ./ca.pem no-ca-names allow-0rtt]  A.com *.B.com !x.b.com`,
      'a.pem [verify none]',
    ].join('\n');
    const entries = parseCrtList(text, dir, 'list');
    assert.deepEqual(
      entries.map((e) => [e.line, e.file, e.options, e.filters]),
      [
        [3, `${dir}/a.pem`, [], []],
        [
          4,
          `${dir}/a.pem`,
          ['alpn', 'h2,http/1.1', 'ciphers', 'ECDHE-RSA-AES128-GCM-SHA256:!aNULL', 'ciphersuites', 'TLS_AES_128_GCM_SHA256', 'curves', 'X25519:P-256', 'ecdhe', 'prime256v1', 'ssl-min-ver', 'TLSv1.2', 'ssl-max-ver', 'TLSv1.3', 'verify', 'optional', 'ca-file', `${dir}/ca.pem`, 'crl-file', `${dir}/ca.pem`, 'no-ca-names', 'allow-0rtt'],
          ['a.com', '*.b.com', '!x.b.com'],
        ],
        [5, `${dir}/a.pem`, ['verify', 'none'], []],
      ],
    );
    assert.equal(entries[0]?.info.domains[0], 'a.com');
    assert.equal(crtListLine('/s/1-a.pem', entries[2]?.options ?? [], ['a.com']), '/s/1-a.pem [verify none] a.com');
    assert.deepEqual(parseCrtList('# nothing\n\n', dir), []);
  });

  it('refuses anything else, naming the line', () => {
    const bad: [string, RegExp][] = [
      ['a.pem [ssl-min-ver TLSv9]', /line 1: ssl-min-ver must be SSLv3, TLSv1\.0/],
      ['a.pem [verify sometimes]', /verify must be none, optional or required/],
      ['a.pem [ca-file /no/such/ca.pem]', /ca-file \/no\/such\/ca\.pem does not exist/],
      ['a.pem [ca-file a;b]', /ca-file must be a path/],
      ['a.pem [npn h2]', /option "npn" is not accepted/],
      ['a.pem []', /empty \[options\] block/],
      ['[alpn h2] a.pem', /must follow the certificate file/],
      ['a.pem *', /SNI filters must be/],
      ['a.pem a.*.com', /SNI filters must be/],
      ['a.pem a.com;b', /SNI filters must be/],
      ['a.pem $HOME', /quotes, backslashes and \$/],
      ['a.pem a\\.com', /quotes, backslashes and \$/],
      ['a pem', /line 1: certificate file \S+\/a does not exist/],
      ['a.pem é.com', /only printable ASCII/],
      ['a.pem\na.pem\na.pem [alpn]', /line 3: option alpn needs a value/],
    ];
    for (const [text, re] of bad) {
      assert.throws(
        () => parseCrtList(text, dir, 'list'),
        (err: Error) => err instanceof SettingsError && err.parameter === 'CRT_LIST_PATH' && /^CRT_LIST_PATH: list line \d+: /.test(err.message) && re.test(err.message),
        text,
      );
    }
  });
});
