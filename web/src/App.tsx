import { useCallback, useEffect, useState } from "react";
import { SdqError, type Me } from "sdq-client";
import { useSdqClient } from "sdq-client/react";

import { authEvents, storedKey, storeKey } from "./auth";
import { KeyPrompt } from "./components/KeyPrompt";
import { Workspace } from "./Workspace";
import { navigate, PATHS, useView, type View } from "./router";

const NAV: { view: View; label: string }[] = [
  { view: "txt2img", label: "Generate" },
  { view: "img2img", label: "img2img" },
  { view: "inpaint", label: "Inpaint" },
  { view: "gallery", label: "Gallery" },
  { view: "queue", label: "Queue" },
];

/** The page: header and navigation, the key prompt, and the workspace behind them. */
export function App() {
  const client = useSdqClient();
  const view = useView();
  const [me, setMe] = useState<Me | null>(null);
  const [prompt, setPrompt] = useState<string | null>(null);
  // Bumped when the key changes, so everything re-reads with it.
  const [generation, setGeneration] = useState(0);

  const readMe = useCallback(() => {
    client.me().then(
      (m) => {
        setMe(m);
        if (m.auth === "required" && !m.key) setPrompt("This server requires an API key.");
      },
      (e: unknown) => {
        if (e instanceof SdqError && e.status === 401) {
          setPrompt(storedKey() ? "The server refused the stored key. Enter another." : "This server requires an API key.");
        } else if (e instanceof SdqError && e.status === 404) {
          // A server without /v1/me has no keys.
          setMe({ auth: "off", admin: true, key: null });
        }
      },
    );
  }, [client]);

  useEffect(readMe, [readMe, generation]);
  useEffect(() => {
    const onUnauthorized = () =>
      setPrompt(storedKey() ? "The server refused the stored key. Enter another." : "This server requires an API key.");
    authEvents.addEventListener("unauthorized", onUnauthorized);
    return () => authEvents.removeEventListener("unauthorized", onUnauthorized);
  }, []);

  const admin = me?.admin ?? false;
  return (
    <div className="app">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <a
          className="brand"
          href="/"
          onClick={(e) => {
            e.preventDefault();
            navigate("txt2img");
          }}
        >
          sdq
        </a>
        <nav aria-label="Views">
          <ul className="tabs">
            {NAV.map((n) => (
              <li key={n.view}>
                <a
                  href={PATHS[n.view]}
                  aria-current={view === n.view ? "page" : undefined}
                  onClick={(e) => {
                    e.preventDefault();
                    navigate(n.view);
                  }}
                >
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        {me?.auth === "required" && (
          <button type="button" className="ghost small key-button" onClick={() => setPrompt("Change the API key.")}>
            {me.key ? `Key: ${me.key.name}` : "Enter key"}
          </button>
        )}
      </header>
      <Workspace key={generation} view={view} admin={admin} />
      {prompt !== null && (
        <KeyPrompt
          reason={prompt}
          onClose={() => setPrompt(null)}
          onSave={(key) => {
            storeKey(key);
            setPrompt(null);
            setGeneration((g) => g + 1);
          }}
        />
      )}
    </div>
  );
}
