import { useCallback, useEffect, useState } from "react";
import type { Job } from "sdq-client";
import { isFinished, useJob, useSdqClient, useWorkers } from "sdq-client/react";

import { ProgressBar } from "./ProgressBar";

/** How often the queue is re-read. */
const QUEUE_POLL_MS = 2000;

/** My queued and running jobs, with position and progress, each cancelable; workers for admins. */
export function QueuePanel(props: { showWorkers: boolean; full?: boolean }) {
  const client = useSdqClient();
  const [running, setRunning] = useState<Job[]>([]);
  const [queued, setQueued] = useState<Job[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [tick, setTick] = useState(0);
  const reread = useCallback(() => setTick((t) => t + 1), []);
  useEffect(() => {
    let live = true;
    const read = () =>
      Promise.all([client.jobs({ status: "running", limit: 100 }), client.jobs({ status: "queued", limit: 100 })]).then(
        ([r, q]) => {
          if (!live) return;
          setRunning(r.jobs);
          // Next in line first.
          setQueued([...q.jobs].sort((a, b) => (a.queue_position ?? 1e9) - (b.queue_position ?? 1e9)));
          setError(null);
        },
        (e: Error) => live && setError(e.message),
      );
    void read();
    const timer = setInterval(read, QUEUE_POLL_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [client, tick]);
  const cancel = (id: string) => {
    client.cancel(id).then(reread, reread);
  };
  const empty = running.length === 0 && queued.length === 0;
  return (
    <section className={`queue-panel ${props.full ? "full" : ""}`} aria-labelledby="queue-title">
      <h2 id="queue-title">Queue</h2>
      {error && <p className="error-text">{error}</p>}
      {empty && !error && <p className="empty">Nothing queued or running.</p>}
      <ol className="queue-list">
        {running.map((job) => (
          <RunningItem key={job.id} job={job} onCancel={() => cancel(job.id)} />
        ))}
        {queued.map((job) => (
          <li key={job.id} className="queue-item" data-job-id={job.id}>
            <div className="queue-item-head">
              <span className="queue-prompt">{job.request.prompt}</span>
              <span className="badge badge-queued">#{job.queue_position ?? "?"}</span>
            </div>
            <div className="row between">
              <span className="hint">
                Position {job.queue_position ?? "?"} · {job.request.steps} steps
              </span>
              <button type="button" className="danger small" onClick={() => cancel(job.id)} aria-label={`Cancel ${job.request.prompt}`}>
                Cancel
              </button>
            </div>
          </li>
        ))}
      </ol>
      {props.showWorkers && <Workers />}
    </section>
  );
}

function RunningItem(props: { job: Job; onCancel: () => void }) {
  const { state } = useJob(props.job.id);
  const prompt = props.job.request.prompt;
  // Finished since the list was read: its stream knows before the next poll does.
  if (state && isFinished(state.status)) return null;
  return (
    <li className="queue-item running" data-job-id={props.job.id}>
      <div className="queue-item-head">
        <span className="queue-prompt">{prompt}</span>
        <span className="badge badge-running">running</span>
      </div>
      <ProgressBar
        step={state?.step ?? props.job.progress.step}
        total={state?.total ?? props.job.progress.total}
        etaMs={state?.etaMs ?? null}
        label={`Progress of ${prompt}`}
      />
      <div className="row end">
        <button type="button" className="danger small" onClick={props.onCancel} aria-label={`Cancel ${prompt}`}>
          Cancel
        </button>
      </div>
    </li>
  );
}

function Workers() {
  const { workers, error } = useWorkers(5000);
  return (
    <section className="workers" aria-labelledby="workers-title">
      <h3 id="workers-title">Workers</h3>
      {error && <p className="error-text">{error.message}</p>}
      {workers.length === 0 && !error && <p className="empty">No worker seen in the last 30 s.</p>}
      <ul className="worker-list">
        {workers.map((w) => (
          <li key={w.name} className="worker">
            <span className="worker-name">{w.name}</span>
            <span className="hint">
              {w.device} · {w.model ?? "no model loaded"} · {w.current_job ? "busy" : "idle"}
            </span>
          </li>
        ))}
      </ul>
    </section>
  );
}
