import { useEffect, useRef, type ReactNode } from "react";

/** A modal `<dialog>`: focus moves into it, Escape closes it, the page behind is inert. */
export function Dialog(props: { title: string; onClose: () => void; children: ReactNode; className?: string; labelledBy?: string }) {
  const ref = useRef<HTMLDialogElement>(null);
  const onClose = useRef(props.onClose);
  onClose.current = props.onClose;
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (!dialog.open) dialog.showModal();
    // showModal focuses the first focusable element (the close button); a field to fill
    // in is where the user wants to be.
    dialog.querySelector<HTMLElement>(".dialog-body input:not([type=hidden]), .dialog-body textarea")?.focus();
    const close = (e: Event) => {
      e.preventDefault();
      onClose.current();
    };
    dialog.addEventListener("cancel", close);
    return () => {
      dialog.removeEventListener("cancel", close);
      if (dialog.open) dialog.close();
    };
  }, []);
  return (
    <dialog ref={ref} className={`dialog ${props.className ?? ""}`} aria-label={props.title}>
      <div className="dialog-head">
        <h2>{props.title}</h2>
        <button type="button" className="icon-button" onClick={() => props.onClose()} aria-label="Close">
          ×
        </button>
      </div>
      <div className="dialog-body">{props.children}</div>
    </dialog>
  );
}
