// The UI's few routes, on the History API (the server answers each with index.html).

import { useEffect, useState } from "react";

/** A top-level view. */
export type View = "txt2img" | "img2img" | "inpaint" | "gallery" | "queue";

/** Each view's path. */
export const PATHS: Record<View, string> = {
  txt2img: "/",
  img2img: "/img2img",
  inpaint: "/inpaint",
  gallery: "/gallery",
  queue: "/queue",
};

/** The view a path shows (unknown paths show the generate view). */
export function viewOf(path: string): View {
  const found = (Object.entries(PATHS) as [View, string][]).find(([, p]) => p === path);
  return found ? found[0] : "txt2img";
}

/** Goes to a view without reloading the page. */
export function navigate(view: View): void {
  const path = PATHS[view];
  if (window.location.pathname !== path) {
    window.history.pushState(null, "", path);
    window.dispatchEvent(new PopStateEvent("popstate"));
  }
}

/** The current view, following back and forward. */
export function useView(): View {
  const [view, setView] = useState<View>(() => viewOf(window.location.pathname));
  useEffect(() => {
    const onPop = () => setView(viewOf(window.location.pathname));
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  return view;
}
