import { useEffect, useRef } from "react";
import type { GalleryImage } from "sdq-client";

import { Thumb } from "./Thumb";

/** Thumbnails, newest first; reaching the end loads the next page. */
export function GalleryGrid(props: {
  images: GalleryImage[];
  hasMore: boolean;
  loading: boolean;
  onMore: () => void;
  onPick: (image: GalleryImage) => void;
  pickLabel: (image: GalleryImage) => string;
}) {
  const sentinel = useRef<HTMLDivElement>(null);
  const { hasMore, loading, onMore } = props;
  useEffect(() => {
    const el = sentinel.current;
    if (!el || !hasMore) return;
    const observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting) && !loading) onMore();
      },
      { rootMargin: "400px" },
    );
    observer.observe(el);
    return () => observer.disconnect();
  }, [hasMore, loading, onMore, props.images.length]);
  return (
    <>
      <ul className="gallery-grid">
        {props.images.map((image) => (
          <li key={image.id}>
            <button
              type="button"
              className="gallery-item"
              onClick={() => props.onPick(image)}
              aria-label={props.pickLabel(image)}
              data-image-id={image.id}
            >
              <Thumb path={image.thumbnail_url} alt={image.prompt} lazy width={image.width} height={image.height} />
              <span className="gallery-caption">{image.prompt}</span>
            </button>
          </li>
        ))}
      </ul>
      <div ref={sentinel} className="gallery-end">
        {loading ? "Loading…" : hasMore ? (
          <button type="button" className="ghost" onClick={onMore}>
            Load more
          </button>
        ) : props.images.length > 0 ? (
          "That is everything."
        ) : null}
      </div>
    </>
  );
}
