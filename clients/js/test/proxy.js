// A TCP proxy in front of the gateway that the tests can cut, blackhole or make refuse
// session resumes, to play the network faults a real client meets.

import net from 'node:net';

export class Proxy {
  /** Listens on 127.0.0.1 (a free port) and forwards to `target` (`host:port`). */
  static async start(target) {
    const proxy = new Proxy(target);
    await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  constructor(target) {
    const [host, port] = target.split(':');
    this.target = { host, port: Number(port) };
    this.pairs = new Set();
    /** Client bytes are dropped (the connection stays up). */
    this.blackhole = false;
    /** Upgrade requests that resume a session name an unknown one, so the gateway says 404. */
    this.refuseResume = false;
    this.server = net.createServer((down) => this._accept(down));
  }

  get port() {
    return this.server.address().port;
  }

  /** Every connection through the proxy so far, including closed ones. */
  get accepted() {
    return this._accepted ?? 0;
  }

  /** Closes every connection through the proxy now (new ones are still accepted). */
  cut() {
    for (const [down, up] of this.pairs) {
      down.destroy();
      up.destroy();
    }
    this.pairs.clear();
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }

  _accept(down) {
    this._accepted = this.accepted + 1;
    const up = net.connect(this.target.port, this.target.host);
    const pair = [down, up];
    this.pairs.add(pair);
    let first = true;
    down.on('data', (chunk) => {
      if (this.blackhole) return;
      if (first && this.refuseResume) {
        // Same length, so the request stays well formed: the gateway knows no such session.
        chunk = Buffer.from(chunk.toString('latin1')
          .replace(/session=([0-9A-Za-z_-]+)/, (_, t) => `session=${'0'.repeat(t.length)}`),
        'latin1');
      }
      first = false;
      up.write(chunk);
    });
    up.on('data', (chunk) => down.write(chunk));
    const end = () => {
      down.destroy();
      up.destroy();
      this.pairs.delete(pair);
    };
    down.on('close', end);
    up.on('close', end);
    down.on('error', end);
    up.on('error', end);
  }
}
