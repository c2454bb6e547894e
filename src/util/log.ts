import { Writable } from 'node:stream';
import { pino, type Logger as Pino, stdTimeFunctions } from 'pino';
import pretty from 'pino-pretty';

/**
 * The proxy's logger: pino, one line per event on one stream (stderr). JSON by default (one object
 * per line: `level`, `time`, `scope`, `msg`, then the event's own fields); human-readable through
 * pino-pretty when stderr is a terminal or LOG_FORMAT=pretty. Secrets are kept out twice: pino's
 * `redact` censors fields with likely names, and every message and string field is scrubbed of
 * private keys, URL credentials, secret-looking query parameters and the secret values the
 * settings hold (registered with `secrets`).
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
export const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];
export type LogFormat = 'json' | 'pretty';
export const LOG_FORMATS: readonly LogFormat[] = ['json', 'pretty'];

/** Structured fields of one event: numbers, strings, small objects (never a secret; see redact). */
export type Fields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  child(scope: string): Logger;
}

export interface LogOptions {
  /** Default: json (pretty is chosen by the caller, e.g. main.ts when stderr is a TTY). */
  readonly format?: LogFormat;
  /** Values that must never appear in a line (passwords from the settings); shorter than 4 characters are ignored. */
  readonly secrets?: Iterable<string>;
}

/** Field names whose values are censored wherever they appear (top level and one level down). */
const SECRET_KEYS = ['password', 'pass', 'passwd', 'secret', 'token', 'key', 'privateKey', 'pem', 'cert', 'serviceCert', 'users', 'usersPass', 'auth', 'authorization', 'cookie'];
export const REDACT_PATHS: readonly string[] = [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`)];
const CENSOR = '[REDACTED]';

const PRIVATE_KEY = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)/g;
const URL_CREDENTIALS = /(\/\/[^/\s:@]+):[^@\s/]*@/g;
/** Request parameters and settings that carry credentials, as `name=value` in a URL or a message. */
const SECRET_PARAMS = /\b(users|usersPass|pass|password|passwd|serviceCert|token|secret|STATS_PASS|USERS)=([^&\s"]+)/gi;

/** Removes what must never be logged from one string. */
export function scrub(text: string, secrets: ReadonlySet<string> = new Set()): string {
  let out = text;
  if (out.includes('PRIVATE KEY')) out = out.replace(PRIVATE_KEY, '[REDACTED PRIVATE KEY]');
  if (out.includes('@')) out = out.replace(URL_CREDENTIALS, `$1:${CENSOR}@`);
  if (out.includes('=')) out = out.replace(SECRET_PARAMS, `$1=${CENSOR}`);
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(CENSOR);
  return out;
}

function scrubFields(fields: Fields, secrets: ReadonlySet<string>): Fields {
  const out: Fields = {};
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'string' ? scrub(v, secrets) : v;
  return out;
}

/**
 * `write` sends each line somewhere else than stderr (tests capture them); `format` json or pretty.
 * The scope (`dfp`, `dfp:apply`, …) names the part of the proxy a line comes from.
 */
export function createLogger(level: Level = 'info', scope = 'dfp', write?: (line: string) => void, options: LogOptions = {}): Logger {
  const format = options.format ?? 'json';
  const secrets = new Set([...(options.secrets ?? [])].filter((s) => s.length >= 4));
  const opts = {
    level,
    base: null,
    timestamp: stdTimeFunctions.isoTime,
    redact: { paths: [...REDACT_PATHS], censor: CENSOR },
    // Level names, not numbers, in JSON (what log shippers and jq users expect); pino-pretty reads numbers.
    ...(format === 'json' ? { formatters: { level: (label: string) => ({ level: label }) } } : {}),
  };
  const destination =
    format === 'pretty'
      ? // A synchronous stream, not pino's worker-thread transport: no thread, no line lost at exit.
        pretty({
          sync: true,
          colorize: write === undefined && process.stderr.isTTY === true,
          translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
          ignore: 'scope',
          messageFormat: '[{scope}] {msg}',
          singleLine: true,
          destination:
            write === undefined
              ? 2
              : new Writable({
                  write(chunk: Buffer | string, _encoding, done) {
                    write(chunk.toString());
                    done();
                  },
                }),
        })
      : write === undefined
        ? // Synchronous: a line logged just before process.exit is not lost.
          pino.destination({ fd: 2, sync: true })
        : { write: (s: string) => write(s) };
  return wrap(pino(opts, destination), scope, secrets);
}

function wrap(root: Pino, scope: string, secrets: ReadonlySet<string>): Logger {
  const p = root.child({ scope });
  const emit = (lvl: Level, msg: string, fields: Fields | undefined) => {
    // Scrubbing costs a few string scans: only for lines that will be written.
    if (!p.isLevelEnabled(lvl)) return;
    const text = scrub(msg, secrets);
    if (fields === undefined) p[lvl](text);
    else p[lvl](scrubFields(fields, secrets), text);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    // From the root each time: pino repeats a key bound twice, and `scope` must appear once.
    child: (s) => wrap(root, `${scope}:${s}`, secrets),
  };
}

/** LOG_LEVEL as the proxy always read it: anything unknown is info (settings.ts refuses it at start-up). */
export function parseLevel(raw: string | undefined): Level {
  return raw === 'debug' || raw === 'warn' || raw === 'error' ? raw : 'info';
}

/** LOG_FORMAT: json, pretty, or unset (pretty when the stream is a terminal). */
export function chooseFormat(raw: string | undefined, isTty: boolean): LogFormat {
  return raw === 'pretty' || raw === 'json' ? raw : isTty ? 'pretty' : 'json';
}

/** A logger that drops everything (unit tests, and parts that must stay quiet). */
export const SILENT: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => SILENT };
