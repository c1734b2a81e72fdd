// The account page's passkeys and recovery codes, used as people would: headless Chromium,
// driven by Playwright, against a running Quantus (see kit.mjs for the environment). The
// passkey is made by Chromium's virtual authenticator through the page's own script, then
// signs the person in; every new page is checked with axe-core and saved as a screenshot.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BASE,
  adminToken, customerOrg, check, signIn, totp, consoleBrowser,
} from "./kit.mjs";

const browser = consoleBrowser();

const h1 = (page) => page.getByRole("heading", { level: 1 }).textContent();
const main = (page) => page.locator("main").textContent();

/** A fresh browser (its own cookies) with Chromium's virtual authenticator, as a laptop has. */
async function withAuthenticator() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("dialog", (dialog) => dialog.accept());
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });
  return { page, cdp, authenticatorId };
}

test("a person registers a passkey on the account page and signs in with it", async () => {
  const operator = await adminToken();
  const { email } = await customerOrg(operator, "Umbrella");
  const laptop = await withAuthenticator();
  const page = laptop.page;
  await signIn(page, email, "account");
  assert.match(await main(page), /Passkeys\s*0/);

  await page.getByRole("link", { name: "Add a passkey" }).click();
  await page.waitForURL(`${BASE}/account/passkeys/new`);
  assert.equal(await h1(page), "Add a passkey");
  await check(page, "account-passkey-new");
  await page.getByLabel("Name of this passkey").fill("Work laptop");
  await page.getByRole("button", { name: "Register passkey" }).click();
  await page.waitForURL(`${BASE}/account/?done=passkey-added`);
  assert.match(await page.getByRole("status").textContent(), /Your passkey was registered/);
  assert.match(await main(page), /Passkeys\s*1/);
  assert.match(await page.locator("tbody").first().textContent(), /Work laptop/);
  await check(page, "account-passkey-registered");
  // The authenticator holds it, discoverable (a sign-in needs no email).
  const { credentials } = await laptop.cdp.send("WebAuthn.getCredentials", { authenticatorId: laptop.authenticatorId });
  assert.equal(credentials.length, 1);
  assert.equal(credentials[0].isResidentCredential, true);

  // Registering again on the same authenticator is refused by the browser (QSA excludes the
  // person's passkeys): the page says so and nothing more is registered.
  await page.goto(`${BASE}/account/passkeys/new`);
  await page.getByLabel("Name of this passkey").fill("Same laptop again");
  await page.getByRole("button", { name: "Register passkey" }).click();
  await page.waitForSelector("text=No passkey was created");
  assert.equal(page.url(), `${BASE}/account/passkeys/new`);

  // Another browser with the same passkey (copied into its authenticator) and no session:
  // QSA's sign-in takes the passkey alone, which only works if QSA kept its public key.
  const other = await withAuthenticator();
  await other.cdp.send("WebAuthn.addCredential", { authenticatorId: other.authenticatorId, credential: credentials[0] });
  await other.page.goto(`${BASE}/account/`);
  assert.equal(await other.page.title(), "Sign in · Quantus");
  await other.page.getByRole("button", { name: "Use a passkey" }).click();
  await Promise.race([
    other.page.waitForURL(`${BASE}/account/`),
    other.page.waitForSelector("text=Allow access?"),
  ]);
  if (other.page.url() !== `${BASE}/account/`) {
    await other.page.getByRole("button", { name: "Allow" }).click();
    await other.page.waitForURL(`${BASE}/account/`);
  }
  assert.match(await main(other.page), /Signed in with\s*passkey/);
  assert.match(await other.page.locator("tbody").first().textContent(), /Work laptop/);
});

test("a person replaces their recovery codes on the account page and the old ones stop working", async () => {
  const operator = await adminToken();
  const { email } = await customerOrg(operator, "Cyberdyne");
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("dialog", (dialog) => dialog.accept());
  await signIn(page, email, "account");
  await page.getByRole("button", { name: "Set up an authenticator app" }).click();
  const secret = (await page.locator("#totp-secret").textContent()).trim();
  await page.getByLabel("Code from the app").fill(totp(secret));
  await page.getByRole("button", { name: "Turn on" }).click();
  assert.equal(await h1(page), "Your recovery codes");
  const first = await page.locator("#recovery-codes li").allTextContents();
  assert.equal(first.length, 10);
  await page.getByRole("link", { name: "I have kept them" }).click();
  await page.waitForURL(`${BASE}/account/`);
  // A password-only sign-in is not offered new codes (the API would refuse them).
  assert.equal(await page.getByRole("button", { name: "Get new recovery codes" }).count(), 0);
  assert.match(await main(page), /To get new recovery codes/);

  // Signed in again with a recovery code, the person gets new ones, shown once.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${BASE}/account/signed-out`);
  await page.goto(`${BASE}/account/`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill("correct horse battery staple");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByLabel(/Code from your authenticator app/).fill(first[0]);
  await page.getByRole("button", { name: "Verify" }).click();
  await page.waitForURL(`${BASE}/account/`);
  await page.getByRole("button", { name: "Get new recovery codes" }).click();
  await page.waitForSelector("#recovery-codes");
  assert.equal(await h1(page), "Your recovery codes");
  assert.match(await page.getByRole("status").textContent(), /replace the old ones/);
  const fresh = await page.locator("#recovery-codes li").allTextContents();
  assert.equal(fresh.length, 10);
  assert.ok(fresh.every((c) => !first.includes(c)), "the new codes are new");
  await check(page, "account-recovery-codes-new");
  // Shown once: the account page does not show them again.
  await page.goto(`${BASE}/account/`);
  assert.ok(!(await main(page)).includes(fresh[0]));

  // In another browser: an old code never used is refused, a new one signs in.
  const other = await (await browser.newContext()).newPage();
  await other.goto(`${BASE}/account/`);
  await other.getByLabel("Email").fill(email);
  await other.getByLabel("Password").fill("correct horse battery staple");
  await other.getByRole("button", { name: "Sign in" }).click();
  await other.getByLabel(/Code from your authenticator app/).fill(first[1]);
  await other.getByRole("button", { name: "Verify" }).click();
  await other.waitForSelector("text=not valid");
  await other.getByLabel(/Code from your authenticator app/).fill(fresh[1]);
  await other.getByRole("button", { name: "Verify" }).click();
  await Promise.race([
    other.waitForURL(`${BASE}/account/`),
    other.waitForSelector("text=Allow access?"),
  ]);
  if (other.url() !== `${BASE}/account/`) {
    await other.getByRole("button", { name: "Allow" }).click();
    await other.waitForURL(`${BASE}/account/`);
  }
  assert.match(await main(other), /two factors/);
});
