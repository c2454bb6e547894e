import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';
import type { ConsulAgent } from '../../src/consul/agent.js';
import type { DashboardData } from '../../src/dashboard/model.js';
import { PROJECT_ROOT } from '../../src/util/project.js';
import { type Backend, callApi, eventually, startBackend, startConsul, startInstance, startProxy, stopConsul, type TestProxy, through } from '../helpers/harness.js';

/**
 * The dashboard in a real browser: Debian's Chromium (scripts/setup.sh installs it), driven by
 * playwright-core, against a real Consul and a real proxy with its HAProxy. Screenshots go to
 * test-output/dashboard/ (git-ignored) for a reviewer to look at.
 */

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const SHOTS = path.join(PROJECT_ROOT, 'test-output/dashboard');
const USER = 'dash-operator';
const PASSWORD = 'dash:pa<ss>&"word';
/** Markup in a Consul service ID: printable ASCII without spaces passes discovery's check. */
const HOSTILE_ID = '<img/src=x/onerror=window.__xss=1>';

describe('dashboard (/ui/) in headless Chromium', () => {
  let consul: ConsulAgent;
  let proxy: TestProxy;
  let secured: TestProxy | undefined;
  let browser: Browser;
  const backends: Backend[] = [];
  let traffic: NodeJS.Timeout | undefined;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium is missing at ${CHROMIUM}: run \`bash scripts/setup.sh\` as root (it runs apt-get install chromium), or set CHROMIUM_BIN`);
    mkdirSync(SHOTS, { recursive: true });
    consul = await startConsul();
    proxy = await startProxy(consul.address);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  after(async () => {
    clearInterval(traffic);
    await browser?.close();
    await secured?.stop();
    await proxy?.stop();
    for (const b of backends) await b.close();
    if (consul) await stopConsul(consul);
  });

  async function instance(service: string, n: number): Promise<Backend> {
    const b = await startInstance(consul.address, service, n);
    backends.push(b);
    return b;
  }

  /** A page that fails the test on any script error or console error (a CSP refusal is one). */
  async function openPage(context?: Awaited<ReturnType<Browser['newContext']>>): Promise<{ page: Page; problems: string[] }> {
    const page = await (context ?? browser).newPage({ viewport: { width: 1280, height: 900 } });
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
    });
    return { page, problems };
  }

  const origin = (p: TestProxy) => `http://127.0.0.1:${p.proxy.apiPort}`;
  const countOf = (page: Page, service: string) => page.locator(`article[data-service="${service}"] .instance-count`).textContent({ timeout: 10_000 });

  it('shows a service with its route, instance, health, traffic and applies, and follows a scale event without reloading', async () => {
    await instance('web', 0);
    const res = await callApi(proxy, 'reconfigure', { serviceName: 'web', servicePath: '/web' });
    assert.equal(res.status, 200, res.text);
    // Steady traffic through HAProxy, so the request counters and the rate chart move.
    traffic = setInterval(() => void through(proxy, '/web').catch(() => undefined), 100);

    const { page, problems } = await openPage();
    let navigations = 0;
    page.on('framenavigated', (frame) => {
      if (frame === page.mainFrame()) navigations++;
    });
    // `/` sends the browser to the page.
    const answer = await page.goto(`${origin(proxy)}/`);
    assert.equal(answer?.status(), 200);
    assert.equal(page.url(), `${origin(proxy)}/ui/`);
    assert.match((await answer?.headerValue('content-security-policy')) ?? '', /script-src 'self'/);

    const service = page.locator('article[data-service="web"]');
    await service.waitFor({ timeout: 10_000 });
    assert.match((await service.locator('.routes').textContent()) ?? '', /http path \/web/);
    assert.match((await countOf(page, 'web')) ?? '', /^1 instance, /);
    // HAProxy's health check of the slot passes (UP), and the backend has served requests.
    await eventually('the instance is UP in HAProxy', async () => (await service.locator('tr[data-instance="host1:web.0:8080"]').textContent()) ?? '', (t) => /UP/.test(t), 15_000);
    assert.match((await service.locator('tr[data-instance="host1:web.0:8080"]').textContent()) ?? '', /s1/);
    await eventually('requests are counted', async () => Number(await service.locator('td.requests').first().textContent()), (n) => n > 0, 15_000);
    const applies = (await page.locator('#applies tbody').textContent()) ?? '';
    assert.match(applies, /reconfigure web/);
    assert.match(applies, /api \d/, 'the reconfigure has its propagation');
    assert.match((await page.locator('#agreement').textContent()) ?? '', /1 replica in agreement/);
    assert.equal(await page.locator('#replicas tbody tr').count(), 1);
    await page.evaluate(() => {
      (window as unknown as Record<string, unknown>).__samePage = true;
    });
    const navigationsBefore = navigations;
    await page.screenshot({ path: path.join(SHOTS, '1-one-instance.png'), fullPage: true });

    // Scale: a second instance registered in Consul, nothing else. The open page follows.
    await instance('web', 1);
    await eventually('the page shows 2 instances', () => countOf(page, 'web'), (t) => /^2 instances, /.test(t ?? ''), 15_000);
    assert.equal(await page.evaluate(() => (window as unknown as Record<string, unknown>).__samePage), true, 'the page was not reloaded');
    assert.equal(navigations, navigationsBefore, 'no navigation happened');
    await eventually('the scale event is in the last applies', async () => (await page.locator('#applies tbody').textContent()) ?? '', (t) => /consul: web has 2 instances/.test(t), 10_000);
    await eventually('both instances are UP', async () => (await service.locator('tr[data-instance]').allTextContents()).filter((t) => /UP/.test(t)).length, (n) => n === 2, 15_000);
    // A few more refreshes, so the chart has a stretch of request rates.
    const refreshes = Number(await page.evaluate(() => document.body.dataset.refreshes));
    await eventually('three more refreshes', async () => Number(await page.evaluate(() => document.body.dataset.refreshes)), (n) => n >= refreshes + 3, 15_000);
    assert.equal(await page.locator('#chart canvas').count() > 0, true, 'the chart is drawn');
    await page.screenshot({ path: path.join(SHOTS, '2-scaled.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('writes what Consul says as text: markup in an instance ID is shown, not run', async () => {
    const b = await startBackend('web.hostile');
    backends.push(b);
    const reg = await fetch(`${consul.address}/v1/agent/service/register`, {
      method: 'PUT',
      body: JSON.stringify({ ID: HOSTILE_ID, Name: 'web', Address: '127.0.0.1', Port: b.port }),
    });
    assert.equal(reg.status, 200, await reg.text());
    // The data carries it as is (it is a valid ID); the page must not interpret it.
    await eventually(
      'the hostile instance is live',
      async () => ((await (await fetch(`${origin(proxy)}/ui/data`)).json()) as DashboardData).services.find((s) => s.name === 'web')?.instances.map((i) => i.id) ?? [],
      (ids) => ids.includes(HOSTILE_ID),
      15_000,
    );
    const { page, problems } = await openPage();
    await page.goto(`${origin(proxy)}/ui/`);
    await eventually('the page shows 3 instances', () => countOf(page, 'web'), (t) => /^3 instances, /.test(t ?? ''), 15_000);
    const cells = await page.locator('article[data-service="web"] tbody td.mono').allTextContents();
    assert.ok(cells.includes(HOSTILE_ID), `the ID is shown as text: ${JSON.stringify(cells)}`);
    assert.equal(await page.locator('#services img').count(), 0, 'no element was made from the ID');
    assert.equal(await page.evaluate(() => (window as unknown as Record<string, unknown>).__xss), undefined, 'no script ran');
    assert.deepEqual(problems, []);
    await page.close();
  });

  it('with API_USER/API_PASSWORD set, the page and its data need credentials', async () => {
    const p = await startProxy(consul.address, { API_USER: USER, API_PASSWORD: PASSWORD });
    secured = p;
    // No credentials, then wrong ones (typed into the prompt): the API answers 401 with the Basic
    // challenge, which a browser with a window prompts with; headless Chromium has no one to ask
    // and fails the navigation with ERR_INVALID_AUTH_CREDENTIALS (or, once its credentials were
    // refused, shows the 401 answer). Nothing of the page arrives.
    for (const credentials of [undefined, { username: USER, password: `${PASSWORD}x` }]) {
      const context = await browser.newContext(credentials === undefined ? {} : { httpCredentials: credentials });
      const { page } = await openPage(context);
      const answers: { status: number; challenge: string }[] = [];
      page.on('response', (r) => answers.push({ status: r.status(), challenge: r.headers()['www-authenticate'] ?? '' }));
      for (const file of ['', 'data', 'dashboard.js', 'uplot.min.js']) {
        const url = `${origin(p)}/ui/${file}`;
        answers.length = 0;
        const what = `${url} with ${credentials === undefined ? 'no' : 'wrong'} credentials`;
        const outcome = await page.goto(url).then(
          (r) => `answered ${r?.status()}`,
          (err: Error) => err.message,
        );
        assert.match(outcome, /ERR_INVALID_AUTH_CREDENTIALS|answered 401/, what);
        assert.ok(answers.length > 0, `${what}: no answer`);
        for (const a of answers) {
          assert.equal(a.status, 401, what);
          assert.match(a.challenge, /Basic realm="docker-flow-proxy"/, what);
        }
      }
      assert.equal(await page.locator('article, #services').count(), 0);
      await context.close();
    }
    // The right ones: the page loads, and its script's polls carry them too (same origin).
    const context = await browser.newContext({ httpCredentials: { username: USER, password: PASSWORD } });
    const { page, problems } = await openPage(context);
    const answer = await page.goto(`${origin(p)}/ui/`);
    assert.equal(answer?.status(), 200);
    // The second replica of the same fleet restored `web` from Consul KV.
    await page.locator('article[data-service="web"]').waitFor({ timeout: 15_000 });
    await eventually('both replicas listed, in agreement', async () => (await page.locator('#agreement').textContent()) ?? '', (t) => t === '2 replicas in agreement', 15_000);
    const before = Number(await page.evaluate(() => document.body.dataset.refreshes));
    await eventually('the page keeps refreshing with the credentials', async () => Number(await page.evaluate(() => document.body.dataset.refreshes)), (n) => n > before, 10_000);
    assert.doesNotMatch((await page.locator('#refresh').textContent()) ?? '', /failed/);
    await page.screenshot({ path: path.join(SHOTS, '3-with-credentials.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });
});
