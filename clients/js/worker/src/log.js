// The worker's log lines on stderr: plain text for people, or JSON lines shaped like the Rust
// binaries' `--log-format json` (`{"timestamp", "level", "fields": {"message", ...}, "target"}`)
// for log collectors and the wsmq test harness.

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 };

/**
 * A logger with `debug`, `info`, `warn` and `error`, each `(message, fields?)`.
 *
 * @param {{format?: 'plain'|'json', level?: string, write?: (line: string) => void}} options
 *   `level` is the lowest level written (default `info`); `write` defaults to stderr.
 */
export function createLogger({ format = 'plain', level = 'info', write } = {}) {
  const threshold = LEVELS[level] ?? LEVELS.info;
  const out = write ?? ((line) => process.stderr.write(`${line}\n`));
  const logger = {};
  for (const [name, rank] of Object.entries(LEVELS)) {
    logger[name] = (message, fields = {}) => {
      if (rank < threshold) return;
      out(format === 'json' ? jsonLine(name, message, fields) : plainLine(name, message, fields));
    };
  }
  return logger;
}

function jsonLine(level, message, fields) {
  return JSON.stringify({
    timestamp: new Date().toISOString(),
    level: level.toUpperCase(),
    fields: { message, ...fields },
    target: 'wsmq_worker_node',
  });
}

function plainLine(level, message, fields) {
  const rest = Object.entries(fields)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
  const head = `${new Date().toISOString()} ${level.toUpperCase().padStart(5)} wsmq-worker: ${message}`;
  return rest ? `${head} ${rest}` : head;
}
