import { useState } from "react";
import { useJob } from "sdq-client/react";

import { formatMs } from "../form";
import { ProgressBar } from "./ProgressBar";
import { Thumb } from "./Thumb";

/** One submitted job: queue position, live progress and preview, cancel, then its images. */
export function JobCard(props: { jobId: string; onOpenImage?: (imageId: string) => void; onDismiss?: () => void }) {
  const { state, job, error, cancel } = useJob(props.jobId);
  const [canceling, setCanceling] = useState(false);
  if (!state) return null;
  const request = job?.request ?? state.request;
  const active = state.status === "queued" || state.status === "running";
  const title = request?.prompt || "…";
  return (
    <article className={`job-card job-${state.status}`} aria-label={`Job: ${title}`} data-job-id={state.id}>
      <header className="job-head">
        <p className="job-prompt" title={title}>
          {title}
        </p>
        <span className={`badge badge-${state.status}`}>{state.status}</span>
      </header>
      {request && (
        <p className="job-meta">
          {request.width}×{request.height} · {request.steps} steps · seed {request.seed}
          {request.num_images > 1 ? ` · ${request.num_images} images` : ""} · {request.model}
        </p>
      )}
      {state.status === "queued" && (
        <p className="job-position">
          {state.retrying
            ? `Retrying after: ${state.error ?? "an error"}`
            : state.position
              ? `Queued: position ${state.position}`
              : "Queued"}
        </p>
      )}
      {state.status === "running" && (
        <ProgressBar step={state.step} total={state.total} etaMs={state.etaMs} label={`Progress of ${title}`} />
      )}
      {state.preview && active && (
        <img className="job-preview" src={state.preview.image} alt={`Preview at step ${state.preview.step}`} />
      )}
      {state.images.length > 0 && (
        <div className="job-images">
          {state.images.map((img) => (
            <button
              type="button"
              key={img.id}
              className="image-button"
              onClick={() => props.onOpenImage?.(img.id)}
              aria-label={`Open image ${img.index + 1} (seed ${img.seed})`}
            >
              <Thumb path={img.url} alt={`Result ${img.index + 1}, seed ${img.seed}`} className="job-image" />
            </button>
          ))}
        </div>
      )}
      {state.status === "failed" && <p className="error-text">Failed: {state.error}</p>}
      {error && <p className="error-text">{error.message}</p>}
      {state.status === "succeeded" && state.timings?.total_ms !== undefined && (
        <p className="job-meta">Done in {formatMs(state.timings.total_ms)}</p>
      )}
      <div className="row end">
        {active && (
          <button
            type="button"
            className="danger"
            disabled={canceling}
            onClick={() => {
              setCanceling(true);
              cancel().finally(() => setCanceling(false));
            }}
          >
            Cancel
          </button>
        )}
        {!active && props.onDismiss && (
          <button type="button" className="ghost" onClick={props.onDismiss}>
            Dismiss
          </button>
        )}
      </div>
    </article>
  );
}
