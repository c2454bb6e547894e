import { fileURLToPath } from 'node:url';

/** The project's root directory (this file is at dist/src/util/project.js once built). */
export const PROJECT_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
