// The Admin console's contract forms used as an operator would, in headless Chromium: a draft
// with several line items (rows added and removed by the form itself, no script needed), a
// refused draft shown again with its values and the API's `detail`, licences pending while
// the customer is suspended (with QuantumLock's reason) and issued on reactivation, each
// item linking its licence, and an amendment after a confirmation step. Then a customer's
// evidence retention: a rule set (a refused one shown with the API's `detail`), a legal hold
// placed and released, each after ticking the confirmation.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BASE,
  adminToken, api, customerOrg, check, signIn, platformOperator, until, consoleBrowser,
} from "./kit.mjs";

const browser = consoleBrowser();

/** One line item's fields, found in its fieldset ("Line item N"). */
function row(page, n) {
  return page.getByRole("group", { name: `Line item ${n}`, exact: true });
}

async function fillRow(page, n, item) {
  const r = row(page, n);
  await r.getByLabel("Item id").fill(item.id);
  await r.getByLabel("Product").fill(item.product);
  await r.getByLabel("Edition").fill(item.edition);
  await r.getByLabel("Features").fill(item.features);
  await r.getByLabel("Quantity").fill(item.quantity);
  await r.getByLabel(/Unit price per month/).fill(item.price);
  await r.getByLabel("Machines per licence").fill("2");
}

test("an operator drafts a contract with several line items, sees its licences pending then issued, and amends it after confirming", async () => {
  const operator = await adminToken();
  const initech = await customerOrg(operator, "Initech");
  await api(operator, "POST", "/customers", {
    organization_id: initech.org, name: "Initech AG", billing_email: "billing@initech.example", currency: "CHF",
  }, 201);

  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, await platformOperator(operator), "admin");
  await admin.goto(`${BASE}/admin/customers/${initech.org}`);
  assert.equal(await admin.getByRole("heading", { level: 1 }).textContent(), "Initech AG");

  // The draft form starts with one line item and no way to remove it.
  await admin.getByLabel("Starts").fill("2026-01-01");
  await admin.getByLabel("Ends").fill("2028-12-31");
  await fillRow(admin, 1, { id: "qpu", product: "qpu-access", edition: "pro", features: "qpu, priority-queue", quantity: "1", price: "1200.50" });
  await row(admin, 1).getByLabel("Monthly quota: metric").fill("jobs");
  await row(admin, 1).getByLabel("Quota amount").fill("500");
  await row(admin, 1).getByLabel("Quota enforcement").selectOption("soft");
  assert.equal(await admin.getByRole("button", { name: /Remove line item/ }).count(), 0);

  // "Add a line item" is a button of the form: the page comes back with a second row, the
  // first row's values kept, and the new row focused for the keyboard.
  await admin.getByRole("button", { name: "Add a line item" }).click();
  await row(admin, 2).waitFor();
  assert.equal(await row(admin, 1).getByLabel("Product").inputValue(), "qpu-access");
  assert.equal(await row(admin, 1).getByLabel("Quota enforcement").inputValue(), "soft");
  assert.equal(await admin.getByLabel("Ends").inputValue(), "2028-12-31");
  assert.equal(await admin.evaluate(() => document.activeElement?.id), "item_id-1");
  // The same item id twice, a third row added with the keyboard and then removed again.
  await fillRow(admin, 2, { id: "qpu", product: "simulator", edition: "team", features: "statevector", quantity: "3", price: "99" });
  await admin.getByRole("button", { name: "Add a line item" }).focus();
  await admin.keyboard.press("Enter");
  await row(admin, 3).waitFor();
  assert.equal(await admin.getByRole("group", { name: /^Line item \d$/ }).count(), 3);
  await check(admin, "admin-contract-draft-rows");
  await admin.getByRole("button", { name: "Remove line item 3" }).click();
  await admin.waitForFunction(() => !document.getElementById("item_id-2"));
  assert.equal(await admin.evaluate(() => document.activeElement?.id), "item_id-1");
  assert.equal(await admin.getByRole("group", { name: /^Line item \d$/ }).count(), 2);

  // Drafting it: the API refuses the duplicate id; its detail is shown and every value kept.
  await admin.getByRole("button", { name: "Draft contract" }).click();
  await admin.getByRole("alert").waitFor();
  assert.match(await admin.getByRole("alert").textContent(), /The contract was not drafted: line item id "qpu" appears twice/);
  assert.equal(await row(admin, 2).getByLabel("Product").inputValue(), "simulator");
  assert.equal(await row(admin, 2).getByLabel(/Unit price/).inputValue(), "99");
  assert.equal(await row(admin, 1).getByLabel(/Unit price/).inputValue(), "1200.50");
  await check(admin, "admin-contract-draft-refused");

  // Corrected, it is drafted with both items.
  await row(admin, 2).getByLabel("Item id").fill("sim");
  await admin.getByRole("button", { name: "Draft contract" }).click();
  await admin.waitForURL(/\/admin\/contracts\/[0-9a-f-]+\?done=drafted$/);
  const contract = new URL(admin.url()).pathname.split("/").pop();
  const drafted = await api(operator, "GET", `/contracts/${contract}`, undefined, 200);
  assert.deepEqual(drafted.line_items.map((i) => [i.id, i.product, i.quantity, i.unit_price]),
    [["qpu", "qpu-access", 1, 120050], ["sim", "simulator", 3, 9900]]);
  assert.deepEqual(drafted.line_items[0].quotas, { jobs: { amount: 500, enforcement: "soft" } });
  assert.deepEqual(await admin.locator("tbody tr td:first-child").allTextContents(), ["qpu", "sim"]);
  assert.match(await admin.locator(".facts").textContent(), /1497\.50 CHF/);

  // Sent, signed by the customer's owner in the Portal.
  await admin.getByRole("button", { name: "Send to customer" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=sent`);
  const owner = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(owner, initech.email);
  await owner.goto(`${BASE}/portal/contracts/${contract}`);
  await owner.getByLabel("Your full name").fill("Bill Lumbergh");
  await owner.getByLabel(/I have read the contract/).check();
  await owner.getByRole("button", { name: "Sign contract" }).click();
  await owner.waitForURL(`${BASE}/portal/contracts/${contract}?done=signed`);

  // Activated while the customer is suspended: QuantumLock refuses for now; the contract page
  // shows each licence pending with the reason and the next attempt, and no licence link.
  await api(operator, "POST", `/organizations/${initech.org}/suspend`, { reason: "unpaid" }, 200);
  await admin.goto(`${BASE}/admin/contracts/${contract}`);
  await admin.getByRole("button", { name: "Activate" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=activated`);
  await until(operator, `/contracts/${contract}`,
    (c) => ["qpu", "sim"].every((i) => c.license_steps[i]?.standing === "pending"), "pending licences");
  await admin.reload();
  const licenceCells = admin.locator("tbody tr td[data-label=Licence]");
  for (const cell of await licenceCells.all()) {
    assert.match(await cell.textContent(), /pending\s+issue: .*suspended.*\(attempt \d+; tried again by \d{4}-\d\d-\d\d \d\d:\d\d UTC\)/);
    assert.equal(await cell.getByRole("link").count(), 0);
  }
  await check(admin, "admin-contract-pending");

  // Reactivated: the licences are issued and each item links its own licence.
  await api(operator, "POST", `/organizations/${initech.org}/reactivate`, {}, 200);
  const issued = await until(operator, `/contracts/${contract}`,
    (c) => ["qpu", "sim"].every((i) => c.license_steps[i]?.standing === "issued"), "issued licences");
  await admin.reload();
  for (const [n, item] of [[0, "qpu"], [1, "sim"]]) {
    const link = licenceCells.nth(n).getByRole("link");
    assert.equal(await link.textContent(), issued.license_steps[item].license_id);
    assert.doesNotMatch(await licenceCells.nth(n).textContent(), /pending/);
  }
  await check(admin, "admin-contract-licences");
  await licenceCells.nth(1).getByRole("link").click();
  await admin.waitForURL(`${BASE}/admin/licenses/${issued.license_steps.sim.license_id}`);
  assert.match(await admin.getByRole("heading", { level: 1 }).textContent(), /simulator/);
  await admin.goBack();

  // Amend: the page holds the current terms; without the tick nothing changes.
  await admin.getByRole("link", { name: "Amend…" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}/amend`);
  assert.equal(await row(admin, 1).getByLabel(/Unit price/).inputValue(), "1200.50");
  assert.equal(await row(admin, 1).getByLabel("Features").inputValue(), "priority-queue, qpu");
  assert.equal(await row(admin, 2).getByLabel("Quantity").inputValue(), "3");
  assert.equal(await admin.getByLabel("Ends").inputValue(), "2028-12-31");
  await row(admin, 1).getByLabel("Quantity").fill("2");
  await row(admin, 2).getByLabel("Edition").fill("enterprise");
  await admin.getByLabel(/^Reason/).fill("more seats, enterprise simulator");
  await admin.getByRole("button", { name: "Add a line item" }).click();
  await row(admin, 3).waitFor();
  await fillRow(admin, 3, { id: "support", product: "support", edition: "gold", features: "", quantity: "1", price: "10" });
  await check(admin, "admin-contract-amend");
  const unticked = await admin.request.post(`${BASE}/admin/contracts/${contract}/amend`, {
    form: { csrf: await admin.locator("input[name=csrf]").first().inputValue(), reason: "x", ends_at: "2028-12-31",
      "item_id.0": "qpu", "product.0": "qpu-access", "edition.0": "pro", "quantity.0": "9", "unit_price.0": "1", "max_activations.0": "1" },
  });
  assert.equal(unticked.status(), 422);
  assert.match(await unticked.text(), /tick the box/);
  assert.equal((await api(operator, "GET", `/contracts/${contract}`, undefined, 200)).amendments, 0);

  await admin.getByLabel(/I understand that changed and removed/).check();
  await admin.getByRole("button", { name: "Amend contract" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=amended`);
  assert.match(await admin.getByRole("status").textContent(), /The contract was amended/);
  const amended = await api(operator, "GET", `/contracts/${contract}`, undefined, 200);
  assert.equal(amended.status, "amended");
  assert.equal(amended.amendments, 1);
  assert.deepEqual(amended.line_items.map((i) => [i.id, i.edition, i.quantity, i.unit_price]),
    [["qpu", "pro", 2, 120050], ["sim", "enterprise", 3, 9900], ["support", "gold", 1, 1000]]);
  assert.deepEqual(amended.line_items[0].quotas, { jobs: { amount: 500, enforcement: "soft" } });
  // The changed item gets a new licence, linked from the page once issued.
  const reissued = await until(operator, `/contracts/${contract}`,
    (c) => c.license_steps.sim?.standing === "issued" && c.license_steps.sim.license_id !== issued.license_steps.sim.license_id
      && c.license_steps.support?.standing === "issued", "the re-issued licence");
  await admin.reload();
  assert.equal(await licenceCells.nth(1).getByRole("link").textContent(), reissued.license_steps.sim.license_id);
  assert.equal(await licenceCells.nth(2).getByRole("link").textContent(), reissued.license_steps.support.license_id);
  await check(admin, "admin-contract-amended");
});

test("an operator sets a customer's retention rule, places a legal hold and releases it", async () => {
  const operator = await adminToken();
  const globex = await customerOrg(operator, "Globex");
  await api(operator, "POST", "/customers", {
    organization_id: globex.org, name: "Globex Corp", billing_email: "billing@globex.example", currency: "EUR",
  }, 201);
  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, await platformOperator(operator), "admin");
  await admin.goto(`${BASE}/admin/customers/${globex.org}`);
  await admin.getByRole("link", { name: "Evidence retention and legal hold" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention`);
  assert.match(await admin.locator(".empty").textContent(), /No retention rules/);
  assert.match(await admin.getByRole("region", { name: "Legal hold" }).textContent(), /No legal hold/);

  // Refused by the API (too many days): its detail, and the values as typed.
  await admin.getByLabel("Job class").fill("gpu-batch");
  await admin.getByLabel(/Keep artifacts for/).fill("99999");
  await admin.getByRole("button", { name: "Set rule" }).click();
  assert.match(await admin.getByRole("alert").textContent(), /The rule was not set: .*at most 36500/);
  assert.equal(await admin.getByLabel("Job class").inputValue(), "gpu-batch");
  await admin.getByLabel(/Keep artifacts for/).fill("90");
  await admin.getByRole("button", { name: "Set rule" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention?done=rule`);
  assert.match(await admin.getByRole("status").textContent(), /The retention rule was set/);
  assert.equal(await admin.getByRole("row", { name: /gpu-batch/ }).getByRole("cell").textContent(), "90 days");
  assert.deepEqual((await api(operator, "GET", `/retention/${globex.org}`, undefined, 200)).rules, { "gpu-batch": 90 });

  // Place: without the tick nothing changes.
  await admin.getByRole("link", { name: "Place legal hold…" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention/hold/place`);
  await admin.getByLabel(/^Reason/).fill("litigation: Globex v. Initech");
  const unticked = await admin.request.post(`${BASE}/admin/customers/${globex.org}/retention/hold/place`, {
    form: { csrf: await admin.locator("input[name=csrf]").first().inputValue(), reason: "x" },
  });
  assert.equal(unticked.status(), 422);
  assert.match(await unticked.text(), /tick the box/);
  assert.equal((await api(operator, "GET", `/retention/${globex.org}`, undefined, 200)).legal_hold, null);
  await admin.getByLabel(/I confirm this change/).check();
  await admin.getByRole("button", { name: "Place legal hold" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention?done=place`);
  assert.match(await admin.getByRole("status").textContent(), /The legal hold was placed/);
  assert.match(await admin.getByRole("region", { name: "Legal hold" }).textContent(), /litigation: Globex v\. Initech/);
  assert.equal((await api(operator, "GET", `/retention/${globex.org}`, undefined, 200)).legal_hold, "litigation: Globex v. Initech");
  await check(admin, "admin-retention");

  // Placing it again is the API's refusal, shown on the confirmation page.
  await admin.goto(`${BASE}/admin/customers/${globex.org}/retention/hold/place`);
  await admin.getByLabel(/^Reason/).fill("again");
  await admin.getByLabel(/I confirm this change/).check();
  await admin.getByRole("button", { name: "Place legal hold" }).click();
  assert.match(await admin.getByRole("alert").textContent(), /Nothing changed: a legal hold is already in place/);

  await admin.goto(`${BASE}/admin/customers/${globex.org}/retention`);
  await admin.getByRole("link", { name: "Release legal hold…" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention/hold/release`);
  await check(admin, "admin-retention-release");
  await admin.getByLabel(/I confirm this change/).check();
  await admin.getByRole("button", { name: "Release legal hold" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${globex.org}/retention?done=release`);
  assert.match(await admin.getByRole("status").textContent(), /The legal hold was released/);
  assert.equal((await api(operator, "GET", `/retention/${globex.org}`, undefined, 200)).legal_hold, null);
});
