// Loads the operator's handlers module (WAHOOK_HANDLERS: a .js, .mjs or .ts file) or the built-in example.
import { pathToFileURL } from 'node:url';
import type { Handler, Handlers } from './types.ts';
import { exampleHandlers } from '../handlers/example.ts';

const KINDS = ['message', 'status', 'error', 'other'] as const;

export async function loadHandlers(modulePath: string | undefined): Promise<Handlers> {
  if (modulePath === undefined) return exampleHandlers;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(modulePath).href)) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`WAHOOK_HANDLERS: could not load ${modulePath}: ${(err as Error).message}`, { cause: err });
  }
  const source = (typeof mod.default === 'object' && mod.default !== null ? mod.default : mod) as Record<string, unknown>;
  const handlers: Handlers = {};
  for (const kind of KINDS) {
    const h = source[kind];
    if (h === undefined) continue;
    if (typeof h !== 'function') throw new Error(`WAHOOK_HANDLERS: export "${kind}" of ${modulePath} must be a function`);
    handlers[kind] = h as Handler;
  }
  const unknown = Object.keys(source).filter((k) => !(KINDS as readonly string[]).includes(k) && k !== 'default');
  if (Object.keys(handlers).length === 0) {
    throw new Error(`WAHOOK_HANDLERS: ${modulePath} exports none of ${KINDS.join(', ')}`);
  }
  if (unknown.length > 0) {
    // Not fatal: a module may export helpers. But a typo ("messages") would otherwise silently do nothing.
    console.warn(`WAHOOK_HANDLERS: ignoring exports ${unknown.join(', ')} of ${modulePath} (handlers are ${KINDS.join(', ')})`);
  }
  return handlers;
}
