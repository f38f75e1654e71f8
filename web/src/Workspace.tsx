import { useCallback, useEffect, useRef, useState } from "react";
import { SdqError, type Recipe } from "sdq-client";
import { useModels, useSdqClient } from "sdq-client/react";

import { fromRecipe, INITIAL_FORM, randomSeed, sizeFor, toRequest, withModel, type FormState, type InitImage, type Mode } from "./form";
import { navigate, type View } from "./router";
import { GalleryPicker } from "./components/GalleryPicker";
import { GalleryView } from "./components/GalleryView";
import { ImageDialog, type ImageActions, type ImageRef } from "./components/ImageDialog";
import { InitImagePanel, initImageFromBlob } from "./components/InitImagePanel";
import { JobCard } from "./components/JobCard";
import { MaskEditor } from "./components/MaskEditor";
import { ParamsForm } from "./components/ParamsForm";
import { QueuePanel } from "./components/QueuePanel";
import { Toasts, type Toast } from "./components/Toasts";

/**
 * Whether to offer step previews: the server takes `previews` on a job and sends live
 * `preview` events, which the job cards show while the job runs.
 */
const SERVER_PREVIEWS = true;

const TITLES: Record<Mode, string> = { txt2img: "Generate", img2img: "img2img", inpaint: "Inpaint" };

/** Everything below the header: the form and its jobs, the gallery, the queue. */
export function Workspace(props: { view: View; admin: boolean }) {
  const client = useSdqClient();
  const { models, defaultModel, error: modelsError } = useModels();
  const [form, setForm] = useState<FormState>(INITIAL_FORM);
  const [init, setInit] = useState<InitImage | null>(null);
  const [mask, setMask] = useState<string | null>(null);
  const [jobs, setJobs] = useState<string[]>([]);
  const [lastSeed, setLastSeed] = useState<number | null>(null);
  const [submitting, setSubmitting] = useState(false);
  const [submitError, setSubmitError] = useState<string | null>(null);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const [picker, setPicker] = useState(false);
  const [openImage, setOpenImage] = useState<ImageRef | null>(null);
  const toastId = useRef(0);
  const { view } = props;
  const mode: Mode | null = view === "txt2img" || view === "img2img" || view === "inpaint" ? view : null;

  const toast = useCallback((text: string, kind: Toast["kind"] = "info") => {
    const id = ++toastId.current;
    setToasts((t) => [...t.slice(-3), { id, text, kind }]);
    setTimeout(() => setToasts((t) => t.filter((x) => x.id !== id)), 6000);
  }, []);

  // The server's default model, with its defaults, until the user picks another.
  useEffect(() => {
    if (defaultModel) setForm((f) => (f.model ? f : withModel(f, defaultModel)));
  }, [defaultModel]);

  const onImage = useCallback((image: InitImage) => {
    setInit(image);
    // The size follows the start image unless the user chose one.
    setForm((f) => (f.sizeChosen ? f : { ...f, ...sizeFor(image.width, image.height) }));
  }, []);
  // A model's defaults bring its own size; with a start image, the image's size wins.
  useEffect(() => {
    if (init && mode !== "txt2img") setForm((f) => (f.sizeChosen ? f : { ...f, ...sizeFor(init.width, init.height) }));
  }, [form.model, init, mode]);
  const onError = useCallback((message: string) => toast(message, "error"), [toast]);

  const submit = () => {
    if (!mode) return;
    const seed = form.randomSeed ? randomSeed() : form.seed;
    const request = toRequest(form, mode, seed, init, mask);
    setSubmitting(true);
    setSubmitError(null);
    client.submit(request).then(
      (r) => {
        setJobs((list) => [r.id, ...list]);
        setLastSeed(seed);
        setSubmitting(false);
      },
      (e: unknown) => {
        setSubmitting(false);
        if (e instanceof SdqError) setSubmitError(e.field ? `${e.field}: ${e.message}` : e.message);
        else setSubmitError(String(e));
      },
    );
  };

  const loadRecipe = useCallback(
    (recipe: Recipe, from: string) => {
      setForm((f) => fromRecipe(f, recipe, models));
      toast(`Loaded the parameters of ${from}.`);
    },
    [models, toast],
  );

  const actions: ImageActions = {
    useParameters: (recipe) => {
      loadRecipe(recipe, "the image");
      setOpenImage(null);
      navigate("txt2img");
    },
    sendTo: (target, image) => {
      client
        .blob(image.url)
        .then((blob) => initImageFromBlob(blob, image.prompt ? `gallery: ${image.prompt}` : "gallery image", image.id))
        .then(
          (img) => {
            onImage(img);
            setOpenImage(null);
            navigate(target);
          },
          (e: Error) => toast(e.message, "error"),
        );
    },
  };

  // A PNG dropped anywhere but on the start-image area: read its parameters into the form.
  useEffect(() => {
    const onDragOver = (e: DragEvent) => {
      if (e.dataTransfer?.types.includes("Files")) e.preventDefault();
    };
    const onDrop = (e: DragEvent) => {
      const file = e.dataTransfer?.files[0];
      if (!file) return;
      e.preventDefault();
      if (file.type !== "image/png") {
        toast(`${file.name} is not a PNG: drop a PNG to read its parameters.`, "error");
        return;
      }
      client.pngInfo(file).then(
        (info) => {
          if (!info.source) {
            toast(`${file.name} has no generation parameters.`, "error");
            return;
          }
          loadRecipe(info.recipe, file.name);
          if (!mode) navigate("txt2img");
        },
        (err: Error) => toast(`Cannot read ${file.name}: ${err.message}`, "error"),
      );
    };
    window.addEventListener("dragover", onDragOver);
    window.addEventListener("drop", onDrop);
    return () => {
      window.removeEventListener("dragover", onDragOver);
      window.removeEventListener("drop", onDrop);
    };
  }, [client, loadRecipe, mode, toast]);

  const needsInit = mode === "img2img" || mode === "inpaint";
  const canSubmit =
    !submitting &&
    form.prompt.trim() !== "" &&
    models.length > 0 &&
    (!needsInit || init !== null) &&
    (mode !== "inpaint" || mask !== null);
  const blocker = !form.prompt.trim()
    ? "Write a prompt to start."
    : needsInit && !init
      ? "Choose a start image."
      : mode === "inpaint" && !mask
        ? "Paint the area to repaint."
        : null;

  return (
    <main id="main" className={`main view-${view}`}>
      {mode && (
        <div className="studio">
          <section className="studio-form" aria-labelledby="form-title">
            <h1 id="form-title">{TITLES[mode]}</h1>
            {modelsError && <p className="error-text">Models cannot be read: {modelsError.message}</p>}
            <ParamsForm
              form={form}
              setForm={setForm}
              models={models}
              lastSeed={lastSeed}
              submitLabel={submitting ? "Submitting…" : "Generate"}
              previews={SERVER_PREVIEWS}
              canSubmit={canSubmit}
              onSubmit={submit}
            >
              {needsInit && (
                <InitImagePanel
                  init={init}
                  onImage={onImage}
                  onClear={() => {
                    setInit(null);
                    setMask(null);
                  }}
                  onPickFromGallery={() => setPicker(true)}
                  strength={form.strength}
                  onStrength={(strength) => setForm((f) => ({ ...f, strength }))}
                  onError={onError}
                  showPreview={mode === "img2img"}
                />
              )}
              {mode === "inpaint" && init && <MaskEditor init={init} onMask={setMask} />}
            </ParamsForm>
            {blocker && <p className="hint">{blocker}</p>}
            {submitError && (
              <p className="error-text" role="alert">
                {submitError}
              </p>
            )}
          </section>
          <section className="studio-results" aria-labelledby="results-title">
            <h2 id="results-title">Results</h2>
            {jobs.length === 0 && <p className="empty">Jobs you submit appear here, with live progress.</p>}
            <div className="job-list">
              {jobs.map((id) => (
                <JobCard
                  key={id}
                  jobId={id}
                  onOpenImage={(imageId) => setOpenImage({ id: imageId, url: `/v1/images/${imageId}`, job_id: id })}
                  onDismiss={() => setJobs((list) => list.filter((j) => j !== id))}
                />
              ))}
            </div>
          </section>
        </div>
      )}
      {view === "gallery" && <GalleryView models={models} actions={actions} />}
      {view === "queue" && <QueuePanel showWorkers={props.admin} full />}
      {view !== "queue" && (
        <aside className="side" aria-label="Queue">
          <QueuePanel showWorkers={props.admin} />
        </aside>
      )}
      {picker && (
        <GalleryPicker
          onClose={() => setPicker(false)}
          onPick={(image) => {
            setPicker(false);
            actions.sendTo(mode === "inpaint" ? "inpaint" : "img2img", image);
          }}
        />
      )}
      {openImage && <ImageDialog image={openImage} actions={actions} onClose={() => setOpenImage(null)} />}
      <Toasts toasts={toasts} onDismiss={(id) => setToasts((t) => t.filter((x) => x.id !== id))} />
    </main>
  );
}
