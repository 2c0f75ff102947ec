#!/usr/bin/env node
// The `wahook` command. wahook runs its TypeScript directly through tsx, which also lets an operator's
// handler module (WAHOOK_HANDLERS) be a .ts file.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv.slice(2));
