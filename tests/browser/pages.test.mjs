// The QSA pages used as a person would: headless Chromium, driven by Playwright, against a
// running Quantus (QUANTUS_URL, with the bootstrap admin's QUANTUS_CLIENT_ID / _SECRET).
// The client application's redirect URI is a real local HTTP server, so the browser really
// follows the redirect back to it.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { chromium } from "playwright-core";

import { BASE, ADMIN_ID, ADMIN_SECRET, CHROMIUM, PASSWORD, adminToken, createPasskey } from "./kit.mjs";

let browser;
let app; // the client application's callback server
let appUrl;
const callbacks = []; // query strings the application received

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

async function post(token, path, body) {
  const r = await fetch(`${BASE}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  assert.equal(r.status, 201, JSON.stringify(json));
  return json;
}

/** An organization with a member and a confidential client redirecting to `appUrl`. */
async function world(grantTypes = ["authorization_code", "refresh_token"]) {
  const token = await adminToken();
  const org = (await post(token, "/v1/organizations", { name: `Acme ${randomUUID()}` })).id;
  const email = `ada-${randomUUID()}@example.com`;
  await post(token, "/v1/users", {
    organization_id: org,
    email,
    name: "Ada Lovelace",
    password: PASSWORD,
    roles: ["member"],
  });
  const client = await post(token, "/v1/clients", {
    organization_id: org,
    name: "Acme Console",
    kind: "confidential",
    redirect_uris: [`${appUrl}/callback`],
    grant_types: grantTypes,
    scopes: ["openid", "email", "profile", "licenses:read"],
  });
  return { org, email, client };
}

async function tokenRequest(client, form) {
  const r = await fetch(`${BASE}/oauth2/token`, {
    method: "POST",
    headers: {
      authorization:
        "Basic " + Buffer.from(`${client.client_id}:${client.client_secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams(form).toString(),
  });
  return { status: r.status, body: await r.json() };
}

function authorizeUrl(client, verifier, state) {
  const challenge = b64url(createHash("sha256").update(verifier).digest());
  const q = new URLSearchParams({
    response_type: "code",
    client_id: client.client_id,
    redirect_uri: `${appUrl}/callback`,
    scope: "openid email licenses:read",
    state,
    nonce: randomUUID(),
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  return `${BASE}/oauth2/authorize?${q}`;
}

before(async () => {
  assert.ok(BASE && ADMIN_ID && ADMIN_SECRET, "set QUANTUS_URL, QUANTUS_CLIENT_ID and QUANTUS_CLIENT_SECRET");
  app = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    callbacks.push(url.searchParams);
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>Acme Console</title><h1 id=back>Back at the application</h1>");
  });
  await new Promise((ok) => app.listen(0, "127.0.0.1", ok));
  appUrl = `http://127.0.0.1:${app.address().port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  app?.close();
});

test("a person signs in, consents, and the application gets a code it can redeem", async () => {
  const { email, client } = await world();
  const page = await (await browser.newContext()).newPage();
  const verifier = b64url(randomBytes(32));
  const state = randomUUID();
  await page.goto(authorizeUrl(client, verifier, state));
  assert.equal(await page.title(), "Sign in · Quantus");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();

  await page.waitForSelector("text=Allow access?");
  const scopes = await page.locator("#scopes li").allTextContents();
  assert.deepEqual(scopes.sort(), ["email", "licenses:read", "openid"]);
  await page.getByRole("button", { name: "Allow" }).click();

  await page.waitForURL(`${appUrl}/callback**`);
  assert.equal(await page.locator("#back").textContent(), "Back at the application");
  const params = new URL(page.url()).searchParams;
  assert.equal(params.get("state"), state);
  assert.equal(params.get("iss"), BASE);
  const { status, body } = await tokenRequest(client, {
    grant_type: "authorization_code",
    code: params.get("code"),
    redirect_uri: `${appUrl}/callback`,
    code_verifier: verifier,
  });
  assert.equal(status, 200, JSON.stringify(body));
  assert.ok(body.id_token && body.access_token && body.refresh_token);

  // Signed in already and consented: the next authorization goes straight back.
  await page.goto(authorizeUrl(client, b64url(randomBytes(32)), "again"));
  await page.waitForURL(`${appUrl}/callback**`);
  assert.ok(new URL(page.url()).searchParams.get("code"));

  // A sign-out link without an id_token_hint (any site could send one) only asks: the
  // session lives on until the person confirms.
  await page.goto(`${BASE}/oauth2/logout`);
  assert.equal(await page.title(), "Sign out? · Quantus");
  await page.goto(authorizeUrl(client, b64url(randomBytes(32)), "still-signed-in"));
  await page.waitForURL(`${appUrl}/callback**`);
  // A forged hint is refused outright.
  const forged = await page.goto(`${BASE}/oauth2/logout?id_token_hint=${body.access_token}`);
  assert.equal(forged.status(), 400);

  // Logout ends the session: the next authorization asks for the password again.
  await page.goto(`${BASE}/oauth2/logout`);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForSelector("text=You are signed out.");
  await page.goto(authorizeUrl(client, b64url(randomBytes(32)), "after-logout"));
  assert.equal(await page.title(), "Sign in · Quantus");

  // With the application's id_token_hint, sign-out needs no question (RP-Initiated Logout §2).
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${appUrl}/callback**`);
  await page.goto(`${BASE}/oauth2/logout?id_token_hint=${body.id_token}`);
  await page.waitForSelector("text=You are signed out.");
});

test("a wrong password shows one message and keeps the person on the sign-in page", async () => {
  const { email, client } = await world();
  const page = await (await browser.newContext()).newPage();
  await page.goto(authorizeUrl(client, b64url(randomBytes(32)), "s"));
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill("not the password at all");
  await page.getByRole("button", { name: "Sign in" }).click();
  const alert = page.getByRole("alert");
  await alert.waitFor();
  assert.equal(await alert.textContent(), "Wrong email or password.");
  assert.equal(await page.title(), "Sign in · Quantus");
  // The same message for an account that does not exist.
  await page.getByLabel("Email").fill(`nobody-${randomUUID()}@example.com`);
  await page.getByLabel("Password").fill("not the password at all");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").waitFor();
  assert.equal(await page.getByRole("alert").textContent(), "Wrong email or password.");
});

test("denying consent sends the person back with access_denied", async () => {
  const { email, client } = await world();
  const page = await (await browser.newContext()).newPage();
  await page.goto(authorizeUrl(client, b64url(randomBytes(32)), "deny"));
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Deny" }).click();
  await page.waitForURL(`${appUrl}/callback**`);
  const params = new URL(page.url()).searchParams;
  assert.equal(params.get("error"), "access_denied");
  assert.equal(params.get("code"), null);
});

test("a device is connected through the user-code page", async () => {
  const { email, client } = await world(["urn:ietf:params:oauth:grant-type:device_code"]);
  const r = await fetch(`${BASE}/oauth2/device_authorization`, {
    method: "POST",
    headers: {
      authorization:
        "Basic " + Buffer.from(`${client.client_id}:${client.client_secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: "scope=openid",
  });
  const device = await r.json();
  assert.equal(r.status, 200, JSON.stringify(device));
  const poll = () =>
    tokenRequest(client, {
      grant_type: "urn:ietf:params:oauth:grant-type:device_code",
      device_code: device.device_code,
    });
  assert.equal((await poll()).body.error, "authorization_pending");

  // The person types the code shown on the device into the page.
  const page = await (await browser.newContext()).newPage();
  await page.goto(device.verification_uri);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByLabel("Code shown on the device").fill(device.user_code.toLowerCase());
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForSelector("text=asks to:");
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForSelector("#done");
  assert.match(await page.locator("#done").textContent(), /Device connected/);

  await new Promise((ok) => setTimeout(ok, device.interval * 1000));
  const { status, body } = await poll();
  assert.equal(status, 200, JSON.stringify(body));
  assert.ok(body.access_token);
});

test("a person registers a passkey and then signs in with it alone", async () => {
  const { email, client } = await world();
  const context = await browser.newContext();
  const page = await context.newPage();
  // Chromium's virtual authenticator: a platform authenticator with resident keys and
  // user verification, as a phone or laptop would have.
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
    },
  });

  // Password first, to get the person's own token.
  const verifier = b64url(randomBytes(32));
  await page.goto(authorizeUrl(client, verifier, "pk"));
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${appUrl}/callback**`);
  const first = await tokenRequest(client, {
    grant_type: "authorization_code",
    code: new URL(page.url()).searchParams.get("code"),
    redirect_uri: `${appUrl}/callback`,
    code_verifier: verifier,
  });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const token = first.body.access_token;

  // Registration: the server's options, the browser's authenticator, the server's check.
  const r = await fetch(`${BASE}/v1/me/passkeys/options`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: "{}",
  });
  const { options, ceremony } = await r.json();
  assert.equal(r.status, 200);
  // Any page of Quantus's origin will do for the browser's WebAuthn call.
  await page.goto(`${BASE}/healthz`);
  const credential = await createPasskey(page, options);
  const reg = await fetch(`${BASE}/v1/me/passkeys`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ ceremony, credential, name: "virtual" }),
  });
  assert.equal(reg.status, 201, await reg.text());
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1);
  assert.equal(credentials[0].isResidentCredential, true);

  // Signed out; the sign-in page's passkey button signs in with no email and no password.
  await page.goto(`${BASE}/oauth2/logout`);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForSelector("text=You are signed out.");
  const verifier2 = b64url(randomBytes(32));
  await page.goto(authorizeUrl(client, verifier2, "passkey-only"));
  assert.equal(await page.title(), "Sign in · Quantus");
  await page.getByRole("button", { name: "Use a passkey" }).click();
  await page.waitForURL(`${appUrl}/callback**`);
  const second = await tokenRequest(client, {
    grant_type: "authorization_code",
    code: new URL(page.url()).searchParams.get("code"),
    redirect_uri: `${appUrl}/callback`,
    code_verifier: verifier2,
  });
  assert.equal(second.status, 200, JSON.stringify(second.body));
  const claims = JSON.parse(Buffer.from(second.body.id_token.split(".")[1], "base64url"));
  assert.deepEqual(claims.amr, ["hwk", "mfa"]);
  assert.equal(claims.acr, "urn:quantus:acr:phishing-resistant");
});
