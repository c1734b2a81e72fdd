// What the browser journeys share: the server under test (from the environment), the
// operator's API calls, signing in through QSA, and the accessibility check with its
// screenshot.

import assert from "node:assert/strict";
import { after, before } from "node:test";
import { createHmac, randomUUID } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const BASE = process.env.QUANTUS_URL;
export const ADMIN_ID = process.env.QUANTUS_CLIENT_ID;
export const ADMIN_SECRET = process.env.QUANTUS_CLIENT_SECRET;
export const QUANTUS_BIN = process.env.QUANTUS_BIN;
export const SCREENSHOTS = process.env.SCREENSHOTS;
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const PASSWORD = "correct horse battery staple";
export const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** Headless Chromium for a console suite: launched before its tests, once the environment
 *  they need is set (the Admin billing suite runs no `quantus` command, so it may go without
 *  QUANTUS_BIN), and closed after them. Each test opens its own context (its own cookies). */
export function consoleBrowser({ needsBin = true } = {}) {
  let browser;
  before(async () => {
    if (needsBin) {
      assert.ok(BASE && ADMIN_ID && ADMIN_SECRET && QUANTUS_BIN && SCREENSHOTS,
        "set QUANTUS_URL, QUANTUS_CLIENT_ID, QUANTUS_CLIENT_SECRET, QUANTUS_BIN and SCREENSHOTS");
    } else {
      assert.ok(BASE && ADMIN_ID && ADMIN_SECRET && SCREENSHOTS,
        "set QUANTUS_URL, QUANTUS_CLIENT_ID, QUANTUS_CLIENT_SECRET and SCREENSHOTS");
    }
    mkdirSync(SCREENSHOTS, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  });
  after(async () => {
    await browser?.close();
  });
  return { newContext: (options) => browser.newContext(options) };
}

/** The client credentials grant with `id` and `secret`: the token endpoint's answer. */
export function clientCredentials(id, secret) {
  return fetch(`${BASE}/oauth2/token`, {
    method: "POST",
    headers: {
      authorization: "Basic " + Buffer.from(`${id}:${secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: "grant_type=client_credentials",
  });
}

/** The token endpoint's status for the client credentials grant with `id` and `secret`. */
export async function clientCredentialsStatus(id, secret) {
  const r = await clientCredentials(id, secret);
  await r.body?.cancel();
  return r.status;
}

/** The bootstrap admin's access token. */
export async function adminToken() {
  const r = await clientCredentials(ADMIN_ID, ADMIN_SECRET);
  assert.equal(r.status, 200, await r.clone().text());
  return (await r.json()).access_token;
}

/** The operator's API calls (the setup a vendor does with curl today). */
export async function api(token, method, path, body, expected) {
  const r = await fetch(`${BASE}/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  if (expected !== undefined) assert.equal(r.status, expected, `${method} ${path}: ${JSON.stringify(json)}`);
  return json;
}

/** An organization and its owner (who may sign contracts). */
export async function customerOrg(token, name) {
  const org = (await api(token, "POST", "/organizations", { name }, 201)).id;
  const email = `owner-${randomUUID()}@example.com`;
  await api(token, "POST", "/users", {
    organization_id: org, email, name: "Ada Lovelace", password: PASSWORD, roles: ["owner"],
  }, 201);
  return { org, email };
}

/** Fails on any serious or critical accessibility violation; saves a screenshot. */
export async function check(page, name) {
  await page.evaluate(AXE);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ["violations"] }),
  );
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join("; ")})`),
    [],
    `accessibility violations on ${name} (${page.url()})`,
  );
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** Signs in to a console (the Portal unless named) through QSA's own sign-in and consent pages. */
export async function signIn(page, email, console = "portal") {
  await page.goto(`${BASE}/${console}/`);
  // No session: the console sends the browser to QSA.
  assert.equal(await page.title(), "Sign in · Quantus");
  assert.ok(page.url().startsWith(`${BASE}/oauth2/authorize?`), page.url());
  const authorize = new URL(page.url()).searchParams;
  assert.equal(authorize.get("client_id"), `quantus-console-${console}`);
  assert.equal(authorize.get("code_challenge_method"), "S256");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForSelector("text=Allow access?");
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${BASE}/${console}/`);
}

/** A person of the vendor (the platform organization) with the platform admin role. */
export async function platformOperator(token) {
  const email = `operator-${randomUUID()}@example.com`;
  await api(token, "POST", "/users", {
    organization_id: "platform", email, name: "Olga Operator", password: PASSWORD, roles: ["platform_admin"],
  }, 201);
  return email;
}

/** A link of the console's navigation. */
export function nav(page, name, console = "Customer Portal") {
  return page.getByRole("navigation", { name: console }).getByRole("link", { name, exact: true });
}

/** Polls the API until `ready` holds for its answer (read models follow the log). */
export async function until(token, path, ready, what) {
  for (let i = 0; i < 100; i++) {
    const r = await api(token, "GET", path, undefined, 200);
    if (ready(r)) return r;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.fail(`timed out waiting for ${what}`);
}

export async function download(page, link, dir) {
  const [file] = await Promise.all([page.waitForEvent("download"), link.click()]);
  const path = join(dir, file.suggestedFilename());
  await file.saveAs(path);
  return path;
}

/** The current RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret, as an app shows it. */
export function totp(secret, at = Date.now()) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "").toUpperCase()) {
    const v = alphabet.indexOf(c);
    assert.ok(v >= 0, `not base32: ${secret}`);
    bits += v.toString(2).padStart(5, "0");
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 1000 / 30)));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0xf;
  const code = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return code.toString().padStart(6, "0");
}

/** A passkey made by the browser's authenticator for the WebAuthn creation `options` the
 *  server gave (run in a page of Quantus's origin): the credential as the server reads it. */
export function createPasskey(page, options) {
  return page.evaluate(async (options) => {
    const bytes = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - (s.length % 4)) % 4)), (c) => c.charCodeAt(0)).buffer;
    const b64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    const pk = options.publicKey;
    pk.challenge = bytes(pk.challenge);
    pk.user.id = bytes(pk.user.id);
    (pk.excludeCredentials || []).forEach((c) => (c.id = bytes(c.id)));
    const c = await navigator.credentials.create({ publicKey: pk });
    return {
      id: c.id,
      rawId: b64(c.rawId),
      type: c.type,
      response: {
        attestationObject: b64(c.response.attestationObject),
        clientDataJSON: b64(c.response.clientDataJSON),
      },
    };
  }, options);
}
