// React hooks over the client: server state read where it is used, kept live by events.
// Import from `sdq-client/react`; React is an optional peer dependency of the package.

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";

import { SdqClient, SdqError, type ListImagesOptions } from "./client.js";
import type { SubscriptionEnd } from "./events.js";
import { LiveJobs, type LiveJob } from "./live.js";
import { isFinished, type JobState } from "./state.js";
import type { GalleryImage, Job, JobEvent, Model, PreviewEvent, Worker } from "./types.js";

interface Shared {
  client: SdqClient;
  live: LiveJobs;
}

const ClientContext = createContext<Shared | null>(null);

/** Makes `client` the one every hook below uses. */
export function SdqProvider(props: { client: SdqClient; children?: ReactNode }) {
  const { client } = props;
  const shared = useMemo(() => ({ client, live: new LiveJobs(client) }), [client]);
  useEffect(() => () => shared.live.close(), [shared]);
  return createElement(ClientContext.Provider, { value: shared }, props.children);
}

function useSdq(): Shared {
  const shared = useContext(ClientContext);
  if (!shared) throw new Error("sdq-client/react: wrap the app in <SdqProvider client={…}>");
  return shared;
}

/** The client of the nearest `SdqProvider`. */
export function useSdqClient(): SdqClient {
  return useSdq().client;
}

/** The models the server knows, with their defaults. */
export function useModels(): {
  models: Model[];
  /** The model a job without `model` gets. */
  defaultModel: Model | null;
  loading: boolean;
  error: SdqError | null;
  reload: () => void;
} {
  const client = useSdqClient();
  const [models, setModels] = useState<Model[]>([]);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<SdqError | null>(null);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    let live = true;
    setLoading(true);
    client.models().then(
      (m) => {
        if (!live) return;
        setModels(m);
        setError(null);
        setLoading(false);
      },
      (e: unknown) => {
        if (!live) return;
        setError(asSdqError(e));
        setLoading(false);
      },
    );
    return () => {
      live = false;
    };
  }, [client, generation]);
  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { models, defaultModel: models.find((m) => m.default) ?? null, loading, error, reload };
}

/** The shared live view of one job (see `LiveJobs`), or null without an id. */
function useLiveJob(jobId: string | null | undefined): LiveJob | null {
  const { live } = useSdq();
  const subscribeTo = useCallback(
    (notify: () => void) => (jobId ? live.watch(jobId, notify) : () => undefined),
    [live, jobId],
  );
  const read = useCallback(() => (jobId ? (live.get(jobId) ?? null) : null), [live, jobId]);
  return useSyncExternalStore(subscribeTo, read, read);
}

/** A job's events as they arrive, through reconnections (one stream per job, shared). */
export function useJobEvents(jobId: string | null | undefined): {
  /** Every event of the `seq` log so far, in order. */
  events: JobEvent[];
  /** The latest preview, if the job sends them. */
  preview: PreviewEvent | null;
  /** Whether a connection is open now. */
  connected: boolean;
  /** How many times the stream has reconnected. */
  reconnects: number;
  /** Set when the stream ended. */
  end: SubscriptionEnd | null;
  error: SdqError | null;
} {
  const live = useLiveJob(jobId);
  return {
    events: live?.events ?? NO_EVENTS,
    preview: live?.preview ?? null,
    connected: live?.connected ?? false,
    reconnects: live?.reconnects ?? 0,
    end: live?.end ?? null,
    error: live?.error ?? null,
  };
}

const NO_EVENTS: JobEvent[] = [];

/** One job, live: its state folded from snapshot and events, and a cancel action. */
export function useJob(jobId: string | null | undefined): {
  state: JobState | null;
  /** The latest snapshot (`GET /v1/jobs/{id}`). */
  job: Job | null;
  error: SdqError | null;
  cancel: () => Promise<void>;
} {
  const { client } = useSdq();
  const live = useLiveJob(jobId);
  const cancel = useCallback(async () => {
    if (!jobId) return;
    try {
      await client.cancel(jobId);
    } catch (e) {
      // Already finished: the events say how.
      if (!(e instanceof SdqError && e.status === 409)) throw e;
    }
  }, [client, jobId]);
  return { state: live?.state ?? null, job: live?.job ?? null, error: live?.error ?? null, cancel };
}

/** The gallery, newest first, one page at a time. */
export function useGallery(options: Omit<ListImagesOptions, "cursor"> = {}): {
  images: GalleryImage[];
  loading: boolean;
  error: SdqError | null;
  /** Whether another page exists. */
  hasMore: boolean;
  /** Fetches the next page (no-op while one is loading or none is left). */
  loadMore: () => void;
  /** Deletes an image on the server and drops it from the list. */
  remove: (id: string) => Promise<void>;
  /** Starts again from the newest image. */
  refresh: () => void;
} {
  const client = useSdqClient();
  const [images, setImages] = useState<GalleryImage[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [hasMore, setHasMore] = useState(true);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<SdqError | null>(null);
  const [generation, setGeneration] = useState(0);
  const inFlight = useRef<{ generation: number } | null>(null);
  const { model, limit, job_id, since } = options;
  const filters: Omit<ListImagesOptions, "cursor"> = {};
  if (model !== undefined) filters.model = model;
  if (limit !== undefined) filters.limit = limit;
  if (job_id !== undefined) filters.job_id = job_id;
  if (since !== undefined) filters.since = since;
  const filterKey = JSON.stringify(filters);

  const fetchPage = useCallback(
    (from: string | null, gen: number) => {
      const token = { generation: gen };
      inFlight.current = token;
      setLoading(true);
      const page = JSON.parse(filterKey) as ListImagesOptions;
      if (from) page.cursor = from;
      client.images(page).then(
        (p) => {
          if (inFlight.current !== token) return;
          inFlight.current = null;
          setImages((list) => {
            const seen = new Set(from ? list.map((i) => i.id) : []);
            return (from ? list : []).concat(p.images.filter((i) => !seen.has(i.id)));
          });
          setCursor(p.next_cursor);
          setHasMore(p.next_cursor !== null);
          setError(null);
          setLoading(false);
        },
        (e: unknown) => {
          if (inFlight.current !== token) return;
          inFlight.current = null;
          setError(asSdqError(e));
          setLoading(false);
        },
      );
    },
    [client, filterKey],
  );

  useEffect(() => {
    fetchPage(null, generation);
    return () => {
      inFlight.current = null;
    };
  }, [fetchPage, generation]);

  const loadMore = useCallback(() => {
    if (inFlight.current || !hasMore || !cursor) return;
    fetchPage(cursor, generation);
  }, [fetchPage, cursor, hasMore, generation]);
  const refresh = useCallback(() => setGeneration((g) => g + 1), []);
  const remove = useCallback(
    async (id: string) => {
      await client.deleteImage(id);
      setImages((list) => list.filter((i) => i.id !== id));
    },
    [client],
  );
  return { images, loading, error, hasMore, loadMore, remove, refresh };
}

/** Workers seen lately, re-read every `intervalMs`. */
export function useWorkers(intervalMs = 5000): { workers: Worker[]; error: SdqError | null } {
  const client = useSdqClient();
  const [workers, setWorkers] = useState<Worker[]>([]);
  const [error, setError] = useState<SdqError | null>(null);
  useEffect(() => {
    let live = true;
    const read = () =>
      client.workers().then(
        (w) => {
          if (!live) return;
          setWorkers(w);
          setError(null);
        },
        (e: unknown) => live && setError(asSdqError(e)),
      );
    void read();
    const timer = setInterval(read, intervalMs);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [client, intervalMs]);
  return { workers, error };
}

/**
 * A `src` for an image or thumbnail path. Without a key the path itself (the browser
 * caches and lazy-loads it); with one, the bytes are fetched with the key and shown from
 * an object URL, since an `<img>` cannot send a header and a key never goes in a URL.
 */
export function useImageSrc(path: string | null | undefined): string | undefined {
  const client = useSdqClient();
  const keyed = client.apiKey() !== null;
  const [src, setSrc] = useState<string | undefined>(undefined);
  useEffect(() => {
    if (!path) {
      setSrc(undefined);
      return;
    }
    if (!keyed || path.startsWith("data:") || path.startsWith("blob:")) {
      setSrc(path.startsWith("/") ? client.url(path) : path);
      return;
    }
    const controller = new AbortController();
    let objectUrl: string | undefined;
    client.blob(path, controller.signal).then(
      (blob) => {
        objectUrl = URL.createObjectURL(blob);
        setSrc(objectUrl);
      },
      () => setSrc(undefined),
    );
    return () => {
      controller.abort();
      if (objectUrl) URL.revokeObjectURL(objectUrl);
    };
  }, [client, path, keyed]);
  return src;
}

/** Re-exported so UIs can tell finished jobs apart without a second import. */
export { isFinished };

function asSdqError(e: unknown): SdqError {
  if (e instanceof SdqError) return e;
  return new SdqError(0, "network", String((e as Error)?.message ?? e));
}
