// The Admin console's "show this organization as of ..." used as an operator would, in headless
// Chromium: from a customer's page, the organization before and after a change (a person
// added to a group, a licence issued, an access rule set); from the event explorer, the
// organization right after one event; before the organization existed (every empty state);
// and a moment the API refuses, with its detail.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BASE, PASSWORD,
  adminToken, api, customerOrg, check, signIn, platformOperator, consoleBrowser,
} from "./kit.mjs";

const browser = consoleBrowser();

/** The form's moment (UTC, whole seconds) once a second has passed, and after another one:
 *  everything before the call is before it, everything after the call is after it. */
async function aMoment() {
  const pause = () => new Promise((ok) => setTimeout(ok, 1100));
  await pause();
  const at = new Date().toISOString().slice(0, 19).replace("T", " ");
  await pause();
  return at;
}

/** The first column of a section's table ("People", "Groups", ...). */
async function column(page, section, n = 1) {
  return page.getByRole("table", { name: section }).locator(`tbody tr td:nth-child(${n})`).allTextContents();
}

async function showAsOf(page, at) {
  await page.getByLabel("Date and time (UTC)").fill(at);
  await page.getByRole("button", { name: "Show" }).click();
  await page.waitForURL(/\/as-of\?at=/);
}

test("an operator sees an organization before and after a change, from its customer page and from the event log", async () => {
  const operator = await adminToken();
  const umbrella = await customerOrg(operator, "Umbrella Quantum");
  const org = umbrella.org;
  await api(operator, "POST", "/customers", {
    organization_id: org, name: "Umbrella Quantum Ltd", billing_email: "billing@umbrella.example", currency: "GBP",
  }, 201);
  const beforeChange = await aMoment();

  // The change: a person joins, is put in a group; a licence is issued; an access rule set.
  const grace = (await api(operator, "POST", "/users", {
    organization_id: org, email: "grace@umbrella.example", name: "Grace Hopper", password: PASSWORD, roles: ["member"],
  }, 201)).id;
  const group = (await api(operator, "POST", "/groups", { organization_id: org, name: "Quantum team" }, 201)).id;
  await api(operator, "POST", `/groups/${group}/members`, { user_id: grace });
  await api(operator, "POST", "/licenses", {
    organization_id: org, product: "qpu", edition: "pro", expires_at: "2099-01-01T00:00:00Z", max_activations: 2,
  }, 201);
  const rule = await api(operator, "PUT", `/access-policies/${org}/rules/outside-office`, {
    priority: 10, conditions: { ip_not_in: ["10.0.0.0/8"] }, outcome: "require_mfa",
  }, 200);
  const afterChange = await aMoment();

  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, await platformOperator(operator), "admin");
  await admin.goto(`${BASE}/admin/customers/${org}`);
  await admin.getByRole("link", { name: "Show this organization as of a moment" }).click();
  await admin.waitForURL(`${BASE}/admin/organizations/${org}/as-of`);
  assert.equal(await admin.getByRole("heading", { level: 1 }).textContent(), "Umbrella Quantum as of a moment");

  // Before the change: the owner alone, no group, licence or rule.
  await showAsOf(admin, beforeChange);
  const moment = admin.getByRole("definition").first();
  assert.equal(await moment.textContent(), `${beforeChange} UTC`);
  assert.deepEqual(await column(admin, "People"), ["Ada Lovelace"]);
  assert.deepEqual(await column(admin, "People", 4), ["owner"]);
  for (const empty of ["No groups then.", "No licences then.", "No contracts then.", "No access rules then."]) {
    assert.equal(await admin.getByText(empty).count(), 1, empty);
  }
  const positionBefore = Number(await admin.locator("dl.facts dd").nth(1).evaluate((d) => d.firstChild.textContent));
  await check(admin, "admin-as-of-before");

  // After it: Grace in the group, the licence active, the rule; a later position.
  await showAsOf(admin, afterChange);
  assert.deepEqual((await column(admin, "People")).sort(), ["Ada Lovelace", "Grace Hopper"]);
  assert.deepEqual(await column(admin, "Groups", 2), ["Grace Hopper"]);
  assert.deepEqual(await column(admin, "Licences", 2), ["active"]);
  assert.deepEqual(await column(admin, "Access rules", 2), ["outside-office"]);
  assert.deepEqual(await column(admin, "Access rules", 3), ["ip not in 10.0.0.0/8"]);
  assert.deepEqual(await column(admin, "Access rules", 4), ["require mfa"]);
  const positionAfter = Number(await admin.locator("dl.facts dd").nth(1).evaluate((d) => d.firstChild.textContent));
  assert.ok(positionAfter >= rule.position && rule.position > positionBefore, `${positionBefore} < ${rule.position} <= ${positionAfter}`);
  // The licence links to its page today.
  assert.equal(await admin.getByRole("link", { name: /Licence today/ }).count(), 1);
  await check(admin, "admin-as-of");
  const narrow = await (await browser.newContext({ viewport: { width: 390, height: 844 } })).newPage();
  await signIn(narrow, await platformOperator(operator), "admin");
  await narrow.goto(admin.url());
  await narrow.getByRole("table", { name: "People" }).waitFor();
  await check(narrow, "admin-as-of-narrow");

  // From the event explorer: the organization right after the rule was set.
  await admin.goto(`${BASE}/admin/events?tenant=${org}&event_type=AccessRuleSet&from=${beforeChange.replace(" ", "T")}`);
  await check(admin, "admin-events-organization");
  await admin.getByRole("link", { name: /^as of here/ }).first().click();
  await admin.waitForURL(`${BASE}/admin/organizations/${org}/as-of?position=${rule.position}`);
  assert.match(await admin.getByRole("definition").first().textContent(), new RegExp(`^log position ${rule.position}, appended `));
  assert.deepEqual(await column(admin, "Access rules", 2), ["outside-office"]);
  // The form holds that moment, to move on from it.
  assert.match(await admin.getByLabel("Date and time (UTC)").inputValue(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  await admin.goto(`${BASE}/admin/events?tenant=${org}`);
  await admin.getByRole("link", { name: "Show this organization as of a moment" }).click();
  await admin.waitForURL(`${BASE}/admin/organizations/${org}/as-of`);

  // Before the organization existed: every section empty.
  await showAsOf(admin, "2001-01-01 00:00");
  assert.equal(await admin.getByRole("definition").first().textContent(), "2001-01-01 00:00:00 UTC");
  assert.equal(await admin.getByLabel("Date and time (UTC)").inputValue(), "2001-01-01 00:00:00");
  for (const empty of ["No people then.", "No groups then.", "No licences then.", "No contracts then.",
    "No entitlements then: no contract was in force.", "No access rules then."]) {
    assert.equal(await admin.getByText(empty).count(), 1, empty);
  }
  await check(admin, "admin-as-of-empty");

  // A moment the API refuses: its detail, on the form.
  const refused = await admin.goto(`${BASE}/admin/organizations/${org}/as-of?at=yesterday`);
  assert.equal(refused.status(), 400);
  assert.match(await admin.getByRole("alert").textContent(),
    /That moment cannot be shown: as_of must be an RFC 3339 instant such as 2026-01-31T09:00:00Z/);
  assert.equal(await admin.getByRole("table").count(), 0);
  const past = await admin.goto(`${BASE}/admin/organizations/${org}/as-of?position=99999999`);
  assert.equal(past.status(), 400);
  assert.match(await admin.getByRole("alert").textContent(), /is past the end of the log/);
});
