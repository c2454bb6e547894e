import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { DfpError } from '../errors.js';
import { PROJECT_ROOT } from '../util/project.js';

/**
 * The dashboard's files, served under `/ui/` on the API port: the page and its stylesheet (ui/),
 * its script (ui/dashboard.ts, compiled by `tsc -p ui/tsconfig.json` into dist/browser/), and
 * uPlot's two files from node_modules. Nothing is fetched from anywhere else, at build or run time.
 */

const require = createRequire(import.meta.url);

export interface Asset {
  readonly contentType: string;
  readonly body: Buffer;
}

/** Fixed names: a request can only pick one of these, never a path of its own. */
const FILES: Readonly<Record<string, { readonly type: string; readonly file: () => string; readonly missing: string }>> = {
  '': { type: 'text/html; charset=utf-8', file: () => path.join(PROJECT_ROOT, 'ui/index.html'), missing: 'ui/index.html is missing from the checkout' },
  'dashboard.css': { type: 'text/css; charset=utf-8', file: () => path.join(PROJECT_ROOT, 'ui/dashboard.css'), missing: 'ui/dashboard.css is missing from the checkout' },
  'dashboard.js': {
    type: 'text/javascript; charset=utf-8',
    file: () => path.join(PROJECT_ROOT, 'dist/browser/ui/dashboard.js'),
    missing: 'dist/browser/ui/dashboard.js is missing: build the page with `npm run build` (tsc -p ui/tsconfig.json)',
  },
  'uplot.min.js': { type: 'text/javascript; charset=utf-8', file: () => require.resolve('uplot/dist/uPlot.iife.min.js'), missing: 'the uplot package is missing: run npm ci' },
  'uplot.min.css': { type: 'text/css; charset=utf-8', file: () => require.resolve('uplot/dist/uPlot.min.css'), missing: 'the uplot package is missing: run npm ci' },
};

/**
 * The page runs only its own files: no inline script or style, no other origin, no frames. With
 * every value written through textContent this is a second wall, not the first.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Headers of every dashboard answer, data included. */
export const DASHBOARD_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': CONTENT_SECURITY_POLICY,
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
};

/** Read once, then served from memory: five small files that change only with a new build. */
const cache = new Map<string, Asset>();

/** The asset named by the part of the path after `/ui/`, or undefined when there is none of that name. */
export function dashboardAsset(name: string): Asset | undefined {
  const spec = Object.hasOwn(FILES, name) ? FILES[name] : undefined;
  if (spec === undefined) return undefined;
  const cached = cache.get(name);
  if (cached) return cached;
  let body: Buffer;
  try {
    body = readFileSync(spec.file());
  } catch (err) {
    throw new DfpError('DFP_ERR_INTERNAL', `the dashboard cannot be served: ${spec.missing}`, { cause: err });
  }
  const asset = { contentType: spec.type, body };
  cache.set(name, asset);
  return asset;
}
