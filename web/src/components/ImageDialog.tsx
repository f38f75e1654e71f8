import { useEffect, useState } from "react";
import type { ImageMetadata, Recipe } from "sdq-client";
import { useImageSrc, useSdqClient } from "sdq-client/react";

import type { Mode } from "../form";
import { Dialog } from "./Dialog";

/** What the dialog needs of an image: a gallery entry, or a job's result. */
export interface ImageRef {
  id: string;
  url: string;
  /** The job that made it: its request is the image's recipe. */
  job_id?: string;
  prompt?: string;
  seed?: number;
  width?: number;
  height?: number;
  model?: string;
}

/** What a person can do with an image, provided by the app. */
export interface ImageActions {
  useParameters: (recipe: Recipe) => void;
  sendTo: (mode: Exclude<Mode, "txt2img">, image: ImageRef) => void;
}

/** One image full size, with its parameters and what can be done with it. */
export function ImageDialog(props: { image: ImageRef; actions: ImageActions; onClose: () => void; onDelete?: () => Promise<void> }) {
  const client = useSdqClient();
  const { image } = props;
  const src = useImageSrc(image.url);
  const [meta, setMeta] = useState<ImageMetadata | null>(null);
  const [metaError, setMetaError] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  const [deleteError, setDeleteError] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    // The job's request is the recipe (with this image's own seed); an image without a
    // known job is read from its PNG's metadata.
    const read: Promise<ImageMetadata> = image.job_id
      ? client.job(image.job_id).then((job) => {
          const { init_image: _init, mask_image: _mask, ...recipe } = job.request;
          const seed = image.seed ?? job.images.find((i) => i.id === image.id)?.seed ?? recipe.seed;
          return { source: "sdq", parameters: null, recipe: { ...recipe, seed } };
        })
      : client.imageMetadata(image.id);
    read.then(
      (m) => live && setMeta(m),
      (e: Error) => live && setMetaError(e.message),
    );
    return () => {
      live = false;
    };
  }, [client, image.id, image.job_id, image.seed]);
  const recipe: Recipe = meta?.recipe ?? {
    ...(image.prompt !== undefined ? { prompt: image.prompt } : {}),
    ...(image.seed !== undefined ? { seed: image.seed } : {}),
    ...(image.width !== undefined ? { width: image.width } : {}),
    ...(image.height !== undefined ? { height: image.height } : {}),
    ...(image.model !== undefined ? { model: image.model } : {}),
  };
  const rows = Object.entries(recipe).filter(([, v]) => v !== null && v !== undefined && v !== "" && typeof v !== "object");
  const filename = `${recipe.seed ?? image.id}.png`;
  return (
    <Dialog title={image.prompt || "Image"} onClose={props.onClose} className="wide image-dialog">
      <div className="image-dialog-body">
        <div className="image-full">
          {src ? <img src={src} alt={image.prompt ?? "image"} /> : <span className="thumb-placeholder" />}
        </div>
        <div className="stack image-side">
          <h3>Parameters</h3>
          {metaError && !meta && <p className="hint">Stored parameters unavailable ({metaError}).</p>}
          <dl className="params-list">
            {rows.map(([k, v]) => (
              <div key={k}>
                <dt>{k.replace(/_/g, " ")}</dt>
                <dd>{String(v)}</dd>
              </div>
            ))}
          </dl>
          <div className="row wrap">
            <button type="button" className="primary" onClick={() => props.actions.useParameters(recipe)}>
              Use these parameters
            </button>
            <button type="button" onClick={() => props.actions.sendTo("img2img", image)}>
              Send to img2img
            </button>
            <button type="button" onClick={() => props.actions.sendTo("inpaint", image)}>
              Send to inpaint
            </button>
            {src && (
              <a className="button" href={src} download={filename}>
                Download
              </a>
            )}
          </div>
          {props.onDelete && !confirming && (
            <div className="row">
              <button type="button" className="danger" onClick={() => setConfirming(true)}>
                Delete…
              </button>
            </div>
          )}
          {props.onDelete && confirming && (
            <div className="confirm" role="alertdialog" aria-label="Confirm delete">
              <p>Delete this image for good?</p>
              <div className="row">
                <button
                  type="button"
                  className="danger"
                  disabled={deleting}
                  onClick={() => {
                    setDeleting(true);
                    setDeleteError(null);
                    props.onDelete?.().catch((e: Error) => {
                      setDeleteError(e.message);
                      setDeleting(false);
                    });
                  }}
                >
                  Delete image
                </button>
                <button type="button" className="ghost" onClick={() => setConfirming(false)} autoFocus>
                  Keep it
                </button>
              </div>
              {deleteError && <p className="error-text">{deleteError}</p>}
            </div>
          )}
        </div>
      </div>
    </Dialog>
  );
}
