// The API reference page (/docs/api) as a developer uses it: headless Chromium, driven by
// Playwright, against a running Quantus (QUANTUS_URL). Every asset comes from the binary: the
// test fails on any request to another origin and on any Content-Security-Policy violation.
// The page is checked with axe-core and saved as a screenshot to SCREENSHOTS.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.QUANTUS_URL;
const SCREENSHOTS = process.env.SCREENSHOTS;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let browser;
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
});

test("the API reference lists every operation from the binary alone, accessibly", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const foreign = [];
  const problems = [];
  const origin = new URL(BASE).origin;
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.protocol.startsWith("http") && url.origin !== origin) foreign.push(r.url());
  });
  page.on("console", (m) => {
    if (m.type() === "error" && !/Content Security Policy.*eval/i.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
  });

  await page.goto(`${BASE}/docs/api`);
  await page.getByRole("heading", { level: 1, name: "Quantus API reference" }).waitFor();
  await page.locator(".opblock").first().waitFor({ timeout: 30_000 });
  const spec = await (await fetch(`${BASE}/openapi.json`)).json();
  const declared = Object.values(spec.paths)
    .map((item) => ["get", "put", "post", "delete", "patch"].filter((m) => item[m]).length)
    .reduce((a, b) => a + b, 0);
  await page.screenshot({ path: join(SCREENSHOTS, "api-reference.png") });
  // From 150 operations on, Swagger UI renders only those near the viewport: scroll the page
  // top to bottom, as a reader would, and collect every operation shown on the way.
  const shown = new Set();
  for (let step = 0; step < 1000; step++) {
    for (const id of await page.locator(".opblock").evaluateAll((els) => els.map((e) => e.id))) shown.add(id);
    const end = await page.evaluate(() => {
      const before = window.scrollY;
      window.scrollBy(0, window.innerHeight / 2);
      return window.scrollY === before;
    });
    if (end) break;
    await page.waitForTimeout(50);
  }
  assert.equal(shown.size, declared, [...shown].join(" "));

  // One operation found with the filter and opened, as a reader would: its parameters and
  // responses show.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.locator(".operation-filter-input").fill("audit");
  const op = page.locator(".opblock", { hasText: "/v1/audit/log/checkpoint" });
  await op.locator(".opblock-summary-control").click();
  await op.locator(".responses-wrapper").waitFor();
  assert.match(await op.innerText(), /signed note/);

  assert.deepEqual(foreign, [], "requests to other origins");
  assert.deepEqual(problems, [], "errors in the page");

  await page.evaluate(AXE);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id}: ${v.help} (${v.nodes.slice(0, 5).map((n) => n.target.join(" ")).join("; ")})`),
    [],
    "accessibility violations on the API reference",
  );
  await page.screenshot({ path: join(SCREENSHOTS, "api-reference-operation.png") });
  await page.close();
});
