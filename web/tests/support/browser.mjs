// @ts-check
// Debian's Chromium driven by playwright-core, with every page watched for what the UI
// must never do: console errors or warnings, uncaught exceptions, requests to other hosts.

import fs from "node:fs";
import path from "node:path";

import { chromium } from "playwright-core";

import { REPO } from "../../../clients/typescript/test/support/sdq-server.mjs";

/** Where screenshots go (a test artifact; CI keeps target/). */
export const ARTIFACTS = process.env.SDQ_WEB_ARTIFACTS ?? path.join(REPO, "target/web-test-artifacts");

/** Starts headless Chromium the way this machine allows (see scripts/install-web-test-deps.sh). */
export async function launch() {
  const executablePath = process.env.SDQ_CHROMIUM ?? "/usr/bin/chromium";
  if (!fs.existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: run scripts/install-web-test-deps.sh`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-default-apps",
      "--disable-extensions",
    ],
  });
}

/**
 * A fresh page on the server, and the list of problems seen on it.
 * @param {import("playwright-core").Browser} browser
 * @param {string} origin
 * @param {{ viewport?: { width: number, height: number }, colorScheme?: "light" | "dark", mobile?: boolean, allow?: RegExp[] }} [options]
 */
export async function openPage(browser, origin, options = {}) {
  const context = await browser.newContext({
    viewport: options.viewport ?? { width: 1360, height: 900 },
    colorScheme: options.colorScheme ?? "light",
    deviceScaleFactor: 1,
    ...(options.mobile ? { isMobile: true, hasTouch: true } : {}),
  });
  const page = await context.newPage();
  /** @type {string[]} */
  const problems = [];
  const allowed = (text) => (options.allow ?? []).some((r) => r.test(text));
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") {
      const text = `console.${m.type()}: ${m.text()} (${m.location().url})`;
      if (!allowed(text)) problems.push(text);
    }
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("request", (r) => {
    const url = r.url();
    if (url.startsWith("data:") || url.startsWith("blob:")) return;
    if (new URL(url).origin !== origin) problems.push(`request to another host: ${url}`);
  });
  return { context, page, problems };
}

/** Saves a screenshot as a test artifact and returns its path. */
export async function screenshot(page, name, fullPage = false) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  return file;
}
