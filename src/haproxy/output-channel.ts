import { execFileSync } from 'node:child_process';
import { closeSync, constants, lstatSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';

/**
 * HAProxy's stdout and stderr go to a named pipe in STATE_DIR, not to pipes of this process.
 * A pipe dies with the process that reads it: a master that outlives the proxy (SIGKILL, or
 * HAPROXY_ON_STOP=keep) would write into nothing forever after, and the proxy that takes it over
 * would never hear its ALERTs again. The named pipe outlives both: while no proxy reads it HAProxy's
 * writes fail and are dropped (it ignores SIGPIPE), and once the next proxy opens it they arrive.
 *
 * The reader opens it read-write, so it never blocks on open and never sees end-of-file.
 */
export class OutputChannel {
  private reader: net.Socket | undefined;

  constructor(
    readonly path: string,
    private readonly onChunk: (chunk: string) => void,
  ) {}

  get isOpen(): boolean {
    return this.reader !== undefined;
  }

  /** Creates the FIFO if needed and starts reading it; false if this filesystem cannot hold one. */
  open(): boolean {
    if (this.reader) return true;
    try {
      let isFifo = false;
      try {
        isFifo = lstatSync(this.path).isFIFO();
      } catch {
        // not there yet
      }
      if (!isFifo) {
        rmSync(this.path, { force: true });
        execFileSync('mkfifo', ['-m', '600', this.path], { stdio: 'ignore' });
      }
      const fd = openSync(this.path, constants.O_RDWR | constants.O_NONBLOCK);
      const reader = new net.Socket({ fd, readable: true, writable: false });
      reader.setEncoding('utf8');
      reader.on('data', (chunk: string) => this.onChunk(chunk));
      reader.on('error', () => undefined);
      reader.unref();
      this.reader = reader;
      return true;
    } catch {
      return false;
    }
  }

  /**
   * A descriptor for a child's stdout/stderr; the caller closes it once the child has it. Blocking,
   * as a pipe would be (it cannot block on open: this process holds the reading end).
   */
  writer(): number {
    return openSync(this.path, constants.O_WRONLY);
  }

  close(): void {
    this.reader?.destroy();
    this.reader = undefined;
  }
}

/** Splits a stream of chunks into lines. */
export function lineSplitter(onLine: (line: string) => void): (chunk: string) => void {
  let partial = '';
  return (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  };
}

export function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}
