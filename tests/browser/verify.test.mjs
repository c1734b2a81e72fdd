// The public verify page (/verify) as an auditor uses it: headless Chromium, driven by
// Playwright, against a running Quantus (QUANTUS_URL). VERIFY_DIR holds the files to check and
// cases.json, what `quantus license verify` (with the platform's CRL, or a forged one) /
// `quantus evidence verify` answered for each: the page must answer the same, without sending
// the file anywhere (every request is recorded).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { BASE, CHROMIUM, check } from "./kit.mjs";

const DIR = process.env.VERIFY_DIR;
const cases = JSON.parse(readFileSync(join(DIR, "cases.json"), "utf8"));
const SHOTS = {
  "licence.json": "verify-licence-valid",
  "licence-tampered.json": "verify-licence-tampered",
  "licence-compromised-key.json": "verify-licence-compromised-key",
  "evidence.tar": "verify-evidence-valid",
  "evidence-tampered.tar": "verify-evidence-tampered",
  "licence-revoked.json": "verify-licence-revoked",
  "licence-revoked.json with crl-tampered.json": "verify-crl-tampered",
};

let browser;
const pageErrors = [];
before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});
after(async () => {
  await browser?.close();
});

/** The verdict the page shows for the file `name`, one line per entry, once it is checked. */
async function verdict(page, name) {
  await page.waitForFunction((name) => {
    const v = document.getElementById("verdict");
    const done = v.classList.contains("valid") || v.classList.contains("invalid");
    return done && document.getElementById("result-name").textContent === name;
  }, name, { timeout: 30000 }).catch(async (e) => {
    // What the page shows instead, and what went wrong in it.
    const shown = await page.locator("main").innerText();
    throw new Error(`${e.message}\n${name}: the page shows\n${shown}\nerrors: ${pageErrors.join("\n")}`);
  });
  return page.locator("#verdict .line").allInnerTexts();
}

test("the verify page agrees with the command line on valid and tampered files, uploading nothing", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const origin = new URL(BASE).origin;
  const requests = [];
  const problems = [];
  page.on("request", (r) => requests.push({ method: r.method(), url: r.url(), body: r.postDataBuffer() }));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => pageErrors.push(`console ${m.type()}: ${m.text()}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
  });

  // Linked from the sign-in page, for auditors who have no account.
  const signIn = await browser.newPage();
  await signIn.goto(`${BASE}/portal/`);
  assert.equal(await signIn.title(), "Sign in · Quantus");
  await signIn.getByRole("link", { name: "Verify a licence file or evidence archive" }).click();
  await signIn.waitForURL(`${BASE}/verify`);
  await signIn.close();

  await page.goto(`${BASE}/verify`);
  await page.getByRole("heading", { level: 1, name: "Verify a licence or an evidence archive" }).waitFor();
  await page.getByText(/Using the published key set of this platform \(\d+ keys\)/).waitFor();
  await check(page, "verify");

  // Keyboard: the file input is reached with Tab (the drop zone is an extra, not the only way).
  await page.keyboard.press("Tab");
  let focused = "";
  for (let i = 0; i < 20 && focused !== "file"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.id);
  }
  assert.equal(focused, "file", "the file input is not reachable with the keyboard");

  const input = page.getByLabel("Licence file (.json) or evidence archive (.tar)");
  for (const c of cases) {
    // The page reads the platform's CRL; a forged one is put in its place where the CLI had it.
    await page.unrouteAll();
    if (c.crl === "crl-tampered.json") {
      const forged = readFileSync(join(DIR, c.crl));
      await page.route("**/verify/crl", (route) => route.fulfill({ status: 200, contentType: "application/json", body: forged }));
    }
    await page.evaluate(() => document.getElementById("verdict").removeAttribute("class"));
    // Emptied first: choosing the same file again (another CRL) would not be a change.
    await input.setInputFiles([]);
    await input.setInputFiles(join(DIR, c.file));
    const lines = await verdict(page, c.file);
    const cli = c.cli.trim().split("\n");
    // The verdict line is the command line's, word for word.
    assert.equal(lines[0], cli[0], `${c.file}: the page and the CLI disagree`);
    if (cli[0].startsWith("valid: evidence")) {
      // Same report, but for where the keys came from (the published set, the CLI's --keys).
      // The job state's header says what each checked (the CLI derives the summary again).
      const same = (l) => !l.startsWith("signed by") && !l.startsWith("job state as of");
      const trimmed = (ls) => ls.filter(same).map((l) => l.trim());
      assert.deepEqual(trimmed(lines), trimmed(cli), c.file);
      assert.match(lines.join("\n"), /job state as of position \d+ .*events proven in the log/);
      assert.match(lines.join("\n"), /artifact counts\.bin: verified/);
    }
    if (c.file === "licence-tampered.json") {
      // The table names the signature that failed, per algorithm of the composite.
      const failed = await page.locator("#checks tr", { has: page.locator(".s-failed-check") }).allInnerTexts();
      assert.ok(failed.some((r) => /ML-DSA-65-Ed25519 signature by [0-9a-f]{32}/.test(r)), failed.join("\n"));
      assert.ok(failed.some((r) => /ML-DSA-65 part of the ML-DSA-65-Ed25519 signature/.test(r)), failed.join("\n"));
    }
    if (c.file === "licence-compromised-key.json") assert.match(lines[0], /is compromised since/);
    if (c.file === "evidence-tampered.tar") {
      const failed = await page.locator("#checks tr", { has: page.locator(".s-failed-check") }).allInnerTexts();
      assert.ok(failed.some((r) => r.startsWith("Artifact counts.bin")), failed.join("\n"));
    }
    if (c.kind === "license" && cli[0].startsWith("valid:")) {
      const row = await page.locator("#checks tr", { hasText: /^Revocation list/ }).innerText();
      assert.match(row, /passed\s+not named in the CRL of/, row);
    }
    if (c.file === "licence-revoked.json") {
      const row = await page.locator("#checks tr", { hasText: /^Revocation list/ }).innerText();
      if (c.crl === "crl.json") {
        assert.match(row, /failed\s+revoked \(named in the CRL of \d{4}-\d\d-\d\dT/, row);
      } else {
        // The forged list (it no longer names the licence) is refused, not believed.
        assert.match(row, /failed\s+the published CRL is not trusted: bad signature by/, row);
      }
    }
    await check(page, SHOTS[c.crl === "crl-tampered.json" ? `${c.file} with ${c.crl}` : c.file]);
  }
  await page.unrouteAll();

  // Dropping a file works as choosing it.
  const licence = readFileSync(join(DIR, "licence.json")).toString("base64");
  await page.evaluate(() => document.getElementById("verdict").removeAttribute("class"));
  const transfer = await page.evaluateHandle((b64) => {
    const t = new DataTransfer();
    t.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "dropped.json"));
    return t;
  }, licence);
  await page.dispatchEvent("#dropzone", "drop", { dataTransfer: transfer });
  assert.equal((await verdict(page, "dropped.json"))[0], cases[0].cli.trim().split("\n")[0]);

  // An auditor's own key set file: the same answer, now "checked with the given key set".
  await page.getByLabel(/Use a key set file instead/).setInputFiles(join(DIR, "keys.json"));
  await page.getByText("Using the key set file keys.json").waitFor();
  await page.evaluate(() => document.getElementById("verdict").removeAttribute("class"));
  await input.setInputFiles(join(DIR, "evidence.tar"));
  const sameWithKeys = (l) => !l.startsWith("job state as of");
  assert.deepEqual(
    (await verdict(page, "evidence.tar")).filter(sameWithKeys).map((l) => l.trim()),
    cases[3].cli.trim().split("\n").filter(sameWithKeys).map((l) => l.trim()),
  );

  // A narrow screen: nothing wider than the viewport.
  await page.setViewportSize({ width: 375, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page overflows a narrow screen by ${overflow}px`);
  await check(page, "verify-narrow");

  // Nothing uploaded: only GETs to this origin, none with a body.
  for (const r of requests) {
    assert.equal(new URL(r.url).origin, origin, r.url);
    assert.equal(r.method, "GET", `${r.method} ${r.url}`);
    assert.equal(r.body, null, `a request carried a body: ${r.url}`);
  }
  assert.ok(requests.some((r) => r.url.endsWith("/verify/keys.json")), "the published key set was not read");
  assert.ok(requests.some((r) => r.url.endsWith("/verify/crl")), "the published CRL was not read");
  assert.deepEqual(problems, [], "errors in the page");
  await page.close();
});
