/**
 * A tiny typed event emitter. Why not Node's EventEmitter or EventTarget: the
 * SDK has no runtime dependencies and must run unchanged in browsers, Node and
 * React Native, and listeners must be typed by event name.
 *
 * A throwing listener must not break the socket's read loop (a frame half
 * processed would corrupt the resume state), so listener errors are caught and
 * handed to `onListenerError`.
 */
export type EventMap = { [event: string]: unknown[] };
export type Listener<A extends unknown[]> = (...args: A) => void;

export class Emitter<E extends { [K in keyof E]: unknown[] }> {
  #listeners = new Map<keyof E, Set<Listener<never[]>>>();
  /** Called with errors thrown by listeners (default: console.error). */
  protected onListenerError: (err: unknown, event: keyof E) => void = (err, event) => {
    console.error(`chatgw: listener of "${String(event)}" threw`, err);
  };

  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener as unknown as Listener<never[]>);
    return () => this.off(event, listener);
  }

  off<K extends keyof E>(event: K, listener: Listener<E[K]>): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    set.delete(listener as unknown as Listener<never[]>);
    // once() wraps listeners: remove the wrapper of this listener too.
    for (const l of set) {
      if ((l as { original?: unknown }).original === listener) set.delete(l);
    }
  }

  /** Subscribes for the next event only. */
  once<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    const wrapper = ((...args: E[K]) => {
      this.off(event, wrapper);
      listener(...args);
    }) as Listener<E[K]> & { original?: unknown };
    wrapper.original = listener;
    return this.on(event, wrapper);
  }

  /** Number of listeners of an event (tests, and skipping work nobody listens to). */
  listenerCount<K extends keyof E>(event: K): number {
    return this.#listeners.get(event)?.size ?? 0;
  }

  protected emit<K extends keyof E>(event: K, ...args: E[K]): void {
    const set = this.#listeners.get(event);
    if (!set || set.size === 0) return;
    for (const listener of [...set]) {
      try {
        (listener as unknown as Listener<E[K]>)(...args);
      } catch (err) {
        this.onListenerError(err, event);
      }
    }
  }

  protected removeAllListeners(): void {
    this.#listeners.clear();
  }
}
