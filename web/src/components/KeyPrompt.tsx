import { useState } from "react";

import { Dialog } from "./Dialog";
import { Field } from "./Field";

/** Asks for an API key when the server requires one or refused the one it got. */
export function KeyPrompt(props: { reason: string; onSave: (key: string) => void; onClose: () => void }) {
  const [key, setKey] = useState("");
  return (
    <Dialog title="API key" onClose={props.onClose}>
      <form
        className="stack"
        onSubmit={(e) => {
          e.preventDefault();
          if (key.trim()) props.onSave(key.trim());
        }}
      >
        <p>{props.reason}</p>
        <p className="hint">
          Create one on the server with <code>sdq keys create NAME</code>. It is kept in this browser only and sent
          in a header, never in a URL.
        </p>
        <Field label="Key">
<input
            type="password"
            name="api-key"
            autoComplete="off"
            spellCheck={false}
            placeholder="sdq_…"
            value={key}
            onChange={(e) => setKey(e.target.value)}
            autoFocus
          />
</Field>
        <div className="row end">
          <button type="submit" className="primary" disabled={!key.trim()}>
            Save key
          </button>
        </div>
      </form>
    </Dialog>
  );
}
