// The Portal's API clients page, used as people would: headless Chromium, driven by
// Playwright, against a running Quantus (see kit.mjs for the environment). An owner creates
// a service principal, uses its secret, makes a new one; a member and another organization's
// owner see none of it. Every new page is checked with axe-core and saved as a screenshot.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";

import {
  BASE, PASSWORD,
  adminToken, api, customerOrg, check, signIn, nav, consoleBrowser, clientCredentialsStatus,
} from "./kit.mjs";

const browser = consoleBrowser();

async function freshPage() {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  page.on("dialog", (dialog) => dialog.accept());
  return page;
}

const main = (page) => page.locator("main").textContent();

test("an owner manages the organization's API clients in the Portal; no one else sees them", async () => {
  const operator = await adminToken();
  const acme = await customerOrg(operator, "Acme Rockets");
  const owner = await freshPage();
  await signIn(owner, acme.email);
  await nav(owner, "API clients").click();
  await owner.waitForURL(`${BASE}/portal/clients`);
  assert.match(await main(owner), /No API clients yet/);
  await check(owner, "portal-clients-empty");

  // A service principal: its secret is shown once, and works.
  await owner.getByLabel("Name", { exact: true }).first().fill("Nightly export");
  await owner.getByLabel("Role").selectOption("member");
  await owner.getByRole("button", { name: "Create service principal" }).click();
  await owner.waitForSelector("#issued-secret");
  const id = (await owner.locator("#issued-id").textContent()).trim();
  const first = (await owner.locator("#issued-secret").textContent()).trim();
  await check(owner, "portal-client-secret");
  assert.equal(await clientCredentialsStatus(id, first), 200);

  await owner.getByRole("link", { name: "Back to the API clients" }).click();
  await owner.waitForURL(`${BASE}/portal/clients`);
  const row = owner.locator("tbody tr", { hasText: "Nightly export" });
  assert.match(await row.textContent(), /service principal/);
  assert.match(await row.textContent(), new RegExp(id));
  // Shown once: the list has no secret.
  assert.ok(!(await main(owner)).includes(first));
  await check(owner, "portal-clients");

  // A new secret replaces the old one at once.
  await owner.getByRole("button", { name: "New secret for Nightly export" }).click();
  await owner.waitForSelector("#issued-secret");
  const second = (await owner.locator("#issued-secret").textContent()).trim();
  assert.notEqual(second, first);
  assert.equal(await clientCredentialsStatus(id, first), 401);
  assert.equal(await clientCredentialsStatus(id, second), 200);

  // A member of Acme: no link, and the page is the API's refusal, with no client in it.
  const memberEmail = `member-${randomUUID()}@example.com`;
  await api(operator, "POST", "/users", {
    organization_id: acme.org, email: memberEmail, name: "Mo Member", password: PASSWORD, roles: ["member"],
  }, 201);
  const member = await freshPage();
  await signIn(member, memberEmail);
  assert.equal(await nav(member, "API clients").count(), 0);
  const memberCsrf = await member.locator("input[name=csrf]").first().inputValue();
  const refused = await member.goto(`${BASE}/portal/clients`);
  assert.equal(refused.status(), 403);
  assert.ok(!(await main(member)).includes("Nightly export"));
  const forged = await member.request.post(`${BASE}/portal/clients`, {
    form: { csrf: memberCsrf, kind: "service", name: "Sneaky", role: "owner" },
  });
  assert.equal(forged.status(), 403);

  // Another organization's owner: an empty list, and Acme's client cannot be rotated.
  const globex = await customerOrg(operator, "Globex");
  const other = await freshPage();
  await signIn(other, globex.email);
  await nav(other, "API clients").click();
  await other.waitForURL(`${BASE}/portal/clients`);
  assert.match(await main(other), /No API clients yet/);
  assert.ok(!(await main(other)).includes(id));
  const rotate = await other.request.post(`${BASE}/portal/clients/${id}/secret`, {
    form: { csrf: await other.locator("input[name=csrf]").first().inputValue() },
  });
  assert.ok([403, 404].includes(rotate.status()), `another organization rotated: ${rotate.status()}`);
  assert.equal(await clientCredentialsStatus(id, second), 200);
  const acmeList = await api(operator, "GET", `/clients?org=${acme.org}`, undefined, 200);
  assert.deepEqual(acmeList.items.map((c) => c.name), ["Nightly export"]);
});
