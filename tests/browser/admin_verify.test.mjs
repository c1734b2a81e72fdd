// The event log explorer's "Verify a range", used as an operator would, in headless Chromium:
// the form prefilled with the page's window, the verification against the signed checkpoint
// with its tail not yet signed, a range the API refuses (its detail shown, the form kept),
// and the page on a narrow screen.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

import {
  BASE, ADMIN_ID, ADMIN_SECRET, QUANTUS_BIN, SCREENSHOTS, CHROMIUM,
  adminToken, api, check, signIn, platformOperator,
} from "./kit.mjs";

let browser;

before(async () => {
  assert.ok(BASE && ADMIN_ID && ADMIN_SECRET && QUANTUS_BIN && SCREENSHOTS,
    "set QUANTUS_URL, QUANTUS_CLIENT_ID, QUANTUS_CLIENT_SECRET, QUANTUS_BIN and SCREENSHOTS");
  mkdirSync(SCREENSHOTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
});

test("an operator verifies a range of the event log and sees it intact", async () => {
  const operator = await adminToken();
  await api(operator, "POST", "/organizations", { name: "Umbrella Quantum" }, 201);
  const signed = await api(operator, "POST", "/audit/checkpoints", {}, 201);
  // After the checkpoint: checked, but not yet under a signature.
  await api(operator, "POST", "/organizations", { name: "Initech" }, 201);

  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, await platformOperator(operator), "admin");
  await admin.goto(`${BASE}/admin/events`);
  const from = admin.getByLabel("From position");
  const to = admin.getByLabel("To position (included)");
  assert.equal(await from.inputValue(), "1");
  const head = Number(await to.inputValue());
  assert.ok(head > signed.tree_size, `${head} > ${signed.tree_size}`);
  await admin.getByRole("button", { name: "Verify range" }).click();
  await admin.waitForURL(`${BASE}/admin/events/verify`);
  const result = admin.getByRole("region", { name: /are intact/ });
  assert.equal(await result.getByRole("heading").textContent(), `verified Positions 1 to ${head} are intact`);
  const facts = await result.locator("dd").allTextContents();
  assert.match(facts[0], new RegExp(`^${head}, of \\d+ aggregates$`));
  assert.equal(facts[1], `holds positions 1 to ${signed.tree_size} in its tree of ${signed.tree_size} events; root ${signed.root_hash.slice(0, 16)}…, signed by key ${signed.kid}`);
  assert.match(facts[2], new RegExp(`^positions ${signed.tree_size + 1} to ${head}: `));
  assert.match(facts[3], /^\d+ ms$/);
  await check(admin, "admin-verify");

  // A range past the end of the log: the API's reason, the form as typed.
  await admin.getByLabel("To position (included)").fill(String(head + 1000));
  await admin.getByRole("button", { name: "Verify range" }).click();
  await admin.getByRole("alert").waitFor();
  assert.match(await admin.getByRole("alert").textContent(), /past the end of the log, which ends at position/);
  assert.equal(await admin.getByLabel("To position (included)").inputValue(), String(head + 1000));
  await check(admin, "admin-verify-refused");

  const narrow = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage();
  await signIn(narrow, await platformOperator(operator), "admin");
  await narrow.goto(`${BASE}/admin/events`);
  await narrow.getByLabel("From position").fill(String(signed.tree_size));
  await narrow.getByRole("button", { name: "Verify range" }).click();
  await narrow.getByRole("region", { name: /are intact/ }).waitFor();
  await check(narrow, "admin-verify-narrow");
});
