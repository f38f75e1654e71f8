import { formatMs } from "../form";

/** A labelled progress bar: step count and time left. */
export function ProgressBar(props: { step: number; total: number; etaMs: number | null; label: string }) {
  const { step, total } = props;
  const fraction = total > 0 ? Math.min(1, step / total) : 0;
  return (
    <div className="progress">
      <div
        className="progress-track"
        role="progressbar"
        aria-label={props.label}
        aria-valuemin={0}
        aria-valuemax={total || 1}
        aria-valuenow={step}
        aria-valuetext={total ? `step ${step} of ${total}` : "starting"}
      >
        <div className="progress-fill" style={{ width: `${(fraction * 100).toFixed(1)}%` }} />
      </div>
      <div className="progress-text">
        <span className="progress-steps">{total ? `Step ${step} / ${total}` : "Starting…"}</span>
        {total > 0 && step < total && <span className="progress-eta">ETA {formatMs(props.etaMs)}</span>}
      </div>
    </div>
  );
}
