import { fileURLToPath } from 'node:url';

/** The project's root directory (this file is at dist/src/util/project.js once built). */
export const PROJECT_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * Node's flags for the proxy process, wherever it is started (`npm start`, the image's CMD, the
 * benchmarks): a 4 MB young generation instead of V8's default 16 MB semi-spaces. The control
 * plane's live heap is small (~37 MB at 2,000 services) but bursts of applies grew the default
 * young generation and its pages were never returned: 170 MB RSS after routing 1,000 services
 * through the API, 117 MB with this flag, in the same time (docs/benchmarks.md, notes).
 */
export const PROXY_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** The argv after the node binary that starts the proxy as users run it. */
export function proxyArgs(): string[] {
  return [...PROXY_NODE_FLAGS, fileURLToPath(new URL('../main.js', import.meta.url))];
}
