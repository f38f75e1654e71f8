import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { SdqClient } from "sdq-client";
import { SdqProvider } from "sdq-client/react";

import { App } from "./App";
import { authEvents, storedKey } from "./auth";
import "./styles.css";

const client = new SdqClient({
  apiKey: storedKey,
  onUnauthorized: () => authEvents.dispatchEvent(new Event("unauthorized")),
});

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <SdqProvider client={client}>
        <App />
      </SdqProvider>
    </StrictMode>,
  );
}
