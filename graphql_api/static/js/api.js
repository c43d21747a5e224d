// Talking to the API: GraphQL queries over HTTP, and subscriptions over one graphql-transport-ws socket.
//
// The socket is the vendored graphql-ws client (vendor/graphql-ws.min.js, global `graphqlWs`): it speaks
// the protocol, keeps pinging, retries and resubscribes. This module adds what a dashboard needs on top:
// retries forever with capped, jittered exponential backoff (and a "retry now"), a dead-socket check
// (no pong within PONG_TIMEOUT_MS: the socket is dropped and redialled), a fresh client when the old one
// gives up for good, and one connection state for the page to show.

const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 8_000;
const KEEPALIVE_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
const HTTP_TIMEOUT_MS = 10_000;
// Relative to the page, like every other URL the dashboard uses, so it also works under a path prefix.
const ENDPOINT = new URL("graphql", document.baseURI).href;

/** The API answered with GraphQL errors (bad argument, unknown field...). `messages` lists them. */
export class GraphQLRequestError extends Error {
  constructor(errors) {
    const messages = (errors || []).map((e) => e.message || String(e));
    super(messages.join("; ") || "GraphQL request failed");
    this.name = "GraphQLRequestError";
    this.messages = messages;
  }
}

/** The API could not be reached (network down, server stopped, timeout, HTTP error). */
export class UnreachableError extends Error {
  constructor(message) {
    super(message);
    this.name = "UnreachableError";
  }
}

/** POST a GraphQL query; resolves to `data`, rejects with GraphQLRequestError or UnreachableError. */
export async function query(text, variables = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), HTTP_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(ENDPOINT, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ query: text, variables }),
      signal: controller.signal,
    });
  } catch (err) {
    throw new UnreachableError(err.name === "AbortError" ? "the API did not answer in time" : "the API is unreachable");
  } finally {
    clearTimeout(timer);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new UnreachableError(`the API answered HTTP ${response.status} without JSON`);
  }
  if (body.errors && body.errors.length) throw new GraphQLRequestError(body.errors);
  if (!response.ok) throw new UnreachableError(`the API answered HTTP ${response.status}`);
  return body.data;
}

function backoff(retries) {
  const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** retries);
  return Math.round(delay * (0.75 + Math.random() * 0.5));
}

/**
 * One live connection. `onState({state, attempt, retryAt, reconnected})` reports
 * "connecting" | "live" | "offline"; subscriptions survive reconnects (the library resubscribes them).
 */
export class LiveConnection {
  constructor(url, onState) {
    this.url = url;
    this.onState = onState;
    this.subscriptions = new Set();
    this.wake = null; // resolves the current backoff wait early ("retry now")
    this.everConnected = false;
    this.client = this.createClient();
  }

  createClient() {
    let pongTimer = null;
    const client = globalThis.graphqlWs.createClient({
      url: this.url,
      lazy: false,
      keepAlive: KEEPALIVE_MS,
      retryAttempts: Infinity,
      shouldRetry: () => true,
      retryWait: (retries) => this.wait(retries),
      // Reached only when the library gives up for good (a fatal close code): start over with a new client.
      onNonLazyError: (err) => this.restart(err),
      on: {
        connecting: () => {
          if (!this.everConnected) this.onState({ state: "connecting" });
        },
        connected: (_socket, _payload, wasRetry) => {
          const reconnected = this.everConnected || wasRetry;
          this.everConnected = true;
          this.onState({ state: "live", reconnected });
        },
        closed: (event) => {
          clearTimeout(pongTimer);
          if (this.everConnected) this.onState({ state: "offline", reason: describeClose(event) });
        },
        ping: (received) => {
          if (!received) pongTimer = setTimeout(() => client.terminate(), PONG_TIMEOUT_MS);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
      },
    });
    return client;
  }

  wait(retries) {
    const delay = backoff(retries);
    this.onState({ state: "offline", attempt: retries + 1, retryAt: Date.now() + delay });
    return new Promise((resolve) => {
      const timer = setTimeout(done, delay);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wake === done) self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  /** Skip the rest of the current backoff wait. */
  retryNow() {
    if (this.wake) this.wake();
  }

  restart(err) {
    this.onState({ state: "offline", reason: describeClose(err) });
    const old = this.client;
    setTimeout(() => {
      old.dispose();
      this.client = this.createClient();
      for (const sub of this.subscriptions) sub.start();
    }, BACKOFF_MAX_MS);
  }

  /**
   * Subscribe; `handlers.next(data)` gets each result's data and `handlers.error(messages)` the errors the
   * server sent. A subscription the server ends (errors, or a client that fell behind and was dropped) is
   * subscribed again after a pause, and `handlers.resubscribed()` tells the caller to fill the gap.
   * Returns a function that unsubscribes.
   */
  subscribe(text, variables, handlers) {
    const connection = this;
    const sub = {
      attempt: 0,
      dispose: null,
      stopped: false,
      start() {
        if (this.stopped) return;
        this.attempt += 1;
        const attempt = this.attempt;
        const current = () => !this.stopped && attempt === this.attempt;
        const again = (pause) =>
          setTimeout(() => {
            if (!current()) return;
            this.start();
            handlers.resubscribed?.();
          }, pause);
        this.dispose = connection.client.subscribe(
          { query: text, variables },
          {
            next: (result) => {
              if (!current()) return;
              if (result.errors && result.errors.length) handlers.error?.(result.errors.map((e) => e.message));
              if (result.data) handlers.next(result.data);
            },
            // An array: the server refused or ended the operation. Anything else is a fatal close of the
            // socket, which restart() handles for every subscription at once.
            error: (err) => {
              if (!current() || !Array.isArray(err)) return;
              handlers.error?.(err.map((e) => e.message));
              again(5_000);
            },
            complete: () => {
              if (current()) again(1_000);
            },
          },
        );
      },
      stop() {
        this.stopped = true;
        connection.subscriptions.delete(this);
        this.dispose?.();
      },
    };
    this.subscriptions.add(sub);
    sub.start();
    return () => sub.stop();
  }
}

function describeClose(event) {
  if (!event) return "connection lost";
  if (typeof event.code === "number") {
    return event.reason ? `closed (${event.code}: ${event.reason})` : `closed (${event.code})`;
  }
  return event.message || String(event);
}

/** The graphql-transport-ws endpoint next to the page (works behind a proxy that adds a path prefix). */
export function liveUrl() {
  const url = new URL(ENDPOINT, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}
