import { useState } from "react";
import type { GalleryImage, Model } from "sdq-client";
import { useGallery } from "sdq-client/react";

import { GalleryGrid } from "./GalleryGrid";
import { ImageDialog, type ImageActions } from "./ImageDialog";
import { Field } from "./Field";

/** Every image, newest first, filterable by model; one opens full size with its recipe. */
export function GalleryView(props: { models: Model[]; actions: ImageActions }) {
  const [model, setModel] = useState("");
  const gallery = useGallery(model ? { model, limit: 40 } : { limit: 40 });
  const [open, setOpen] = useState<GalleryImage | null>(null);
  return (
    <section className="gallery" aria-labelledby="gallery-title">
      <div className="row wrap gallery-bar">
        <h1 id="gallery-title">Gallery</h1>
        <Field label="Model" inline>
<select name="gallery_model" value={model} onChange={(e) => setModel(e.target.value)}>
            <option value="">all models</option>
            {props.models.map((m) => (
              <option key={m.id} value={m.id}>
                {m.id}
              </option>
            ))}
          </select>
</Field>
      </div>
      {gallery.error && <p className="error-text">The gallery cannot be read: {gallery.error.message}</p>}
      {!gallery.loading && !gallery.error && gallery.images.length === 0 && (
        <p className="empty">No images yet. Generate one and it appears here.</p>
      )}
      <GalleryGrid
        images={gallery.images}
        hasMore={gallery.hasMore && !gallery.error}
        loading={gallery.loading}
        onMore={gallery.loadMore}
        onPick={setOpen}
        pickLabel={(i) => `Open ${i.prompt} (seed ${i.seed})`}
      />
      {open && (
        <ImageDialog
          image={open}
          actions={props.actions}
          onClose={() => setOpen(null)}
          onDelete={async () => {
            await gallery.remove(open.id);
            setOpen(null);
          }}
        />
      )}
    </section>
  );
}
