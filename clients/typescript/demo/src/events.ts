/** A minimal typed emitter for the demo's model -> view notifications. */
type AnyHandler = (...args: unknown[]) => void;

export class Emitter<E extends Record<string, unknown[]>> {
  private readonly handlers = new Map<keyof E, Set<AnyHandler>>();

  /** Subscribes; returns the unsubscribe function. */
  on<K extends keyof E>(event: K, fn: (...args: E[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    const h = fn as unknown as AnyHandler;
    set.add(h);
    return () => set.delete(h);
  }

  emit<K extends keyof E>(event: K, ...args: E[K]): void {
    for (const fn of [...(this.handlers.get(event) ?? [])]) fn(...args);
  }

  clear(): void {
    this.handlers.clear();
  }
}
