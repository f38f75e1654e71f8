// One live view per job, shared by everything that watches it.
//
// A browser opens at most six HTTP/1.1 connections to a host, and every event stream
// holds one. So each job gets at most one stream however many components show it, and a
// job far back in the queue gets none: its snapshot is polled instead (its queue
// position moves without events anyway) until it is next in line or running; the stream
// then replays its whole log from the start, so nothing is missed.

import type { SdqClient } from "./client.js";
import { SdqError } from "./client.js";
import { isPreview, type Subscription, type SubscriptionEnd } from "./events.js";
import { applyEvent, applySnapshot, initialJobState, isFinished, type JobState } from "./state.js";
import type { Job, JobEvent, PreviewEvent } from "./types.js";

/** Everything known about one watched job; replaced (never mutated) on every change. */
export interface LiveJob {
  state: JobState;
  /** The latest snapshot (`GET /v1/jobs/{id}`). */
  job: Job | null;
  /** The events of the `seq` log received so far, in order. */
  events: JobEvent[];
  /** The latest preview, when the job sends them. */
  preview: PreviewEvent | null;
  /** Whether an event stream is open now. */
  connected: boolean;
  /** How many times the stream reconnected. */
  reconnects: number;
  /** How the stream ended, once it has. */
  end: SubscriptionEnd | null;
  /** A lasting error (the job is gone, the key was refused). */
  error: SdqError | null;
}

/** How often the snapshot of a job waiting in the queue is re-read. */
export const QUEUED_POLL_MS = 1500;
/** How long a job nobody watches stays cached (a component re-mounting finds it). */
const LINGER_MS = 2000;

interface Entry {
  live: LiveJob;
  listeners: Set<(live: LiveJob) => void>;
  sub: Subscription | null;
  poll: ReturnType<typeof setTimeout> | null;
  linger: ReturnType<typeof setTimeout> | null;
  stopped: boolean;
}

/** The shared live views of one client's jobs. */
export class LiveJobs {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly client: SdqClient) {}

  /** The current view of a watched job. */
  get(jobId: string): LiveJob | undefined {
    return this.entries.get(jobId)?.live;
  }

  /** Calls `listener` on every change of `jobId` until the returned function is called. */
  watch(jobId: string, listener: (live: LiveJob) => void): () => void {
    let entry = this.entries.get(jobId);
    if (!entry) {
      entry = {
        live: {
          state: initialJobState(jobId),
          job: null,
          events: [],
          preview: null,
          connected: false,
          reconnects: 0,
          end: null,
          error: null,
        },
        listeners: new Set(),
        sub: null,
        poll: null,
        linger: null,
        stopped: false,
      };
      this.entries.set(jobId, entry);
      this.readSnapshot(jobId, entry);
    }
    if (entry.linger) {
      clearTimeout(entry.linger);
      entry.linger = null;
    }
    entry.listeners.add(listener);
    const e = entry;
    return () => {
      e.listeners.delete(listener);
      if (e.listeners.size === 0 && !e.linger) {
        e.linger = setTimeout(() => this.stop(jobId, e), LINGER_MS);
      }
    };
  }

  /** Closes every stream and timer (for tests and page teardown). */
  close(): void {
    for (const [id, entry] of this.entries) this.stop(id, entry);
  }

  private stop(jobId: string, entry: Entry): void {
    entry.stopped = true;
    entry.sub?.close();
    if (entry.poll) clearTimeout(entry.poll);
    if (entry.linger) clearTimeout(entry.linger);
    if (this.entries.get(jobId) === entry) this.entries.delete(jobId);
  }

  private update(entry: Entry, change: (live: LiveJob) => LiveJob): void {
    if (entry.stopped) return;
    entry.live = change(entry.live);
    for (const listener of [...entry.listeners]) listener(entry.live);
  }

  private readSnapshot(jobId: string, entry: Entry): void {
    entry.poll = null;
    this.client.job(jobId).then(
      (job) => {
        if (entry.stopped) return;
        this.update(entry, (l) => ({ ...l, job, state: applySnapshot(l.state, job), error: null }));
        const nextInLine = job.queue_position === null || job.queue_position <= 1;
        if (!entry.sub && (job.status !== "queued" || nextInLine)) this.openStream(jobId, entry);
        this.pollWhileQueued(jobId, entry);
      },
      (e: unknown) => {
        if (entry.stopped) return;
        const error = e instanceof SdqError ? e : new SdqError(0, "network", String(e));
        if (error.status === 0 || error.status >= 500) {
          // The server is unreachable for now: keep trying.
          entry.poll = setTimeout(() => this.readSnapshot(jobId, entry), QUEUED_POLL_MS * 2);
        } else {
          this.update(entry, (l) => ({ ...l, error }));
        }
      },
    );
  }

  /** A queued job's position moves without events: re-read its snapshot until it starts. */
  private pollWhileQueued(jobId: string, entry: Entry): void {
    if (entry.stopped || entry.poll || entry.live.state.status !== "queued") return;
    entry.poll = setTimeout(() => this.readSnapshot(jobId, entry), QUEUED_POLL_MS);
  }

  private openStream(jobId: string, entry: Entry): void {
    const sub = this.client.subscribe(jobId, {
      onOpen: () => this.update(entry, (l) => ({ ...l, connected: true })),
      onReconnect: () => this.update(entry, (l) => ({ ...l, connected: false, reconnects: l.reconnects + 1 })),
      onEvent: (event) => {
        this.update(entry, (l) => ({
          ...l,
          state: applyEvent(l.state, event),
          ...(isPreview(event) ? { preview: event } : { events: [...l.events, event] }),
        }));
        // A retry puts the job back in the queue.
        this.pollWhileQueued(jobId, entry);
      },
    });
    entry.sub = sub;
    sub.done.then(
      (end) => {
        this.update(entry, (l) => ({ ...l, connected: false, end }));
        // The final snapshot carries what events do not (image sizes, the request).
        if (end.reason === "terminal") this.finalSnapshot(jobId, entry);
      },
      (e: unknown) => {
        const error = e instanceof SdqError ? e : new SdqError(0, "network", String(e));
        this.update(entry, (l) => ({ ...l, connected: false, error }));
      },
    );
  }

  private finalSnapshot(jobId: string, entry: Entry): void {
    this.client.job(jobId).then(
      (job) => {
        if (!isFinished(job.status)) return;
        this.update(entry, (l) => ({ ...l, job, state: applySnapshot(l.state, job) }));
      },
      () => undefined,
    );
  }
}
