import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Instance } from '../discovery/types.js';
import { type Logger, SILENT } from '../util/log.js';
import { CatalogModel, type CheckEntry, entry, type ModelChange, type Recovery } from './catalog.js';
import type { ConsulClient, ConsulResponse } from './client.js';
import { type ConsulInstanceSource, toInstances } from './instances.js';
import { NodeAnswerParser, type ParsedNodeAnswer } from './node-answer.js';

export interface WatcherOptions {
  /** Blocking query wait, seconds (Consul caps it at 600; keep it <= 300). */
  readonly waitSeconds: number;
  /**
   * Blocking queries this watcher may hold at once: its share of the client's watch connections.
   * Default: `consul.budget.watchConnections` minus OTHER_BLOCKING_QUERIES.
   */
  readonly blockingQueries?: number;
  /** CONSUL_MAX_WATCHES, deprecated: the number of queries no longer depends on the services. Ignored. */
  readonly maxWatches?: number;
}

/** What `status` shows under `Watches`. */
export interface WatcherStats {
  /** Consul services followed. */
  readonly services: number;
  /** Catalog nodes known. */
  readonly nodes: number;
  /** Nodes followed with a blocking query each. */
  readonly nodeWatches: number;
  /** Nodes past the budget, re-read whenever the catalog changes. */
  readonly polledNodes: number;
  /** Blocking queries held now (node list, checks, node watches, change detector). */
  readonly blockingQueries: number;
}

/**
 * Blocking queries the rest of the proxy holds: the KV watch of the change log (fleet.ts), which
 * wakes the specs' and the certificates' followers alike.
 */
export const OTHER_BLOCKING_QUERIES = 1;

/** Every check that is not passing: `?passing` semantics with a small answer while all is well. */
const HEALTH_PATH = `/v1/health/state/any?filter=${encodeURIComponent('Status != "passing"')}`;
const NODES_PATH = '/v1/catalog/nodes';
/**
 * Answers on every registration and deregistration anywhere in the catalog (its index is the
 * services table's), not on KV, check or node-only writes: the change detector for nodes past the
 * budget. Its answer lists every service name with its tags (tens of kilobytes at thousands of
 * services; not parsed), and only while nodes are past the budget. (A query for a
 * service no one registers looked cheaper, but Consul 1.8 answers it with the index of the last
 * time a service went extinct: once one has, registrations no longer wake it. Measured on 1.8.7.)
 */
const CATALOG_CHANGES_PATH = '/v1/catalog/services';
/** How long a service added is left to its kick before the model reports it. */
const FRESH_MS = 1000;
/** A polled node smaller than this never takes a watched node's query (rebalance). */
const REBALANCE_MIN_INSTANCES = 32;
/** Per-node recoveries past which one read of the whole node is cheaper than one read per service. */
const CONFIRM_PER_NODE = 4;

/** `seenAt`: `performance.now()` when the Consul answer that showed the change arrived. */
type OnChange = (service: string, instances: Instance[], seenAt: number) => void;

interface Followed {
  /** The list last reported (keyOf), undefined until the first report. */
  reported: string | undefined;
  kicking: boolean;
  kickAgain: boolean;
  /** Reports so far (mark/adopt tell with it whether one came while a caller read the service). */
  reports: number;
}

interface NodeState {
  /** X-Consul-Index of the last answer applied (Consul's catalog-wide index, not the node's own). */
  appliedIndex: number;
  address: string;
  /** Keeps the last answer: an unchanged one is dropped, a changed one parsed where it changed. */
  readonly parser: NodeAnswerParser;
  read: boolean;
}

interface Loop {
  readonly what: string;
  path(query: string): string;
  onAnswer(res: ConsulResponse, reset: boolean): void | Promise<void>;
  readonly startIndex?: number;
  /** Checked after every answer and before every query: true ends the loop. */
  done?(): boolean;
  onExit?(): void;
}


/**
 * Follows the instances of the configured Consul services and reports changes, so scaling,
 * crashes and failing checks reach HAProxy without an API call (the original needed one,
 * vfarcic#23).
 *
 * The number of open queries depends on the catalog's nodes, not on the services: a model of the
 * catalog (catalog.ts) is kept from one blocking query per node (`/v1/catalog/node-services/<node>`),
 * one on the node list (on every registration change instead while nodes are past the budget) and
 * one on the non-passing checks.
 * Each answer is diffed against the model, and only the services whose instances changed are
 * reported. Nodes past the budget are re-read when the catalog changes (O(nodes) requests per
 * change). See architecture.md.
 *
 * Rules from consul.md: compare bodies, not just indexes (spurious wake-ups; the node queries
 * return the catalog-wide index); reset the index when it goes backwards or after any error (agent
 * restarts); back off with jitter; never report a failed read as "no instances". Blocking queries
 * are never aborted except by stop(): Consul 1.8 keeps an abandoned query's connection slot until
 * its wait ends.
 */
export class ConsulWatcher {
  private readonly model = new CatalogModel();
  private readonly followed = new Map<string, Followed>();
  private readonly byLower = new Map<string, Set<string>>();
  /** Node name -> address, from the node list. */
  private readonly known = new Map<string, string>();
  private readonly nodes = new Map<string, NodeState>();
  private readonly watchedNodes = new Set<string>();
  /** Watched nodes whose query ends at its next answer, for a bigger polled node (rebalance). */
  private readonly demoting = new Set<string>();
  private readonly polled = new Set<string>();
  private readonly nodeSlots: number;
  private readonly passingOnly: boolean;
  private readonly ctrl = new AbortController();
  private started = false;
  private stopped = false;
  private loops = 0;
  private listRead = false;
  private healthRead = false;
  private ready = false;
  private health = { index: 0, hash: '' };
  /** Lower-case service names whose instances may have changed since the last flush. */
  private readonly pending = new Set<string>();
  /** When the first answer that made each pending name pending arrived (propagation is timed from it). */
  private readonly pendingSeen = new Map<string, number>();
  /** Fresher checks wanted (bumped by node answers newer than the checks held) and delivered. */
  private checksWanted = 0;
  private checksDelivered = 0;
  private checksInFlight: Promise<void> | undefined;
  private readonly confirms = new Map<string, Recovery>();
  private settling = false;
  private scheduled = false;
  private polling = false;
  private pollAgain = false;
  /** The detector saw a new index space (agent restart, failover): polls replace what is held. */
  private pollReset = false;
  private pollRetry: NodeJS.Timeout | undefined;
  /** Services whose direct read disagreed with the model: read again until they agree. */
  private readonly unsettled = new Map<string, number>();
  private unsettledTimer: NodeJS.Timeout | undefined;
  /** Services added and not reported yet, with when (a kick normally follows at once). */
  private readonly fresh = new Map<string, number>();
  private freshTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly consul: ConsulClient,
    private readonly source: ConsulInstanceSource,
    private readonly onChange: OnChange,
    private readonly options: WatcherOptions,
    private readonly log: Logger,
  ) {
    this.passingOnly = source.passingOnly;
    // Never more than the client's watch connections: a blocking query past them would wait in
    // line for one that answers, up to the full wait.
    const budget = Math.min(options.blockingQueries ?? consul.budget.watchConnections - OTHER_BLOCKING_QUERIES, consul.budget.watchConnections);
    // The catalog query (the node list, or the change detector while nodes are past the budget) and the checks (with passingOnly).
    const fixed = 1 + (this.passingOnly ? 1 : 0);
    this.nodeSlots = Math.max(0, budget - fixed);
    if (budget < fixed) log.warn(`${budget} blocking queries are too few for discovery (needs ${fixed}); raise CONSUL_WATCH_CONNECTIONS`);
  }

  /** Follows exactly these services from now on. */
  sync(services: Iterable<string>): void {
    if (this.stopped) return;
    const wanted = new Set(services);
    for (const name of [...this.followed.keys()]) {
      if (wanted.has(name)) continue;
      this.followed.delete(name);
      const lower = name.toLowerCase();
      const names = this.byLower.get(lower);
      names?.delete(name);
      if (names?.size === 0) this.byLower.delete(lower);
      this.unsettled.delete(name);
      this.fresh.delete(name);
    }
    for (const name of wanted) {
      if (this.followed.has(name)) continue;
      this.followed.set(name, { reported: undefined, kicking: false, kickAgain: false, reports: 0 });
      const lower = name.toLowerCase();
      entry(this.byLower, lower, () => new Set<string>()).add(name);
      this.fresh.set(name, Date.now());
    }
    this.scheduleFresh();
    if (this.followed.size > 0) this.start();
  }

  /**
   * Re-reads a service now (`/v1/health/service/<name>`, a consistent read on the ordinary
   * budget) and reports it even if unchanged. A read of its own beside the blocking queries, not
   * an abort of one (Consul 1.8 keeps an abandoned blocking query's connection slot until its wait
   * ends).
   */
  kick(service: string): void {
    const f = this.followed.get(service);
    if (!f || this.stopped) return;
    if (f.kicking) {
      f.kickAgain = true;
      return;
    }
    f.kicking = true;
    void (async () => {
      do {
        f.kickAgain = false;
        await this.readDirect(service, f, true);
      } while (f.kickAgain && !this.stopped && this.followed.get(service) === f);
      f.kicking = false;
    })();
  }

  /**
   * Taken before a caller reads a service directly to apply it (a reconfigure, a spec from the
   * fleet); adopt() gets it back with what the read found.
   */
  mark(service: string): number {
    return this.followed.get(service)?.reports ?? 0;
  }

  /**
   * A caller read `service` directly and applied what it found, replacing whatever the watch had
   * reported. That read is newer than any report before `mark`; if the watch reported since, the
   * read may have overwritten something newer, so read again (kick). Otherwise the read becomes
   * what the watch compares its next answers with, at no request; and if the catalog model holds
   * something else, the direct reads settle it as they do for a kick.
   */
  adopt(service: string, instances: readonly Instance[], mark: number): void {
    const f = this.followed.get(service);
    if (!f || this.stopped) return;
    if (!this.ready || f.reports !== mark || f.kicking) {
      this.kick(service);
      return;
    }
    f.reported = keyOf(instances);
    this.fresh.delete(service);
    if (this.modelKey(service) !== f.reported && !this.unsettled.has(service)) {
      this.unsettled.set(service, 0);
      this.checkUnsettled();
    }
  }

  /**
   * Starts the catalog model before any service is followed and resolves once it has read every
   * node and the checks (false if that takes longer than `timeoutMs`). A cold start then takes
   * every restored service's instances from memory: a handful of node reads instead of one
   * request per service on the ordinary budget.
   */
  /** Starts reading the catalog (no wait): modelReady later finds it further along. */
  startModel(): void {
    this.start();
  }

  async modelReady(timeoutMs: number): Promise<boolean> {
    this.start();
    if (!this.ready && !this.stopped) {
      const timer = new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref());
      await Promise.race([this.readyOnce, timer]);
    }
    return this.ready;
  }

  /** Resolves when the model is first ready (checkReady). */
  private markReady: () => void = () => undefined;
  private readonly readyOnce = new Promise<void>((resolve) => {
    this.markReady = resolve;
  });

  /** A service's routable instances as the model holds them; undefined until the model is ready. */
  modelInstances(service: string): Instance[] | undefined {
    return this.ready ? toInstances(service, this.model.entries(service, this.passingOnly), this.log) : undefined;
  }

  stats(): WatcherStats {
    return {
      services: this.followed.size,
      nodes: this.known.size,
      nodeWatches: this.watchedNodes.size,
      polledNodes: this.polled.size,
      blockingQueries: this.loops,
    };
  }

  /** The nodes followed by a query of their own (the others are polled). */
  nodeQueries(): string[] {
    return [...this.watchedNodes].filter((n) => !this.demoting.has(n)).sort();
  }

  stop(): void {
    this.stopped = true;
    this.ctrl.abort();
    for (const t of [this.pollRetry, this.unsettledTimer, this.freshTimer]) if (t) clearTimeout(t);
  }

  // ---- the queries -------------------------------------------------------------------------

  private start(): void {
    if (this.started) return;
    this.started = true;
    let last = 0;
    let askedServices = false;
    this.run({
      what: 'catalog',
      // While every node has a query of its own, the node list is all this follows; with nodes past
      // the budget, every registration change (CATALOG_CHANGES_PATH), which then re-reads them.
      // Indexes are raft indexes either way, so one carries over when the path switches.
      path: (q) => {
        askedServices = this.polled.size > 0;
        const p = askedServices ? CATALOG_CHANGES_PATH : NODES_PATH;
        return q ? `${p}?${q}` : p;
      },
      onAnswer: async (res, reset) => {
        const next = res.index ?? 0;
        if (!askedServices) {
          await this.onNodeList(res);
        } else if (reset || next !== last) {
          // Both read after the change that woke us, so at least as new; side by side, as a node
          // the list adds is read by onNodeList itself.
          const listing = this.consul.request(NODES_PATH, { signal: this.ctrl.signal });
          this.pollAll(reset);
          const list = await listing;
          if (list.status !== 200) throw new Error(`Consul answered ${list.status} reading the node list: ${list.body.trim().slice(0, 200)}`);
          await this.onNodeList(list);
        }
        last = next;
      },
    });
    if (this.passingOnly) {
      this.run({ what: 'checks', path: (q) => `${HEALTH_PATH}${q ? `&${q}` : ''}`, onAnswer: (res, reset) => this.applyHealth(res, reset) });
    } else {
      this.healthRead = true;
    }
  }

  /** One blocking-query loop: index handling, backoff with jitter, `wait` bounds. */
  private run(loop: Loop): void {
    this.loops++;
    void this.follow(loop).finally(() => {
      this.loops--;
      loop.onExit?.();
    });
  }

  private async follow(loop: Loop): Promise<void> {
    let index = loop.startIndex ?? 0;
    let address = '';
    // The first answer, and the first after an error, may come from an agent that restarted and
    // lost its state: their indexes do not compare with those held from before.
    let fresh = true;
    let backoff = 100;
    const wait = this.options.waitSeconds;
    const signal = this.ctrl.signal;
    while (!signal.aborted && !loop.done?.()) {
      let res: ConsulResponse;
      try {
        res = await this.consul.request(loop.path(index > 0 ? `index=${index}&wait=${wait}s` : ''), {
          signal,
          // Consul adds up to wait/16 of jitter to a blocking query.
          timeoutMs: index > 0 ? wait * 1062.5 + 5000 : 10_000,
        });
        // 403 (ACL), 429 (per-client connection limit): no index, so no blocking; back off instead.
        if (res.status !== 200) throw new Error(`Consul answered ${res.status}: ${res.body.trim().slice(0, 200)}`);
        const next = res.index ?? 0;
        // Failover to another agent, or an agent that lost its state (restart): the index space
        // is a new one; the answer is current, older indexes held elsewhere no longer compare.
        const reset = fresh || res.address !== address || next < index;
        fresh = false;
        address = res.address;
        index = next < index ? 0 : next;
        await loop.onAnswer(res, reset);
        backoff = 100;
      } catch (err) {
        if (signal.aborted) return;
        index = 0;
        fresh = true;
        this.log.warn(`watch ${loop.what}: ${(err as Error).message}; retrying in about ${backoff} ms`);
        await sleep(backoff * (0.5 + Math.random()), undefined, { signal }).catch(() => undefined);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  private async onNodeList(res: ConsulResponse): Promise<void> {
    const list = parseArray<{ Node?: string; Address?: string }>(res.body, 'node list');
    const now = new Map<string, string>();
    for (const n of list) if (typeof n.Node === 'string') now.set(n.Node, n.Address ?? '');
    for (const node of [...this.known.keys()]) if (!now.has(node)) this.dropNode(node, res.arrivedAt);
    const added: string[] = [];
    const moved: string[] = [];
    for (const [node, address] of now) {
      const before = this.known.get(node);
      if (before === undefined) added.push(node);
      else if (before !== address) moved.push(node);
      this.known.set(node, address);
    }
    // A polled node's address change (a watched node's own query sees it).
    const movedPolled = moved.filter((n) => this.polled.has(n));
    if (movedPolled.length > 0) void this.pollNodes(movedPolled);
    if (added.length > 0) {
      // Read new nodes once, then give the biggest ones a query of their own.
      await this.pollNodes(added);
      added.sort((a, b) => this.model.instanceCount(b) - this.model.instanceCount(a) || (a < b ? -1 : 1));
      for (const node of added) this.place(node);
      this.rebalance();
    }
    this.listRead = true;
    this.checkReady();
  }

  private place(node: string): void {
    if (!this.known.has(node) || this.watchedNodes.has(node) || this.polled.has(node)) return;
    if (this.watchedNodes.size < this.nodeSlots) {
      this.watchNode(node);
      return;
    }
    this.polled.add(node);
    if (this.polled.size === 1) this.log.info(`more Consul nodes than node watches (${this.nodeSlots}): the others are re-read when the catalog changes (raise CONSUL_WATCH_CONNECTIONS to follow more one by one)`);
  }

  private watchNode(node: string): void {
    this.watchedNodes.add(node);
    this.run({
      what: `node ${node}`,
      path: (q) => `/v1/catalog/node-services/${encodeURIComponent(node)}${q ? `?${q}` : ''}`,
      startIndex: this.nodes.get(node)?.appliedIndex ?? 0,
      onAnswer: (res, reset) => this.applyNode(node, res, reset),
      // A node leaving the catalog wakes its own query: the loop ends there, no abort needed.
      done: () => !this.known.has(node) || this.demoting.has(node),
      onExit: () => {
        this.watchedNodes.delete(node);
        if (this.demoting.delete(node) && this.known.has(node) && !this.stopped) {
          this.polled.add(node);
          // Read once now: a change after its last answer may have woken the catalog query before
          // the node was polled, and would wait for the next change anywhere.
          void this.pollNodes([node]);
        }
        this.promote();
      },
    });
  }

  /** A node watch ended: the biggest polled node takes its place. */
  private promote(): void {
    while (!this.stopped && this.watchedNodes.size < this.nodeSlots && this.polled.size > 0) {
      const next = [...this.polled].sort((a, b) => this.model.instanceCount(b) - this.model.instanceCount(a))[0] as string;
      this.polled.delete(next);
      this.watchNode(next);
    }
  }

  private dropNode(node: string, seenAt: number): void {
    this.known.delete(node);
    this.nodes.delete(node);
    this.polled.delete(node);
    this.changed(this.model.removeNode(node), seenAt);
  }

  /** Re-reads every polled node; a burst of changes costs one round in flight plus one more. */
  private pollAll(reset = false): void {
    this.pollReset ||= reset;
    if (this.polling) {
      this.pollAgain = true;
      return;
    }
    this.polling = true;
    void (async () => {
      do {
        this.pollAgain = false;
        const reset = this.pollReset;
        this.pollReset = false;
        await this.pollNodes([...this.polled], reset);
        this.rebalance();
      } while (this.pollAgain && !this.stopped);
      this.polling = false;
    })();
  }

  /**
   * Every change anywhere re-reads every polled node, so the queries of their own belong to the
   * biggest nodes; but nodes are placed as they appear (a node that is empty at start-up takes a
   * query, then fills up or stays small while later ones hold thousands). When a polled node has
   * grown past twice the smallest watched one, that one hands its query over: a query is never
   * aborted (Consul would hold its slot until the wait ends), so it ends at its next answer.
   */
  private rebalance(): void {
    if (this.polled.size === 0 || this.demoting.size > 0) return;
    const size = (n: string) => this.model.instanceCount(n);
    let biggest = 0;
    for (const n of this.polled) biggest = Math.max(biggest, size(n));
    let smallest: string | undefined;
    for (const n of this.watchedNodes) if (this.known.has(n) && (smallest === undefined || size(n) < size(smallest))) smallest = n;
    if (smallest === undefined || biggest <= Math.max(2 * size(smallest), REBALANCE_MIN_INSTANCES)) return;
    this.demoting.add(smallest);
    this.log.debug(`node ${smallest} (${size(smallest)} instances) hands its query to a polled node with ${biggest} at its next answer`);
  }

  /** One ordinary read per node (bounded concurrency); a failure is retried by a later poll. */
  private async pollNodes(nodes: string[], reset = false): Promise<void> {
    const queue = [...nodes];
    let failed = false;
    const worker = async () => {
      for (let node = queue.shift(); node !== undefined; node = queue.shift()) {
        if (!this.known.has(node) || this.stopped) continue;
        try {
          const res = await this.consul.request(`/v1/catalog/node-services/${encodeURIComponent(node)}`, { signal: this.ctrl.signal });
          if (res.status !== 200) throw new Error(`Consul answered ${res.status}: ${res.body.trim().slice(0, 200)}`);
          this.applyNode(node, res, reset);
        } catch (err) {
          if (this.stopped) return;
          failed = true;
          this.log.warn(`reading node ${node}: ${(err as Error).message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.consul.budget.requestConnections) }, worker));
    if (failed && !this.pollRetry && !this.stopped) {
      this.pollRetry = setTimeout(() => {
        this.pollRetry = undefined;
        void this.pollNodes(nodes.filter((n) => this.known.has(n) && !this.nodes.get(n)?.read)).then(() => this.polled.size > 0 && this.pollAll());
      }, 1000 + Math.random() * 1000);
      this.pollRetry.unref();
    }
  }

  // ---- the model ---------------------------------------------------------------------------

  private applyNode(node: string, res: ConsulResponse, reset: boolean): void {
    if (!this.known.has(node)) return; // left the node list meanwhile
    const st = entry(this.nodes, node, (): NodeState => ({ appliedIndex: 0, address: res.address, parser: new NodeAnswerParser(), read: false }));
    const index = res.index ?? 0;
    // An answer older than one applied already (a poll and a watch crossing): skip it.
    if (!reset && st.address === res.address && index < st.appliedIndex) return;
    st.appliedIndex = index;
    st.address = res.address;
    const first = !st.read;
    if (!st.parser.same(res.body)) {
      // New or changed instances are routable only if their checks pass: if the checks were read
      // before this answer, read them again (a registration and its check land in one write).
      // Asked before parsing, so the round trip overlaps it.
      if (this.passingOnly && this.health.index < index) this.wantFreshChecks();
      let parsed: ParsedNodeAnswer;
      try {
        parsed = st.parser.parse(res.body);
      } catch (err) {
        throw new Error(`unreadable answer for node ${node}: ${(err as Error).message}`);
      }
      // A node that left: dropped now, not at the next read of the node list (which, while the
      // catalog query follows registrations, a node leaving with no service would not bring).
      if (parsed.node) this.changed(this.model.setNode(node, parsed.node.Address ?? '', parsed.services), res.arrivedAt);
      else this.dropNode(node, res.arrivedAt);
    }
    st.read = true;
    if (first) this.checkReady();
  }

  private applyHealth(res: ConsulResponse, reset: boolean): void {
    const index = res.index ?? 0;
    if (!reset && index < this.health.index) return;
    this.health.index = index;
    const hash = createHash('sha1').update(res.body).digest('base64');
    if (hash !== this.health.hash) {
      const checks = parseArray<CheckEntry>(res.body, 'checks');
      this.health.hash = hash;
      const { affected, recovered } = this.model.setChecks(checks);
      // A check that left the non-passing set may have left with its instance (a deregistration
      // deletes both at once): confirm the instance unless its node was read after this answer.
      for (const r of recovered) {
        if ((this.nodes.get(r.node)?.appliedIndex ?? 0) >= index) continue;
        this.confirms.set(`${r.node}\u0000${r.serviceId}`, r);
      }
      this.changed({ affected, gained: false }, res.arrivedAt);
    }
    if (!this.healthRead) {
      this.healthRead = true;
      this.checkReady();
    }
  }

  private changed(change: ModelChange, seenAt: number): void {
    for (const lower of change.affected) {
      this.pending.add(lower);
      if (!this.pendingSeen.has(lower)) this.pendingSeen.set(lower, seenAt);
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.settling || this.scheduled || this.stopped) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      void this.settle();
    });
  }

  /**
   * Reads what the answers just applied need to be trusted (fresh checks for new instances, the
   * instances behind recovered checks), then reports every service whose list changed.
   */
  private async settle(): Promise<void> {
    if (this.settling) return;
    this.settling = true;
    try {
      for (let round = 0; round < 3 && (this.checksDelivered < this.checksWanted || this.confirms.size > 0) && !this.stopped; round++) {
        const confirms = [...this.confirms.values()];
        this.confirms.clear();
        await Promise.all([this.freshChecks(), ...this.confirmAll(confirms)]);
      }
      this.confirms.clear();
      this.flush();
    } finally {
      this.settling = false;
    }
    if (this.pending.size > 0 && this.ready) this.schedule();
  }

  private wantFreshChecks(): void {
    this.checksWanted++;
    this.pumpChecks();
  }

  /** One read of the checks in flight at a time; one more if wanted meanwhile. */
  private pumpChecks(): void {
    if (this.checksInFlight || this.checksDelivered >= this.checksWanted || this.stopped) return;
    const level = this.checksWanted;
    this.checksInFlight = this.refreshHealth().finally(() => {
      this.checksDelivered = Math.max(this.checksDelivered, level);
      this.checksInFlight = undefined;
      this.pumpChecks();
    });
  }

  private async freshChecks(): Promise<void> {
    while (this.checksDelivered < this.checksWanted && !this.stopped) {
      this.pumpChecks();
      await this.checksInFlight;
    }
  }

  private async refreshHealth(): Promise<void> {
    try {
      const res = await this.consul.request(HEALTH_PATH, { signal: this.ctrl.signal });
      if (res.status !== 200) throw new Error(`Consul answered ${res.status}`);
      this.applyHealth(res, false);
    } catch (err) {
      // The checks' own watch follows; meanwhile the last known checks apply.
      if (!this.stopped) this.log.debug(`re-reading the checks: ${(err as Error).message}`);
    }
  }

  private confirmAll(recoveries: Recovery[]): Promise<void>[] {
    const byNode = new Map<string, Recovery[]>();
    for (const r of recoveries) byNode.set(r.node, [...(byNode.get(r.node) ?? []), r]);
    const reads: Promise<void>[] = [];
    for (const [node, list] of byNode) {
      if (list.some((r) => r.serviceId === '') || list.length > CONFIRM_PER_NODE) reads.push(this.confirmNode(node));
      else for (const r of list) reads.push(this.confirmInstance(r));
    }
    return reads;
  }

  /** Whether a node is still there (a node check leaves with its node). */
  private async confirmNode(node: string): Promise<void> {
    if (!this.known.has(node)) return;
    try {
      const res = await this.consul.request(`/v1/catalog/node-services/${encodeURIComponent(node)}`, { signal: this.ctrl.signal });
      if (res.status !== 200) throw new Error(`Consul answered ${res.status}`);
      this.applyNode(node, res, false);
    } catch (err) {
      if (!this.stopped) this.log.debug(`re-reading node ${node}: ${(err as Error).message}`);
    }
  }

  /** Whether an instance whose check recovered is still registered. */
  private async confirmInstance(r: Recovery): Promise<void> {
    if (r.service === '') return;
    try {
      const res = await this.consul.request(`/v1/catalog/service/${encodeURIComponent(r.service)}`, { signal: this.ctrl.signal });
      if (res.status !== 200) throw new Error(`Consul answered ${res.status}`);
      if ((this.nodes.get(r.node)?.appliedIndex ?? 0) > (res.index ?? 0)) return; // the node's own answer is newer
      const entries = parseArray<{ Node?: string; ServiceID?: string }>(res.body, `service ${r.service}`);
      if (!entries.some((e) => e.Node === r.node && e.ServiceID === r.serviceId)) this.changed(this.model.removeInstance(r.node, r.serviceId), res.arrivedAt);
    } catch (err) {
      if (!this.stopped) this.log.debug(`re-reading ${r.service}: ${(err as Error).message}`);
    }
  }

  private checkReady(): void {
    if (this.ready || !this.listRead || !this.healthRead) return;
    for (const node of this.known.keys()) if (!this.nodes.get(node)?.read) return;
    this.ready = true;
    this.markReady();
    this.log.debug(`catalog model ready: ${this.known.size} nodes, ${this.watchedNodes.size} followed one by one`);
    for (const [name, f] of this.followed) if (f.reported === undefined) this.pending.add(name.toLowerCase());
    this.schedule();
  }

  /** Reports the services whose instances differ from what was last reported. */
  private flush(): void {
    if (!this.ready || this.stopped) return;
    const lowers = [...this.pending];
    const seen = new Map(this.pendingSeen);
    this.pending.clear();
    this.pendingSeen.clear();
    const now = performance.now();
    for (const lower of lowers) {
      const names = this.byLower.get(lower);
      if (!names) continue;
      const entries = this.model.entries(lower, this.passingOnly);
      for (const name of names) {
        // A direct read disagreed with the model a moment ago: the direct reads settle it.
        if (this.unsettled.has(name)) continue;
        this.report(name, toInstances(name, entries, this.log), false, seen.get(lower) ?? now);
      }
    }
  }

  private report(name: string, instances: Instance[], force: boolean, seenAt: number): void {
    const f = this.followed.get(name);
    if (!f) return;
    const key = keyOf(instances);
    if (key === f.reported && !force) return;
    f.reported = key;
    f.reports++;
    this.fresh.delete(name);
    this.onChange(name, instances, seenAt);
  }

  private modelKey(name: string): string {
    return keyOf(toInstances(name, this.model.entries(name, this.passingOnly), SILENT));
  }

  // ---- direct reads ------------------------------------------------------------------------

  private async readDirect(name: string, f: Followed, force: boolean): Promise<void> {
    let instances: Instance[];
    let seenAt: number;
    try {
      const res = await this.consul.request(this.source.path(name), { signal: this.ctrl.signal });
      instances = this.source.parse(name, res.status, res.body);
      seenAt = res.arrivedAt;
    } catch (err) {
      if (!this.stopped) this.log.warn(`re-reading ${name}: ${(err as Error).message}; the watch will report its next change`);
      return;
    }
    if (this.followed.get(name) !== f || this.stopped) return;
    this.report(name, instances, force, seenAt);
    // The model is a few milliseconds behind or ahead of a direct read at times; if they still
    // disagree shortly, read again, so a stale read never sticks.
    if (this.ready && this.modelKey(name) !== f.reported && !this.unsettled.has(name)) {
      this.unsettled.set(name, 0);
      this.checkUnsettled();
    }
  }

  private checkUnsettled(): void {
    if (this.unsettledTimer || this.unsettled.size === 0 || this.stopped) return;
    this.unsettledTimer = setTimeout(() => {
      this.unsettledTimer = undefined;
      for (const [name, tries] of [...this.unsettled]) {
        const f = this.followed.get(name);
        if (!f || this.modelKey(name) === f.reported) {
          this.unsettled.delete(name);
        } else if (tries >= 5) {
          this.unsettled.delete(name);
          this.log.warn(`${name}: Consul's answer for the service and the catalog model still differ after ${tries} reads`);
        } else {
          this.unsettled.set(name, tries + 1);
          void this.readDirect(name, f, false);
        }
      }
      this.checkUnsettled();
    }, 250);
    this.unsettledTimer.unref();
  }

  /**
   * Whoever adds a service has just read it and kicks it; if no one has a second after, the model
   * reports it (the model may be a few milliseconds behind that read, never a second).
   */
  private scheduleFresh(): void {
    if (this.freshTimer || this.fresh.size === 0 || this.stopped) return;
    let oldest = Number.POSITIVE_INFINITY;
    for (const added of this.fresh.values()) oldest = Math.min(oldest, added);
    this.freshTimer = setTimeout(() => this.reportFresh(), Math.max(10, oldest + FRESH_MS - Date.now()));
    this.freshTimer.unref();
  }

  private reportFresh(): void {
    this.freshTimer = undefined;
    const due = Date.now() - FRESH_MS;
    for (const [name, added] of this.fresh) {
      if (added > due) continue;
      this.fresh.delete(name);
      // Before the model is ready, checkReady reports every service not reported yet.
      if (this.ready && this.followed.get(name)?.reported === undefined) this.pending.add(name.toLowerCase());
    }
    this.schedule();
    this.scheduleFresh();
  }
}

/**
 * What a list of instances is, for "did it change" (order-blind: the same instances in another
 * order are no change): a digest of its JSON, not the JSON, since one is
 * kept per followed service (the JSON took 4.4 MB at 10,000 services x 3 instances, measured in a
 * heap snapshot; the digests take under 1 MB).
 */
function keyOf(instances: readonly Instance[]): string {
  const json = JSON.stringify([...instances].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)));
  return createHash('sha256').update(json).digest('base64');
}

function parseArray<T>(body: string, what: string): T[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch (err) {
    throw new Error(`unreadable answer for the ${what}: ${(err as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw new Error(`unreadable answer for the ${what}: not an array`);
  return parsed as T[];
}
