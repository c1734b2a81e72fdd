// The QSA console (an organization's security administrators) and the write side of the
// account page, used as people would: headless Chromium, driven by Playwright, against a
// running Quantus (see kit.mjs for the environment). Every new page is checked with axe-core
// (no serious or critical violation) and saved as a screenshot to SCREENSHOTS.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes, randomUUID } from "node:crypto";

import {
  BASE, PASSWORD,
  adminToken, api, customerOrg, check, signIn, nav, until, totp, consoleBrowser, clientCredentialsStatus, createPasskey,
} from "./kit.mjs";

const browser = consoleBrowser();

/** A page in a fresh browser (its own cookies); confirmation dialogs are accepted. */
async function freshPage(width = 1280) {
  const page = await (await browser.newContext({ viewport: { width, height: 800 } })).newPage();
  page.on("dialog", (dialog) => dialog.accept());
  return page;
}

const h1 = (page) => page.getByRole("heading", { level: 1 }).textContent();
const main = (page) => page.locator("main").textContent();
const SECURITY = "Security console";

test("a security admin adds a person and an access rule needing a second factor; the person enrols an authenticator app and is stepped up at the next sign-in; another organization sees none of it", async () => {
  const operator = await adminToken();
  const initech = await customerOrg(operator, "Initech");
  const umbrella = await customerOrg(operator, "Umbrella Labs");

  // The organization's owner administers its security: the Portal links the QSA console.
  const admin = await freshPage();
  await signIn(admin, initech.email, "portal");
  const link = admin.getByRole("link", { name: "Security console" });
  assert.ok(await link.isVisible(), "the Portal offers the security console to its owner");
  await link.click();
  await admin.waitForSelector("text=Allow access?");
  assert.ok(admin.url().startsWith(`${BASE}/oauth2/authorize?`), admin.url());
  assert.equal(new URL(admin.url()).searchParams.get("client_id"), "quantus-console-qsa");
  await admin.getByRole("button", { name: "Allow" }).click();
  await admin.waitForURL(`${BASE}/qsa/`);
  assert.equal(await h1(admin), "People");
  assert.match(await main(admin), /Ada Lovelace/);
  await check(admin, "qsa-people");

  // A form posted without the session's CSRF token is refused.
  const forged = await admin.request.post(`${BASE}/qsa/people`, {
    form: { name: "Mallory", email: "mallory@example.com", role: "owner" },
  });
  assert.equal(forged.status(), 403);

  // Adds a person.
  const personEmail = `bob-${randomUUID()}@example.com`;
  await admin.getByRole("link", { name: "Add a person" }).click();
  await admin.waitForURL(`${BASE}/qsa/people/new`);
  await admin.getByLabel("Name").fill("Bob Builder");
  await admin.getByLabel(/^Email/).fill(personEmail);
  await admin.getByLabel("First password").fill(PASSWORD);
  await admin.getByLabel("Role").selectOption("member");
  await check(admin, "qsa-person-new");
  await admin.getByRole("button", { name: "Add person" }).click();
  await admin.waitForURL(/\/qsa\/people\/[0-9a-f-]+\?done=created$/);
  const person = new URL(admin.url()).pathname.split("/").pop();
  assert.match(await admin.getByRole("status").textContent(), /The person was added/);
  assert.equal(await h1(admin), "Bob Builder");
  assert.match(await admin.locator(".facts").first().textContent(), /Roles\s*member/);
  await check(admin, "qsa-person");
  // The same address twice: the API's problem detail, shown as given.
  await admin.goto(`${BASE}/qsa/people/new`);
  await admin.getByLabel("Name").fill("Bob Again");
  await admin.getByLabel(/^Email/).fill(personEmail);
  await admin.getByRole("button", { name: "Add person" }).click();
  assert.match(await admin.locator(".detail").textContent(), /already exists/);

  // The list finds him by a filter (read models follow the log).
  await until(operator, `/users?org=${initech.org}`, (r) => r.items.length === 2, "the new person in the list");
  await admin.goto(`${BASE}/qsa/?q=builder`);
  assert.deepEqual(await admin.locator("tbody tr td:first-child a").allTextContents(), ["Bob Builder"]);
  await admin.goto(`${BASE}/qsa/?status=disabled`);
  assert.match(await main(admin), /No one matches this filter/);

  // A group with him in it.
  await nav(admin, "Groups", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/groups`);
  assert.match(await main(admin), /No groups/);
  await admin.getByLabel("Name").fill("Quantum team");
  await admin.getByRole("button", { name: "Create group" }).click();
  await admin.waitForURL(/\/qsa\/groups\/[0-9a-f-]+\?done=created$/);
  const group = new URL(admin.url()).pathname.split("/").pop();
  await admin.getByLabel("Person").selectOption({ label: "Bob Builder" });
  await admin.getByRole("button", { name: "Add", exact: true }).click();
  await admin.waitForURL(`${BASE}/qsa/groups/${group}?done=added`);
  assert.match(await admin.locator("tbody").textContent(), /Bob Builder/);
  await check(admin, "qsa-group");
  await until(operator, `/groups?org=${initech.org}`, (r) => r.items.length === 1, "the group in the list");
  await nav(admin, "Groups", SECURITY).click();
  assert.match(await admin.locator("tbody").textContent(), /Quantum team\s*1/);
  await check(admin, "qsa-groups");

  // A conditional-access rule: the Portal needs a second factor.
  await nav(admin, "Access rules", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/access`);
  assert.match(await main(admin), /No rules/);
  await admin.getByLabel("Name").fill("portal-needs-mfa");
  await admin.getByLabel("Priority").fill("10");
  await admin.getByLabel("Decision").selectOption("require_mfa");
  await admin.getByLabel("Applications (client ids)").fill("quantus-console-portal");
  await admin.getByRole("button", { name: "Save rule" }).click();
  await admin.waitForURL(`${BASE}/qsa/access?done=saved`);
  assert.match(await admin.locator("tbody").textContent(), /portal-needs-mfa\s*clients quantus-console-portal\s*require a second factor/);
  await check(admin, "qsa-access");
  // A malformed rule: the API's detail.
  await admin.getByLabel("Name").fill("bad-range");
  await admin.getByLabel("From addresses (CIDR)").fill("not-a-range");
  await admin.getByRole("button", { name: "Save rule" }).click();
  assert.match(await admin.locator(".detail").textContent(), /not a CIDR range/);

  // What if Bob signs in to the Portal with his password alone? And with a second factor?
  await admin.goto(`${BASE}/qsa/people/${person}`);
  await admin.getByRole("link", { name: /How would the access rules decide/ }).click();
  await admin.getByLabel("Application (client id)").fill("quantus-console-portal");
  await admin.getByLabel("Signed in with").selectOption("password");
  await admin.getByRole("button", { name: "Evaluate" }).click();
  await admin.waitForURL(/\/qsa\/access\/what-if\?/);
  assert.match(await admin.locator(".callout").textContent(), /Decision: require mfa[\s\S]*does not go on[\s\S]*portal-needs-mfa/);
  await check(admin, "qsa-what-if");
  await admin.getByLabel("Signed in with").selectOption("mfa");
  await admin.getByRole("button", { name: "Evaluate" }).click();
  assert.match(await admin.locator(".callout").textContent(), /the sign-in goes on/);
  await admin.getByLabel("Application (client id)").fill("quantus-console-account");
  await admin.getByLabel("Signed in with").selectOption("password");
  await admin.getByRole("button", { name: "Evaluate" }).click();
  assert.match(await admin.locator(".callout").textContent(), /Decision: allow[\s\S]*no rule matched/i);

  // A service principal: its secret is shown once, works, and a rotation replaces it.
  await nav(admin, "Applications", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/clients`);
  assert.match(await main(admin), /No applications yet/);
  await check(admin, "qsa-clients");
  await admin.getByLabel("Name").last().fill("CI pipeline");
  await admin.getByLabel("Role").selectOption("member");
  await admin.getByRole("button", { name: "Create service principal" }).click();
  assert.equal(await h1(admin), "Application created");
  const spId = (await admin.locator("#issued-id").textContent()).trim();
  const spSecret = (await admin.locator("#issued-secret").textContent()).trim();
  assert.equal(await clientCredentialsStatus(spId, spSecret), 200);
  await check(admin, "qsa-secret");
  await admin.getByRole("link", { name: "Go to the application" }).click();
  await admin.waitForURL(`${BASE}/qsa/clients/${spId}`);
  assert.match(await admin.locator(".facts").textContent(), /Kind\s*service[\s\S]*Status\s*active/);
  await check(admin, "qsa-client");
  await admin.getByRole("button", { name: "Rotate secret" }).click();
  assert.equal(await h1(admin), "New secret");
  const rotated = (await admin.locator("#issued-secret").textContent()).trim();
  assert.notEqual(rotated, spSecret);
  assert.equal(await clientCredentialsStatus(spId, rotated), 200);
  assert.equal(await clientCredentialsStatus(spId, spSecret), 401);
  // A web application with its redirect URI.
  await admin.goto(`${BASE}/qsa/clients`);
  await admin.getByLabel("Name").first().fill("Intranet");
  await admin.getByLabel("Redirect URIs").fill("https://intranet.initech.example/callback");
  await admin.getByRole("button", { name: "Register application" }).click();
  assert.equal(await h1(admin), "Application created");
  const webApp = (await admin.locator("#issued-id").textContent()).trim();
  // Both are listed, each linking to its page; no secret is on the list.
  await nav(admin, "Applications", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/clients`);
  const apps = await admin.locator("table tbody").textContent();
  assert.match(apps, /CI pipeline\s*service principal\s*client credentials\s*active/);
  assert.match(apps, /Intranet\s*web application\s*authorization code, refresh token\s*active/);
  assert.ok(apps.includes(spId) && apps.includes(webApp), apps);
  assert.ok(!(await admin.content()).includes(rotated), "the secret is not on the list");
  await check(admin, "qsa-clients-list");
  await admin.getByRole("link", { name: "Intranet" }).click();
  await admin.waitForURL(`${BASE}/qsa/clients/${webApp}`);
  assert.equal(await h1(admin), "Intranet");

  // SCIM token (shown once) and a SAML service provider.
  await nav(admin, "SCIM and SAML", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/provisioning`);
  assert.match(await main(admin), /No SCIM tokens yet[\s\S]*No service providers yet/);
  await check(admin, "qsa-provisioning");
  await admin.getByLabel("Issue a token for").fill("Okta");
  await admin.getByRole("button", { name: "Issue SCIM token" }).click();
  assert.equal(await h1(admin), "SCIM token issued");
  const scimToken = (await admin.locator("#issued-secret").textContent()).trim();
  const scimId = (await admin.locator("#issued-id").textContent()).trim();
  const scim = await fetch(`${BASE}/scim/v2/Users`, { headers: { authorization: `Bearer ${scimToken}` } });
  assert.equal(scim.status, 200);
  await check(admin, "qsa-scim-token");
  // The token is listed (never its value) and revoked from its row.
  await admin.goto(`${BASE}/qsa/provisioning`);
  const scimRows = await admin.locator("#scim-h ~ .table-wrap tbody").textContent();
  assert.match(scimRows, new RegExp(`Okta\\s*\\d{4}-\\d\\d-\\d\\d [\\d:]+ UTC\\s*active\\s*${scimId}`));
  assert.ok(!(await admin.content()).includes(scimToken.split(".").pop()), "the token is not on the list");
  await admin.getByRole("button", { name: `Revoke the token for Okta (${scimId})` }).click();
  await admin.waitForURL(`${BASE}/qsa/provisioning?done=revoked`);
  assert.match(await admin.locator("#scim-h ~ .table-wrap tbody").textContent(), /Okta[\s\S]*revoked/);
  assert.equal(await admin.getByRole("button", { name: /^Revoke the token for Okta/ }).count(), 0, "a revoked token has no revoke button");
  const revoked = await fetch(`${BASE}/scim/v2/Users`, { headers: { authorization: `Bearer ${scimToken}` } });
  assert.equal(revoked.status, 401);
  await admin.getByLabel("Name", { exact: true }).fill("Expenses");
  await admin.getByLabel("Entity id").fill("https://expenses.initech.example/saml");
  await admin.getByLabel("Assertion consumer service URLs").fill("https://expenses.initech.example/saml/acs");
  await admin.getByLabel("NameID").selectOption("email_address");
  await admin.getByRole("button", { name: "Register provider" }).click();
  await admin.waitForURL(/\/qsa\/saml\/[^/?]+\?done=registered$/);
  const sp = new URL(admin.url()).pathname.split("/").pop();
  assert.match(await admin.locator(".facts").textContent(), /Entity id\s*https:\/\/expenses\.initech\.example\/saml/);
  await check(admin, "qsa-saml");
  // Another from its pasted metadata document.
  await admin.goto(`${BASE}/qsa/provisioning`);
  await admin.getByLabel("Metadata XML").fill(
    `<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://travel.initech.example/saml">` +
      `<md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">` +
      `<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://travel.initech.example/saml/acs" index="0"/>` +
      `</md:SPSSODescriptor></md:EntityDescriptor>`,
  );
  await admin.getByRole("button", { name: "Register from metadata" }).click();
  await admin.waitForURL(/\/qsa\/saml\/[^/?]+\?done=registered$/);
  const facts = await admin.locator(".facts").textContent();
  assert.match(facts, /Entity id\s*https:\/\/travel\.initech\.example\/saml/);
  assert.match(facts, /https:\/\/travel\.initech\.example\/saml\/acs/);
  await check(admin, "qsa-saml-from-metadata");
  // A document that is not SP metadata: the API's detail, shown as given.
  await admin.goto(`${BASE}/qsa/provisioning`);
  await admin.getByLabel("Metadata XML").fill("<not-metadata/>");
  await admin.getByRole("button", { name: "Register from metadata" }).click();
  assert.match(await main(admin), /metadata_xml/);
  // A second token, live: listed with its revoke button next to the revoked one.
  await nav(admin, "SCIM and SAML", SECURITY).click();
  await admin.getByLabel("Issue a token for").fill("Entra ID");
  await admin.getByRole("button", { name: "Issue SCIM token" }).click();
  const entraId = (await admin.locator("#issued-id").textContent()).trim();
  // Both providers are listed with their entity id and ACS, each linking to its page.
  await nav(admin, "SCIM and SAML", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/provisioning`);
  assert.equal(await admin.getByRole("button", { name: `Revoke the token for Entra ID (${entraId})` }).count(), 1);
  const sps = await admin.locator("#sp-list-h ~ .table-wrap tbody").textContent();
  assert.match(sps, /Expenses\s*https:\/\/expenses\.initech\.example\/saml\s*https:\/\/expenses\.initech\.example\/saml\/acs/);
  assert.match(sps, /https:\/\/travel\.initech\.example\/saml\s*https:\/\/travel\.initech\.example\/saml\/acs/);
  await check(admin, "qsa-provisioning-lists");
  await admin.getByRole("link", { name: "Expenses" }).click();
  await admin.waitForURL(`${BASE}/qsa/saml/${sp}`);

  // Bob signs in to his account (the rule names the Portal only) and sets up an app.
  const bob = await freshPage();
  await signIn(bob, personEmail, "account");
  assert.equal(await bob.getByRole("link", { name: "Security console" }).count(), 0, "a member is not offered the security console");
  await bob.getByRole("button", { name: "Set up an authenticator app" }).click();
  assert.equal(await h1(bob), "Set up an authenticator app");
  const qr = await bob.locator("img.qr").getAttribute("src");
  assert.match(qr, /^data:image\/svg\+xml;base64,/);
  const seed = (await bob.locator("#totp-secret").textContent()).trim();
  await check(bob, "account-totp");
  // A wrong code: the API's detail; the enrolment is not confirmed.
  await bob.getByLabel("Code from the app").fill(totp(seed) === "000000" ? "111111" : "000000");
  await bob.getByRole("button", { name: "Turn on" }).click();
  assert.ok(await bob.locator(".detail").isVisible());
  // Starting again makes a new secret (the unconfirmed one is replaced).
  await bob.goto(`${BASE}/account/`);
  await bob.getByRole("button", { name: "Set up an authenticator app" }).click();
  const secret = (await bob.locator("#totp-secret").textContent()).trim();
  assert.notEqual(secret, seed);
  await bob.getByLabel("Code from the app").fill(totp(secret));
  await bob.getByRole("button", { name: "Turn on" }).click();
  assert.equal(await h1(bob), "Your recovery codes");
  const codes = await bob.locator("#recovery-codes li").allTextContents();
  assert.equal(codes.length, 10);
  await check(bob, "account-recovery-codes");
  await bob.getByRole("link", { name: "I have kept them" }).click();
  await bob.waitForURL(`${BASE}/account/`);
  assert.match(await main(bob), /Authenticator app\s*set up/);
  // His sign-in used a password alone: removing the app needs a second factor first.
  assert.match(await main(bob), /sign in again with it/);
  await check(bob, "account-totp-set-up");

  // The Portal: QSA's session is a password's; the rule steps him up with a second factor.
  await bob.goto(`${BASE}/portal/`);
  await bob.waitForSelector("text=Code from your authenticator app, or a recovery code");
  assert.ok(bob.url().startsWith(`${BASE}/oauth2/`), bob.url());
  await bob.getByLabel(/Code from your authenticator app/).fill(codes[0]);
  await bob.getByRole("button", { name: "Verify" }).click();
  await bob.waitForSelector("text=Allow access?");
  await bob.getByRole("button", { name: "Allow" }).click();
  await bob.waitForURL(`${BASE}/portal/`);
  assert.match(await h1(bob), /Initech/);

  // He changes his password on the account page.
  await bob.goto(`${BASE}/account/password`);
  await bob.getByLabel("New password", { exact: true }).fill("a brand new passphrase for bob");
  await bob.getByLabel("The new password again").fill("a different passphrase entirely");
  await check(bob, "account-password");
  await bob.getByRole("button", { name: "Change password" }).click();
  assert.match(await bob.locator(".detail").textContent(), /the two passwords differ/);
  await bob.goto(`${BASE}/account/password`);
  await bob.getByLabel("New password", { exact: true }).fill("a brand new passphrase for bob");
  await bob.getByLabel("The new password again").fill("a brand new passphrase for bob");
  await bob.getByRole("button", { name: "Change password" }).click();
  await bob.waitForURL(`${BASE}/account/?done=password`);
  assert.match(await bob.getByRole("status").textContent(), /Your password was changed/);

  // Removing the app needs a sign-in that used it: he signs out and in again (QSA asks for
  // the second factor now that he has one), then removes it.
  await bob.getByRole("button", { name: "Sign out" }).click();
  await bob.waitForURL(`${BASE}/account/signed-out`);
  await bob.goto(`${BASE}/account/`);
  await bob.getByLabel("Email").fill(personEmail);
  await bob.getByLabel("Password").fill("a brand new passphrase for bob");
  await bob.getByRole("button", { name: "Sign in" }).click();
  await bob.getByLabel(/Code from your authenticator app/).fill(codes[1]);
  await bob.getByRole("button", { name: "Verify" }).click();
  await bob.waitForURL(`${BASE}/account/`);
  assert.match(await main(bob), /Signed in with\s*password \+ authenticator app code \+ two factors|Signed in with[^\n]*two factors/);
  await bob.getByRole("button", { name: "Remove authenticator app" }).click();
  await bob.waitForURL(`${BASE}/account/?done=totp-removed`);
  assert.match(await main(bob), /Authenticator app\s*not set up/);
  // His sessions: this browser's, and the one his step-up left behind (a second factor
  // starts a session of its own; the one signed out of is gone).
  assert.equal(await bob.locator("#sessions-h + .table-wrap tbody tr").count(), 2);
  assert.equal(await bob.getByText("this browser").count(), 1);
  await check(bob, "account-sessions");
  // He ends the one left behind.
  await bob.getByRole("button", { name: /^End the session signed in/ }).click();
  await bob.waitForURL(`${BASE}/account/?done=session-ended`);
  assert.equal(await bob.locator("#sessions-h + .table-wrap tbody tr").count(), 1);
  assert.equal(await bob.getByText("this browser").count(), 1);

  // The audit trail shows the step-up: the decision, then the sign-in with two factors.
  await nav(admin, "Sign-in audit", SECURITY).click();
  await admin.waitForURL(`${BASE}/qsa/audit`);
  await admin.getByLabel("Person").selectOption({ label: "Bob Builder" });
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(/\/qsa\/audit\?.*user_id=/);
  const trail = await admin.locator("tbody").textContent();
  assert.match(trail, /Signed in[\s\S]*Bob Builder/);
  assert.match(trail, /Access require mfa at authorize[\s\S]*quantus-console-portal[\s\S]*not granted · rule portal-needs-mfa/);
  assert.match(trail, /pwd \+ otp \+ mfa|mfa/);
  await check(admin, "qsa-audit");
  // By time: a range ending before any of it shows nothing; one around now shows it again.
  await admin.getByLabel("Before (UTC)").fill("2001-01-01T00:00:00");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(/\/qsa\/audit\?.*to=2001/);
  assert.match(await main(admin), /Nothing matching/);
  const soon = new Date(Date.now() + 60_000).toISOString().slice(0, 19);
  await admin.getByLabel("From (UTC)").fill(new Date(Date.now() - 600_000).toISOString().slice(0, 19));
  await admin.getByLabel("Before (UTC)").fill(soon);
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(new RegExp(`to=${encodeURIComponent(soon)}`));
  assert.match(await admin.locator("tbody").textContent(), /Access require mfa at authorize[\s\S]*Bob Builder/);
  await check(admin, "qsa-audit-by-time");

  // Resetting a second factor he no longer has: the API's detail, shown as given. The
  // administrator disables and enables him.
  await admin.goto(`${BASE}/qsa/people/${person}`);
  await admin.getByRole("button", { name: "Reset second factor" }).click();
  assert.match(await admin.locator(".detail").textContent(), /no authenticator app is enrolled/);
  await admin.goto(`${BASE}/qsa/people/${person}`);
  await admin.getByRole("button", { name: "Disable" }).click();
  await admin.waitForURL(`${BASE}/qsa/people/${person}?done=disable`);
  assert.match(await admin.locator(".facts").first().textContent(), /Status\s*disabled/);
  await admin.getByRole("button", { name: "Enable" }).click();
  await admin.waitForURL(`${BASE}/qsa/people/${person}?done=enable`);
  assert.match(await admin.locator(".facts").first().textContent(), /Status\s*active/);
  // Roles: granted, then revoked after a confirmation.
  await admin.getByLabel("Grant a role").selectOption("auditor");
  await admin.getByRole("button", { name: "Grant", exact: true }).click();
  await admin.waitForURL(`${BASE}/qsa/people/${person}?done=grant-role`);
  assert.match(await admin.locator(".facts").first().textContent(), /Roles\s*auditor, member/);
  await admin.getByRole("button", { name: "Revoke role auditor" }).click();
  await admin.waitForURL(`${BASE}/qsa/people/${person}?done=revoke-role`);
  assert.match(await admin.locator(".facts").first().textContent(), /Roles\s*member\s/);
  // His live session, ended by the administrator: his pages ask him to sign in again.
  assert.match(await admin.locator("#sessions-h + .table-wrap").textContent(), /password \+ authenticator app code/);
  await check(admin, "qsa-person-sessions");
  for (const left of [0]) {
    await admin.getByRole("button", { name: /^End the session signed in/ }).first().click();
    await admin.waitForURL(`${BASE}/qsa/people/${person}?done=session-ended`);
    assert.equal(await admin.locator("#sessions-h + .table-wrap tbody tr").count(), left);
  }
  assert.match(await main(admin), /No live session/);
  await bob.goto(`${BASE}/account/`);
  assert.equal(await bob.title(), "Sign in · Quantus");

  // Umbrella's owner, in their own security console, sees none of Initech's.
  const other = await freshPage();
  await signIn(other, umbrella.email, "qsa");
  assert.doesNotMatch(await main(other), /Bob Builder/);
  for (const path of [`/qsa/people/${person}`, `/qsa/groups/${group}`, `/qsa/clients/${spId}`, `/qsa/clients/${webApp}`, `/qsa/saml/${sp}`]) {
    const r = await other.goto(`${BASE}${path}`);
    assert.equal(r.status(), 404, path);
    assert.doesNotMatch(await main(other), /Bob Builder|CI pipeline|Intranet|Expenses|Quantum team/);
  }
  await check(other, "qsa-other-organization-404");
  await nav(other, "Access rules", SECURITY).click();
  assert.match(await main(other), /No rules/);
  assert.doesNotMatch(await main(other), /portal-needs-mfa/);
  await nav(other, "Groups", SECURITY).click();
  assert.match(await main(other), /No groups/);
  await nav(other, "Applications", SECURITY).click();
  assert.match(await main(other), /No applications yet/);
  assert.doesNotMatch(await main(other), /CI pipeline|Intranet/);
  await nav(other, "SCIM and SAML", SECURITY).click();
  assert.match(await main(other), /No SCIM tokens yet[\s\S]*No service providers yet/);
  assert.doesNotMatch(await main(other), /Okta|Expenses|initech/);
  await nav(other, "Sign-in audit", SECURITY).click();
  assert.doesNotMatch(await main(other), /Bob Builder|portal-needs-mfa/);
  // Initech's rule cannot be deleted from there either (the API's 404).
  const csrf = await other.locator("input[name=csrf]").first().inputValue();
  const cross = await other.request.post(`${BASE}/qsa/access/rules/portal-needs-mfa/delete`, { form: { csrf } });
  assert.ok(cross.status() >= 400, `${cross.status()}`);
  const rules = await api(operator, "GET", `/access-policies/${initech.org}`, undefined, 200);
  assert.deepEqual(rules.rules.map((r) => r.name), ["portal-needs-mfa"]);

  // A narrow screen: the list becomes cards.
  const narrow = await freshPage(390);
  // (She consented to the console before: QSA asks for her password only.)
  await narrow.goto(`${BASE}/qsa/`);
  await narrow.getByLabel("Email").fill(initech.email);
  await narrow.getByLabel("Password").fill(PASSWORD);
  await narrow.getByRole("button", { name: "Sign in" }).click();
  await narrow.waitForURL(`${BASE}/qsa/`);
  await check(narrow, "qsa-people-narrow");

  // Deleting the rule; erasing Bob after typing his email.
  await nav(admin, "Access rules", SECURITY).click();
  await admin.getByRole("button", { name: "Delete rule portal-needs-mfa" }).click();
  await admin.waitForURL(`${BASE}/qsa/access?done=deleted`);
  assert.match(await main(admin), /No rules/);
  await admin.goto(`${BASE}/qsa/people/${person}`);
  await admin.getByRole("link", { name: "Erase…" }).click();
  await admin.waitForURL(`${BASE}/qsa/people/${person}/erase`);
  await check(admin, "qsa-erase");
  await admin.getByLabel(/^Type/).fill("someone-else@example.com");
  await admin.getByRole("button", { name: "Erase for good" }).click();
  assert.match(await admin.locator(".detail").textContent(), /does not match/);
  assert.equal((await api(operator, "GET", `/users/${person}`, undefined, 200)).status, "active");
  await admin.goto(`${BASE}/qsa/people/${person}/erase`);
  await admin.getByLabel(/^Type/).fill(personEmail);
  await admin.getByRole("button", { name: "Erase for good" }).click();
  await admin.waitForURL(`${BASE}/qsa/?done=erased`);
  const erased = await api(operator, "GET", `/users/${person}`, undefined, 200);
  assert.equal(erased.status, "erased");
  assert.equal(erased.email, null);
});

test("a person removes a passkey on the account page", async () => {
  const operator = await adminToken();
  const hooli = await customerOrg(operator, "Hooli");
  // An application of the organization, for a token of the person's own (passkeys are
  // registered with the person's token; the consoles keep theirs on the server).
  const client = await api(operator, "POST", "/clients", {
    organization_id: hooli.org, name: "Passkey setup", kind: "confidential",
    redirect_uris: [`${BASE}/healthz`], grant_types: ["authorization_code"], scopes: ["openid"],
  }, 201);
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("dialog", (dialog) => dialog.accept());
  // Chromium's virtual authenticator, as a laptop would have.
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: { protocol: "ctap2", transport: "internal", hasResidentKey: true, hasUserVerification: true, isUserVerified: true },
  });
  const verifier = randomBytes(32).toString("base64url");
  await page.goto(`${BASE}/oauth2/authorize?${new URLSearchParams({
    response_type: "code", client_id: client.client_id, redirect_uri: `${BASE}/healthz`, scope: "openid",
    state: "passkey", nonce: randomUUID(), code_challenge_method: "S256",
    code_challenge: createHash("sha256").update(verifier).digest("base64url"),
  })}`);
  await page.getByLabel("Email").fill(hooli.email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${BASE}/healthz?**`);
  const r = await fetch(`${BASE}/oauth2/token`, {
    method: "POST",
    headers: {
      authorization: "Basic " + Buffer.from(`${client.client_id}:${client.client_secret}`).toString("base64"),
      "content-type": "application/x-www-form-urlencoded",
    },
    body: new URLSearchParams({
      grant_type: "authorization_code", code: new URL(page.url()).searchParams.get("code"),
      redirect_uri: `${BASE}/healthz`, code_verifier: verifier,
    }).toString(),
  });
  assert.equal(r.status, 200);
  const token = (await r.json()).access_token;
  const { options, ceremony } = await api(token, "POST", "/me/passkeys/options", {}, 200);
  const credential = await createPasskey(page, options);
  await api(token, "POST", "/me/passkeys", { ceremony, credential, name: "Laptop" }, 201);

  // The account page lists it; removing it asks once, then it is gone at the API too.
  await page.goto(`${BASE}/account/`);
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${BASE}/account/`);
  assert.match(await main(page), /Passkeys\s*1/);
  assert.match(await page.locator("tbody").first().textContent(), /Laptop/);
  await check(page, "account-passkeys");
  await page.getByRole("button", { name: "Remove passkey Laptop" }).click();
  await page.waitForURL(`${BASE}/account/?done=passkey-removed`);
  assert.match(await page.getByRole("status").textContent(), /The passkey was removed/);
  assert.match(await main(page), /Passkeys\s*0/);
  assert.deepEqual((await api(token, "GET", "/me/passkeys", undefined, 200)).items, []);
});
