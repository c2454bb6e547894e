import type { Level } from '../util/log.js';

/** One line HAProxy printed, as the proxy logs it. */
export interface HaproxyLine {
  readonly level: Level;
  /** HAProxy's own level (`ALERT`, `WARNING`, `NOTICE`, …), when the line carried one. */
  readonly haproxyLevel: string | undefined;
  /** The process that printed it (the master or a worker), when the line said. */
  readonly pid: number | undefined;
  /** The line without its `[LEVEL] (pid) :` prefix. */
  readonly text: string;
}

const PREFIX = /^\[(ALERT|WARNING|NOTICE|INFO|DEBUG|EMERG|CRIT|ERR)\]\s*\((\d+)\)\s*:\s?(.*)$/;

/**
 * What every reload, start and runtime-API slot change prints, at NOTICE or WARNING: a worker
 * forked, loading succeeded, the old worker left with code 0, one "Proxy X stopped" per section of
 * the old worker (10,000 lines for 10,000 services), a slot filled or freed through the runtime API.
 * Logged at debug: the proxy's own line for the apply says all of it once.
 */
const ROUTINE = [
  /^Proxy \S+ (started|stopped)/,
  /^Stopping (frontend|backend|proxy) /,
  /^New worker \(\d+\) forked/,
  /^Loading success/,
  /^Reloading HAProxy/,
  /^haproxy version is /,
  /^path to executable is /,
  /^Former worker \(\d+\) exited with code 0\b/,
  /^Server \S+ is UP\/READY \(leaving forced maintenance\)/,
  /^Server \S+ is going DOWN for maintenance\b/,
];

/**
 * HAProxy's level, mapped: ALERT (and worse) is an error, WARNING a warning, NOTICE info; routine
 * lines (above), lines without a prefix (the log target on stdout: request logs with DEBUG, and
 * copies of what stderr says with its level) and everything while stopping are debug. A worker
 * that exits with a non-zero code is at least a warning, whatever its prefix.
 */
export function classifyHaproxyLine(line: string, stopping: boolean): HaproxyLine {
  const m = PREFIX.exec(line);
  const haproxyLevel = m?.[1];
  const text = m ? (m[3] ?? '') : line;
  const pid = m ? Number(m[2]) : undefined;
  const level = ((): Level => {
    if (stopping || haproxyLevel === undefined) return 'debug';
    if (ROUTINE.some((r) => r.test(text))) return 'debug';
    if (haproxyLevel === 'ALERT' || haproxyLevel === 'EMERG' || haproxyLevel === 'CRIT' || haproxyLevel === 'ERR') return 'error';
    if (haproxyLevel === 'WARNING' || /exited with code [1-9]|Loading failure/.test(text)) return 'warn';
    if (haproxyLevel === 'NOTICE') return 'info';
    return 'debug';
  })();
  return { level, haproxyLevel, pid, text };
}
