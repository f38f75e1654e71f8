import { useImageSrc } from "sdq-client/react";

/** An image from the server, fetched with the key when there is one. */
export function Thumb(props: { path: string; alt: string; className?: string; width?: number; height?: number; lazy?: boolean }) {
  const src = useImageSrc(props.path);
  if (!src) return <span className={`thumb-placeholder ${props.className ?? ""}`} role="img" aria-label={props.alt} />;
  return (
    <img
      src={src}
      alt={props.alt}
      className={props.className}
      width={props.width}
      height={props.height}
      loading={props.lazy ? "lazy" : undefined}
      decoding="async"
    />
  );
}
