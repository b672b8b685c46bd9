#!/usr/bin/env node
// `wsmq-worker [flags] MODULE[:EXPORT]`: see src/cli.js.
import { main } from '../src/cli.js';

main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (error) => {
    process.stderr.write(`wsmq-worker: ${error?.stack ?? String(error)}\n`);
    process.exit(1);
  },
);
