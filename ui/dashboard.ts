/**
 * The dashboard's script: polls `data` (the JSON of /ui/data) every REFRESH_MS and redraws the
 * page from it. Every value that came from the proxy (service names, instance IDs, triggers, paths)
 * is written with textContent or as an attribute value, never parsed as HTML: an instance ID in
 * Consul may hold any printable character.
 */
import type uPlotClass from 'uplot';
import type { DashboardApply, DashboardData, DashboardInstance, DashboardReplica, DashboardService } from '../src/dashboard/model.js';

const REFRESH_MS = 2000;
/** The chart shows this many seconds back from the newest point. */
const WINDOW_S = 300;

type Child = Node | string | null | undefined | false;

/** An element with text children: strings become text nodes, never markup. */
function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`the page has no #${id}`);
  return node as T;
}

function badge(text: string, tone: 'ok' | 'bad' | 'warn' | '' = ''): HTMLElement {
  return el('span', { class: tone ? `badge ${tone}` : 'badge' }, text);
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function ms(value: number): string {
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function clock(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString([], { hour12: false });
}

function healthTone(health: string): 'ok' | 'bad' | 'warn' | '' {
  if (health.startsWith('UP') || health === 'no check') return health === 'UP' || health === 'no check' ? 'ok' : 'warn';
  if (health.startsWith('DOWN') || health === 'NOLB') return 'bad';
  if (health === 'MAINT' || health.startsWith('DRAIN')) return 'warn';
  return '';
}

// --- the header ------------------------------------------------------------------------------

function renderProxy(data: DashboardData): void {
  const p = data.proxy;
  const fact = (name: string, value: Child) => el('div', {}, el('dt', {}, name), el('dd', {}, value));
  const facts: HTMLElement[] = [
    fact('instance', p.instanceName),
    fact('replica', p.replicaId || '–'),
    fact('ready', p.ready ? badge('ready', 'ok') : badge('restoring', 'warn')),
    fact('HAProxy', p.haproxyUp ? badge('up', 'ok') : badge('down', 'bad')),
    fact('generation', String(p.generation)),
    fact('applies', `${p.applyCounts.runtime} runtime · ${p.applyCounts.reload} reload`),
  ];
  if (p.haproxyRestarts > 0) facts.push(fact('restarts', badge(String(p.haproxyRestarts), 'warn')));
  byId('proxy').replaceChildren(...facts);
}

// --- services --------------------------------------------------------------------------------

function routeText(r: DashboardService['routes'][number]): string {
  const where = [...r.domains.map((d) => `host ${d}`), ...r.paths.map((p) => `path ${p}`)];
  const port = r.srcPort !== null ? `:${r.srcPort} ` : '';
  const to = r.dns !== null ? ` → DNS ${r.dns}${r.port !== null ? `:${r.port}` : ''}` : r.port !== null ? ` → port ${r.port}` : '';
  return `${r.reqMode} ${port}${where.length > 0 ? where.join(', ') : '(every request)'}${to}  [${r.backend}]`;
}

function instanceRow(i: DashboardInstance): HTMLTableRowElement {
  return el(
    'tr',
    { 'data-instance': i.id },
    el('td', { class: 'mono' }, i.id),
    el('td', { class: 'mono' }, `${i.address}:${i.port}`),
    el('td', { class: 'mono' }, i.slot ?? '–'),
    el('td', {}, badge(i.health, healthTone(i.health)), i.check ? ` ${i.check}` : ''),
  );
}

function renderService(s: DashboardService): HTMLElement {
  // UP 1/3 (a check failed, not yet down) still takes traffic; DOWN, MAINT and unknown do not.
  const serving = s.instances.filter((i) => i.health.startsWith('UP') || i.health === 'no check').length;
  const instances =
    s.instances.length === 0
      ? el('p', { class: 'empty' }, s.routes.some((r) => r.dns !== null) ? 'instances are resolved by HAProxy from DNS' : 'no instance in Consul: the route answers 503')
      : el(
          'table',
          { class: 'instances' },
          el('thead', {}, el('tr', {}, el('th', {}, 'Instance'), el('th', {}, 'Address'), el('th', {}, 'Slot'), el('th', {}, 'HAProxy health'))),
          el('tbody', {}, ...s.instances.map(instanceRow)),
        );
  const backends = el(
    'table',
    { class: 'backends' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Backend'), el('th', { class: 'num' }, 'Requests'), el('th', { class: 'num' }, '5xx'), el('th', { class: 'num' }, 'Conn. errors'), el('th', { class: 'num' }, 'Open'))),
    el(
      'tbody',
      {},
      ...s.backends.map((b) =>
        el(
          'tr',
          { 'data-backend': b.name },
          el('td', { class: 'mono' }, b.name, ' ', badge(b.status, b.status === 'UP' ? 'ok' : b.status === 'DOWN' ? 'bad' : '')),
          el('td', { class: 'num requests' }, String(b.requests)),
          el('td', { class: 'num' }, b.errors5xx > 0 ? badge(String(b.errors5xx), 'bad') : '0'),
          el('td', { class: 'num' }, b.connectionErrors > 0 ? badge(String(b.connectionErrors), 'bad') : '0'),
          el('td', { class: 'num' }, String(b.current)),
        ),
      ),
    ),
  );
  return el(
    'article',
    { class: 'service', 'data-service': s.name },
    el(
      'h3',
      {},
      el('span', { class: 'name' }, s.name),
      el('span', { class: 'meta instance-count' }, `${plural(s.instances.length, 'instance')}, ${serving} up in HAProxy`),
      el('span', { class: 'meta' }, s.source === 'env' ? 'from the environment' : 'from the API'),
      s.consulService !== s.name ? el('span', { class: 'meta' }, `Consul service ${s.consulService}`) : null,
    ),
    el('ul', { class: 'routes' }, ...s.routes.map((r) => el('li', { class: 'mono' }, routeText(r)))),
    el('div', { class: 'columns' }, instances, backends),
  );
}

function renderServices(data: DashboardData): void {
  byId('service-count').textContent = `(${data.services.length})`;
  const items: HTMLElement[] = data.services.length === 0 ? [el('p', { class: 'empty' }, 'No service is configured yet: call reconfigure.')] : data.services.map(renderService);
  byId('services').replaceChildren(...items);
}

// --- replicas and applies --------------------------------------------------------------------

function replicaRow(r: DashboardReplica): HTMLTableRowElement {
  return el(
    'tr',
    { 'data-replica': r.id },
    el('td', { class: 'mono' }, r.id, r.self ? ' (this one)' : ''),
    el('td', { class: 'num' }, String(r.generation)),
    el('td', {}, r.ready ? badge('ready', 'ok') : badge('restoring', 'warn')),
    el('td', {}, r.agrees ? badge('agrees', 'ok') : badge('differs', 'bad')),
    el('td', { class: 'num' }, String(r.kvIndex)),
    el('td', {}, clock(r.at)),
  );
}

function renderReplicas(data: DashboardData): void {
  const r = data.replicas;
  const agreement = byId('agreement');
  agreement.className = r.inAgreement === null ? 'badge warn' : r.inAgreement ? 'badge ok' : 'badge bad';
  agreement.textContent = r.inAgreement === null ? 'agreement unknown' : r.inAgreement ? `${plural(r.list.length, 'replica')} in agreement` : 'replicas differ';
  byId<HTMLTableElement>('replicas').tBodies[0]?.replaceChildren(...r.list.map(replicaRow));
  const unknown = byId('replicas-unknown');
  unknown.hidden = r.unknown === null;
  unknown.textContent = r.unknown === null ? '' : `The replica list is unknown: ${r.unknown}`;
}

function applyRow(a: DashboardApply): HTMLTableRowElement {
  return el(
    'tr',
    {},
    el('td', {}, clock(a.at)),
    el('td', { class: 'num' }, String(a.generation)),
    el('td', {}, badge(a.kind, a.kind === 'reload' ? 'warn' : a.kind === 'runtime' ? 'ok' : '')),
    el('td', { class: 'mono' }, a.trigger),
    el('td', { class: 'num' }, ms(a.durationMs)),
    el('td', {}, a.propagation.length === 0 ? '–' : a.propagation.map((p) => `${p.source} ${ms(p.ms)}`).join(', ')),
  );
}

function renderApplies(data: DashboardData): void {
  byId<HTMLTableElement>('applies').tBodies[0]?.replaceChildren(...data.applies.slice(-15).reverse().map(applyRow));
}

// --- the chart -------------------------------------------------------------------------------

/** Request rate samples (seconds, req/s) computed between polls, and the last counter seen. */
const rates: [number, number][] = [];
let lastCount: { t: number; requests: number } | undefined;
let chart: uPlotClass | undefined;
/** The span the chart shows, in seconds: from its oldest point (WINDOW_S back at most, 60 s at least) to the last poll. */
let span: [number, number] = [0, 1];

function trackRate(data: DashboardData): void {
  const t = Date.parse(data.at) / 1000;
  if (data.traffic.statsError !== null) {
    lastCount = undefined;
    return;
  }
  // After a reload HAProxy's counters start again from 0: that interval has no rate.
  if (lastCount !== undefined && t > lastCount.t && data.traffic.requests >= lastCount.requests) {
    rates.push([t, (data.traffic.requests - lastCount.requests) / (t - lastCount.t)]);
  }
  lastCount = { t, requests: data.traffic.requests };
  while (rates.length > 0 && (rates[0]?.[0] ?? t) < t - WINDOW_S) rates.shift();
}

/** x: the union of both series' times; each series is null where it has no point. */
function chartData(data: DashboardData): uPlotClass.AlignedData {
  const now = Date.parse(data.at) / 1000;
  const points = new Map<number, [number | null, number | null]>();
  for (const [t, rate] of rates) points.set(t, [rate, null]);
  for (const a of data.applies) {
    if (a.propagation.length === 0) continue;
    const t = Date.parse(a.at) / 1000;
    if (t < now - WINDOW_S) continue;
    const slowest = Math.max(...a.propagation.map((p) => p.ms));
    const at = points.get(t);
    points.set(t, [at?.[0] ?? null, Math.max(at?.[1] ?? 0, slowest)]);
  }
  const xs = [...points.keys()].sort((a, b) => a - b);
  return [xs, xs.map((x) => points.get(x)?.[0] ?? null), xs.map((x) => points.get(x)?.[1] ?? null)];
}

function renderChart(data: DashboardData): void {
  trackRate(data);
  const aligned = chartData(data);
  const latest = Date.parse(data.at) / 1000;
  span = [Math.max(latest - WINDOW_S, Math.min(aligned[0][0] ?? latest, latest - 60)), latest];
  const box = byId('chart');
  if (chart === undefined) {
    chart = new uPlot(
      {
        width: Math.max(320, box.clientWidth),
        height: 220,
        scales: { x: { time: true, range: () => span }, rps: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] }, ms: { auto: true, range: (_u, _min, max) => [0, Math.max(10, max * 1.1)] } },
        axes: [{}, { scale: 'rps', label: 'requests/s' }, { scale: 'ms', label: 'propagation ms', side: 1, grid: { show: false } }],
        series: [
          {},
          { label: 'requests/s', scale: 'rps', stroke: '#2f6fb2', width: 2, spanGaps: true },
          { label: 'propagation (ms)', scale: 'ms', stroke: '#d9480f', paths: () => null, points: { show: true, size: 7, fill: '#d9480f' } },
        ],
        legend: { show: true },
      },
      aligned,
      box,
    );
    window.addEventListener('resize', () => chart?.setSize({ width: Math.max(320, box.clientWidth), height: 220 }));
  } else {
    chart.setData(aligned);
  }
}

// --- polling ---------------------------------------------------------------------------------

let refreshes = 0;

async function refresh(): Promise<void> {
  const status = byId('refresh');
  try {
    const res = await fetch('data', { headers: { Accept: 'application/json' }, cache: 'no-store' });
    if (!res.ok) throw new Error(res.status === 401 ? 'the API wants credentials again (401)' : `HTTP ${res.status}`);
    const data = (await res.json()) as DashboardData;
    renderProxy(data);
    renderServices(data);
    renderReplicas(data);
    renderApplies(data);
    renderChart(data);
    refreshes++;
    status.className = 'refresh';
    status.textContent = `updated ${clock(data.at)}${data.traffic.statsError !== null ? ` (HAProxy stats: ${data.traffic.statsError})` : ''}`;
    document.body.dataset.refreshes = String(refreshes);
  } catch (err) {
    status.className = 'refresh failed';
    status.textContent = `refresh failed: ${(err as Error).message}; showing the last data`;
  }
}

async function loop(): Promise<void> {
  await refresh();
  setTimeout(() => void loop(), REFRESH_MS);
}

void loop();
