import { loadSettings } from '../../src/config/settings.js';
import { renderSettings } from '../../src/proxy.js';
import type { RenderSettings } from '../../src/render/haproxy-config.js';

/** The renderer's settings as the proxy derives them from an empty environment, with fixed paths. */
export function defaultRenderSettings(overrides: Partial<RenderSettings> = {}): RenderSettings {
  const settings = loadSettings({ STATE_DIR: '/var/lib/dfp', SECRETS_DIR: '/nonexistent/secrets' });
  return { ...renderSettings(settings, '/var/lib/dfp/haproxy-admin.sock'), mapDir: '/var/lib/dfp', ...overrides };
}
