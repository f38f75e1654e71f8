import { useEffect, useRef, useState } from "react";

import type { InitImage } from "../form";
import { Field } from "./Field";

/** Reads an image file into a start image (data URL and natural size). */
export async function initImageFromBlob(blob: Blob, name: string, galleryId?: string): Promise<InitImage> {
  if (!blob.type.startsWith("image/")) throw new Error(`${name} is not an image`);
  const dataUrl = await new Promise<string>((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error ?? new Error("cannot read the file"));
    reader.readAsDataURL(blob);
  });
  const size = await new Promise<{ width: number; height: number }>((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
    img.onerror = () => reject(new Error(`${name} cannot be decoded as an image`));
    img.src = dataUrl;
  });
  const image: InitImage = { src: dataUrl, dataUrl, name, ...size };
  if (galleryId) image.galleryId = galleryId;
  return image;
}

/** The start image: file picker, drag and drop, paste, or the gallery; and the strength. */
export function InitImagePanel(props: {
  init: InitImage | null;
  onImage: (image: InitImage) => void;
  onClear: () => void;
  onPickFromGallery: () => void;
  strength: number;
  onStrength: (strength: number) => void;
  onError: (message: string) => void;
  /** Inpainting shows the image in the mask editor instead. */
  showPreview: boolean;
}) {
  const fileInput = useRef<HTMLInputElement>(null);
  const [over, setOver] = useState(false);
  const { onImage, onError } = props;

  const take = (blob: Blob | null | undefined, name: string) => {
    if (!blob) return;
    initImageFromBlob(blob, name).then(onImage, (e: Error) => onError(e.message));
  };

  // Pasting an image anywhere on the page sets it (unless the user is typing text).
  useEffect(() => {
    const onPaste = (e: ClipboardEvent) => {
      const item = [...(e.clipboardData?.items ?? [])].find((i) => i.type.startsWith("image/"));
      if (!item) return;
      e.preventDefault();
      const file = item.getAsFile();
      if (file) {
        initImageFromBlob(file, "pasted image").then(onImage, (err: Error) => onError(err.message));
      }
    };
    window.addEventListener("paste", onPaste);
    return () => window.removeEventListener("paste", onPaste);
  }, [onImage, onError]);

  return (
    <section className="init-image" aria-label="Start image">
      <div
        className={`dropzone ${over ? "over" : ""}`}
        data-testid="init-dropzone"
        onDragOver={(e) => {
          e.preventDefault();
          e.stopPropagation();
          setOver(true);
        }}
        onDragLeave={() => setOver(false)}
        onDrop={(e) => {
          e.preventDefault();
          e.stopPropagation();
          setOver(false);
          const file = e.dataTransfer.files[0];
          take(file, file?.name ?? "dropped image");
        }}
      >
        {props.init && props.showPreview ? (
          <img className="init-preview" src={props.init.src} alt={`Start image: ${props.init.name}`} />
        ) : (
          !props.init && <p className="hint">Drop an image here, paste one, or choose:</p>
        )}
        {props.init && (
          <p className="hint">
            {props.init.name} · {props.init.width}×{props.init.height}
          </p>
        )}
        <div className="row wrap center">
          <button type="button" onClick={() => fileInput.current?.click()}>
            Choose file…
          </button>
          <button type="button" onClick={props.onPickFromGallery}>
            From gallery…
          </button>
          {props.init && (
            <button type="button" className="ghost" onClick={props.onClear}>
              Remove
            </button>
          )}
        </div>
        <input
          ref={fileInput}
          type="file"
          accept="image/png,image/jpeg,image/webp"
          className="visually-hidden"
          aria-label="Start image file"
          tabIndex={-1}
          onChange={(e) => {
            const file = e.target.files?.[0];
            take(file, file?.name ?? "file");
            e.target.value = "";
          }}
        />
      </div>
      <Field label={<>Strength <output>{props.strength.toFixed(2)}</output></>}>
<input
          type="range"
          name="strength"
          min={0.05}
          max={1}
          step={0.05}
          value={props.strength}
          onChange={(e) => props.onStrength(Number(e.target.value))}
        />
</Field>
    </section>
  );
}
