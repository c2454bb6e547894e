import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { SettingsError } from '../errors.js';
import { parseBool } from '../spec/grammar.js';
import { type Level, parseLevel } from '../util/log.js';
import { PROJECT_ROOT } from '../util/project.js';

/** Everything the proxy reads from its environment, validated once at start-up. */
export interface Settings {
  /** API listen address and port (`IP`, `PORT`). */
  readonly apiHost: string;
  readonly apiPort: number;
  /** HAProxy binds of `frontend services` (`DEFAULT_PORTS` + `BIND_PORTS`). */
  readonly bindPorts: readonly number[];
  /** Everything written at run time lives below this directory (`STATE_DIR`). */
  readonly stateDir: string;
  /** Consul HTTP addresses tried in order; empty = start a local single-node Consul. */
  readonly consulAddresses: readonly string[];
  readonly proxyInstanceName: string;
  readonly separator: string;
  readonly timeouts: Readonly<Timeouts>;
  readonly connectionMode: ConnectionMode;
  readonly haproxyBin: string;
  readonly consulBin: string;
  readonly maxconn: number;
  readonly debug: boolean;
  readonly logLevel: Level;
  /** Route only to instances whose Consul checks pass (false: every registered instance). */
  readonly consulPassingOnly: boolean;
  /** Blocking-query wait of the Consul watches, seconds. */
  readonly consulWatchWait: number;
  /** Services followed with one blocking query each; the rest through a change detector. */
  readonly consulMaxWatches: number;
  /** Empty backends kept for services added without a reload (at least; grows with services). */
  readonly spareBackends: number;
  /** Seconds of quiet after runtime-API changes before one reload folds them into the config; 0 = never. */
  readonly consolidateAfter: number;
  /** This replica's name in the fleet's replica list; default `<hostname>:<API port>`. */
  readonly replicaId: string | undefined;
  /** How long `wait=all` (and `distribute=true`) waits for every replica, seconds. */
  readonly replicaWaitTimeout: number;
}

export interface Timeouts {
  connect: number;
  client: number;
  server: number;
  queue: number;
  tunnel: number;
  httpRequest: number;
  httpKeepAlive: number;
}

export const CONNECTION_MODES = ['http-keep-alive', 'http-server-close', 'httpclose'] as const;
export type ConnectionMode = (typeof CONNECTION_MODES)[number];

type Env = Record<string, string | undefined>;

/**
 * A Docker secret `dfp_<lower-case name>` in SECRETS_DIR (default /run/secrets) overrides the env
 * variable of the same name, as in the original.
 */
function lookup(env: Env, name: string): string | undefined {
  const secretsDir = env.SECRETS_DIR ?? '/run/secrets';
  const file = path.join(secretsDir, `dfp_${name.toLowerCase()}`);
  if (existsSync(file)) return readFileSync(file, 'utf8').replace(/[\r\n]+$/, '');
  const value = env[name];
  return value === undefined || value === '' ? undefined : value;
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = lookup(env, name);
  if (raw === undefined) return fallback;
  if (!/^[0-9]+$/.test(raw)) throw new SettingsError(name, `must be an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw new SettingsError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = lookup(env, name);
  if (raw === undefined) return fallback;
  const parsed = parseBool(raw);
  if (parsed !== undefined) return parsed;
  throw new SettingsError(name, `must be true or false, got ${JSON.stringify(raw)}`);
}

function ports(env: Env, name: string, fallback: string): number[] {
  const raw = lookup(env, name) ?? fallback;
  if (raw.trim() === '') return [];
  return raw.split(',').map((item) => {
    const p = item.trim();
    if (/^[0-9]+:ssl$/.test(p)) {
      throw new SettingsError(name, `TLS binds (${p}) are not supported yet; list plain ports only, e.g. 80`);
    }
    if (!/^[0-9]+$/.test(p) || Number(p) < 1 || Number(p) > 65535) {
      throw new SettingsError(name, `each item must be a port between 1 and 65535, got ${JSON.stringify(p)}`);
    }
    return Number(p);
  });
}

export function normaliseConsulAddress(raw: string): string {
  const trimmed = raw.trim().replace(/\/+$/, '');
  return /^https?:\/\//.test(trimmed) ? trimmed : `http://${trimmed}`;
}

export function loadSettings(env: Env = process.env): Settings {
  const consulRaw = lookup(env, 'CONSUL_ADDRESS');
  const consulAddresses = consulRaw
    ? consulRaw
        .split(',')
        .map((a) => a.trim())
        .filter((a) => a !== '')
        .map(normaliseConsulAddress)
    : [];
  for (const a of consulAddresses) {
    try {
      new URL(a);
    } catch {
      throw new SettingsError('CONSUL_ADDRESS', `not a valid address: ${JSON.stringify(a)}`);
    }
  }
  const instance = lookup(env, 'PROXY_INSTANCE_NAME') ?? 'docker-flow';
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(instance)) {
    throw new SettingsError('PROXY_INSTANCE_NAME', 'letters, digits, _ . - only (max 64)');
  }
  const separator = lookup(env, 'SEPARATOR') ?? ',';
  if (separator.length !== 1 || /[\sA-Za-z0-9]/.test(separator)) {
    throw new SettingsError('SEPARATOR', 'must be a single punctuation character');
  }
  const connectionMode = lookup(env, 'CONNECTION_MODE') ?? 'http-keep-alive';
  if (!(CONNECTION_MODES as readonly string[]).includes(connectionMode)) {
    throw new SettingsError('CONNECTION_MODE', `must be one of ${CONNECTION_MODES.join(', ')}`);
  }
  const bindPorts = [...new Set([...ports(env, 'DEFAULT_PORTS', '80'), ...ports(env, 'BIND_PORTS', '')])];
  const apiHost = lookup(env, 'IP') ?? '0.0.0.0';
  const stateDir = path.resolve(lookup(env, 'STATE_DIR') ?? './data');
  // The path is written into haproxy.cfg and names UNIX sockets (max 108 bytes).
  if (!/^[A-Za-z0-9/_.+-]+$/.test(stateDir) || stateDir.length > 80) {
    throw new SettingsError('STATE_DIR', `must be a path of at most 80 characters using letters, digits and / _ . + - (got ${JSON.stringify(stateDir)})`);
  }
  const day = 86_400;
  return {
    apiHost,
    apiPort: int(env, 'PORT', 8080, 0, 65535),
    bindPorts,
    stateDir,
    consulAddresses,
    proxyInstanceName: instance,
    separator,
    timeouts: {
      connect: int(env, 'TIMEOUT_CONNECT', 5, 0, day),
      client: int(env, 'TIMEOUT_CLIENT', 20, 0, day),
      server: int(env, 'TIMEOUT_SERVER', 20, 0, day),
      queue: int(env, 'TIMEOUT_QUEUE', 30, 0, day),
      tunnel: int(env, 'TIMEOUT_TUNNEL', 3600, 0, day),
      httpRequest: int(env, 'TIMEOUT_HTTP_REQUEST', 5, 0, day),
      httpKeepAlive: int(env, 'TIMEOUT_HTTP_KEEP_ALIVE', 15, 0, day),
    },
    connectionMode: connectionMode as ConnectionMode,
    haproxyBin: lookup(env, 'HAPROXY_BIN') ?? 'haproxy',
    consulBin: lookup(env, 'CONSUL_BIN') ?? path.join(PROJECT_ROOT, '.tools/bin/consul'),
    maxconn: int(env, 'MAXCONN', 4000, 1, 1_000_000),
    debug: bool(env, 'DEBUG', false),
    logLevel: parseLevel(lookup(env, 'LOG_LEVEL')),
    consulPassingOnly: bool(env, 'CONSUL_PASSING_ONLY', true),
    consulWatchWait: int(env, 'CONSUL_WATCH_WAIT', 300, 1, 600),
    consulMaxWatches: int(env, 'CONSUL_MAX_WATCHES', 150, 0, 100_000),
    spareBackends: int(env, 'SPARE_BACKENDS', 16, 0, 100_000),
    consolidateAfter: int(env, 'CONSOLIDATE_AFTER', 30, 0, 86_400),
    replicaId: lookup(env, 'REPLICA_ID'),
    replicaWaitTimeout: int(env, 'REPLICA_WAIT_TIMEOUT', 10, 1, 3600),
  };
}
