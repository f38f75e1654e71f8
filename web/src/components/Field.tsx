import { cloneElement, useId, type ReactElement, type ReactNode } from "react";

/**
 * A control with its label tied by `for`/`id` (not by wrapping, which would put the
 * control's value or options into its accessible name).
 */
export function Field(props: { label: ReactNode; children: ReactElement<{ id?: string }>; inline?: boolean }) {
  const id = useId();
  return (
    <div className={props.inline ? "field inline" : "field"}>
      <label htmlFor={id}>{props.label}</label>
      {cloneElement(props.children, { id })}
    </div>
  );
}
