// The API key: kept in localStorage, sent in a header by the client, never in a URL.

const STORAGE_KEY = "sdq.apiKey";

/** The stored key, if any. */
export function storedKey(): string | null {
  try {
    return window.localStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

/** Stores a key, or forgets it with null. */
export function storeKey(key: string | null): void {
  try {
    if (key) window.localStorage.setItem(STORAGE_KEY, key);
    else window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage refused (private mode): the key lasts for this page only.
  }
}

/** Fired on every 401, so the app can ask for a key. */
export const authEvents = new EventTarget();
