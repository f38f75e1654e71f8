import type { GalleryImage } from "sdq-client";
import { useGallery } from "sdq-client/react";

import { Dialog } from "./Dialog";
import { GalleryGrid } from "./GalleryGrid";

/** Choose a gallery image as the start image. */
export function GalleryPicker(props: { onPick: (image: GalleryImage) => void; onClose: () => void }) {
  const gallery = useGallery({ limit: 40 });
  return (
    <Dialog title="Choose a start image" onClose={props.onClose} className="wide">
      {gallery.error && <p className="error-text">{gallery.error.message}</p>}
      {!gallery.loading && gallery.images.length === 0 && !gallery.error && <p className="empty">No images yet.</p>}
      <GalleryGrid
        images={gallery.images}
        hasMore={gallery.hasMore && !gallery.error}
        loading={gallery.loading}
        onMore={gallery.loadMore}
        onPick={props.onPick}
        pickLabel={(i) => `Use ${i.prompt} (seed ${i.seed}) as the start image`}
      />
    </Dialog>
  );
}
