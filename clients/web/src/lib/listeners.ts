/** A set of callbacks; `add` returns the unsubscribe. Emitting calls a snapshot of the set. */
export class Listeners<T extends unknown[]> {
  private readonly callbacks = new Set<(...args: T) => void>();

  add(callback: (...args: T) => void): () => void {
    this.callbacks.add(callback);
    return () => this.callbacks.delete(callback);
  }

  emit(...args: T): void {
    for (const callback of [...this.callbacks]) callback(...args);
  }
}
