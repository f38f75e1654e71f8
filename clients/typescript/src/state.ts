// A job's live state, folded from its snapshot and its events. Pure functions, so the
// React hooks stay thin and the folding is tested without a browser.

import type { ImageSummary, Job, JobEvent, JobSpec, JobStatus, Timings } from "./types.js";

/** Everything a UI shows about one job, kept current by its events. */
export interface JobState {
  id: string;
  status: JobStatus;
  /** The request as the server stored it, once the snapshot has arrived. */
  request: JobSpec | null;
  /** 1-based place in the queue while queued. */
  position: number | null;
  step: number;
  total: number;
  /** Estimated milliseconds left, from the latest progress event. */
  etaMs: number | null;
  elapsedMs: number | null;
  attempt: number;
  worker: string | null;
  /** Images in the order they finished. */
  images: ImageSummary[];
  /** The latest step preview (a data URL) and its step. */
  preview: { step: number; image: string } | null;
  error: string | null;
  /** A failed attempt that will be retried. */
  retrying: boolean;
  timings: Timings | null;
  /** The `seq` of the last event folded in (0: none yet). */
  seq: number;
}

/** The state of a job nothing is known about yet but its id. */
export function initialJobState(id: string): JobState {
  return {
    id,
    status: "queued",
    request: null,
    position: null,
    step: 0,
    total: 0,
    etaMs: null,
    elapsedMs: null,
    attempt: 0,
    worker: null,
    images: [],
    preview: null,
    error: null,
    retrying: false,
    timings: null,
    seq: 0,
  };
}

/** Whether the job will not change any more. */
export function isFinished(status: JobStatus): boolean {
  return status === "succeeded" || status === "failed" || status === "canceled";
}

/**
 * Merges a `GET /v1/jobs/{id}` snapshot. Fields events also carry are taken from the
 * snapshot only if no event has been folded in yet or the snapshot shows the job further
 * on (a finished job, a live queue position), so a late snapshot never rewinds the state.
 */
export function applySnapshot(state: JobState, job: Job): JobState {
  const next: JobState = { ...state, request: job.request };
  // The queue position moves without events: a fresh snapshot knows it best.
  if (job.status === "queued" && (state.seq === 0 || state.status === "queued")) next.position = job.queue_position;
  if (job.preview && (!state.preview || job.preview.step > state.preview.step)) {
    next.preview = { step: job.preview.step, image: job.preview.image };
  }
  const snapshotAhead = isFinished(job.status) && !isFinished(state.status);
  if (state.seq === 0 || snapshotAhead) {
    next.status = job.status;
    next.step = job.progress.step;
    next.total = job.progress.total;
    next.attempt = job.attempts;
    next.worker = job.worker;
    next.error = job.error;
    next.timings = job.timings;
    if (job.images.length > 0) {
      next.images = job.images.map(({ index, id, url, seed }) => ({ index, id, url, seed }));
    }
  }
  return next;
}

/** Folds one event into the state; events at or below the folded `seq` change nothing. */
export function applyEvent(state: JobState, event: JobEvent): JobState {
  if (event.type === "preview") {
    if (state.preview && state.preview.step >= event.step) return state;
    return { ...state, preview: { step: event.step, image: event.image } };
  }
  if (event.seq <= state.seq) return state;
  const s: JobState = { ...state, seq: event.seq };
  switch (event.type) {
    case "queued":
      // The event's position is the one at submission; a snapshot's is fresher.
      return { ...s, status: "queued", position: s.position ?? event.position };
    case "started":
      return {
        ...s,
        status: "running",
        position: null,
        attempt: event.attempt,
        worker: event.worker,
        retrying: false,
        error: null,
        step: 0,
        preview: null,
      };
    case "progress":
      return {
        ...s,
        status: "running",
        position: null,
        step: event.step,
        total: event.total,
        etaMs: event.eta_ms,
        elapsedMs: event.elapsed_ms,
      };
    case "image": {
      const { index, id, url, seed } = event;
      const images = s.images.filter((i) => i.index !== index).concat([{ index, id, url, seed }]);
      return { ...s, images };
    }
    case "succeeded":
      return {
        ...s,
        status: "succeeded",
        position: null,
        images: event.images,
        timings: event.timings,
        etaMs: 0,
        step: s.total || s.step,
      };
    case "failed":
      return event.retrying
        ? { ...s, status: "queued", error: event.error, retrying: true }
        : { ...s, status: "failed", position: null, error: event.error, retrying: false };
    case "canceled":
      return { ...s, status: "canceled", position: null, etaMs: null };
    default:
      return s;
  }
}
