// The Admin console's billing pages used as the vendor's operator would: invoices across
// customers filtered and paged, one printable invoice linking its customer and contract, its
// actions after a confirmation (mark paid, void, send), and what the billing runs produced; a
// person of a customer organization reaches none of it.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BASE,
  adminToken, api, customerOrg, check, signIn, platformOperator, nav, consoleBrowser,
} from "./kit.mjs";

const browser = consoleBrowser({ needsBin: false });

/** A customer with an active contract in force since January, and its invoices for `periods`. */
async function billed(operator, name, currency, unitPrice, periods) {
  const { org, email } = await customerOrg(operator, name);
  await api(operator, "POST", "/customers", {
    organization_id: org, name: `${name} Ltd`, billing_email: "ap@example.com", currency,
  }, 201);
  const contract = (await api(operator, "POST", "/contracts", {
    organization_id: org, starts_at: "2026-01-01T00:00:00Z", ends_at: "2027-12-31T00:00:00Z",
    line_items: [{ id: "seat", product: "qpu-access", edition: "pro", quantity: 1, unit_price: unitPrice, max_activations: 1 }],
  }, 201)).id;
  await api(operator, "POST", `/contracts/${contract}/send`, undefined, 200);
  await api(operator, "POST", `/contracts/${contract}/sign`, { signed_by: "Ada Lovelace" }, 200);
  await api(operator, "POST", `/contracts/${contract}/activate`, undefined, 200);
  const invoices = [];
  let position = 0;
  for (const period of periods) {
    const issued = await api(operator, "POST", "/invoices", { contract_id: contract, period }, 201);
    invoices.push(issued.id);
    position = issued.position;
  }
  // The list is a read model: wait until it has the last invoice (read-your-writes).
  await api(operator, "GET", `/invoices?org=${org}&min_position=${position}&wait_ms=5000`, undefined, 200);
  return { org, email, contract, invoices };
}

/** The invoice ids of the list's rows. */
async function listed(page) {
  return page.locator("tbody tr td:first-child a").allTextContents();
}

test("the vendor's operator finds invoices across customers, marks one paid and voids another after confirming, sees the billing runs; a customer's person is refused", async () => {
  const operator = await adminToken();
  const acme = await billed(operator, "Acme Quantum", "EUR", 150000, ["2026-09", "2026-10", "2026-11"]);
  const globex = await billed(operator, "Globex Research", "USD", 2500, ["2026-11"]);
  // Enough invoices for a second page (20 a page): January to August of three more customers.
  const spring = ["01", "02", "03", "04", "05", "06", "07", "08"].map((m) => `2026-${m}`);
  for (const n of [1, 2, 3]) await billed(operator, `Initech ${n}`, "GBP", 1000, spring);

  const operatorEmail = await platformOperator(operator);
  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, operatorEmail, "admin");
  await nav(admin, "Billing", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/billing`);
  assert.equal((await listed(admin)).length, 20);
  await check(admin, "admin-invoices");

  // Paged, the filter kept on the next page: 28 issued invoices, 20 then 8.
  await admin.getByLabel("Status").selectOption("issued");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(`${BASE}/admin/billing?org=&status=issued`);
  const first = await listed(admin);
  assert.equal(first.length, 20);
  await admin.getByRole("link", { name: "Next page" }).click();
  await admin.waitForURL(/status=issued&after=/);
  const second = await listed(admin);
  assert.equal(second.length, 8);
  assert.equal(new Set([...first, ...second]).size, 28);
  assert.equal(await admin.getByRole("link", { name: "Next page" }).count(), 0);
  await check(admin, "admin-invoices-page-2");
  await admin.getByRole("link", { name: "First page" }).click();
  await admin.waitForURL(`${BASE}/admin/billing?status=issued`);
  assert.equal(await admin.locator("tbody tr").count(), 20);

  // Filtered by customer, then by status as well.
  await admin.getByLabel("Customer").selectOption({ label: "Globex Research Ltd" });
  await admin.getByLabel("Status").selectOption("");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(`${BASE}/admin/billing?org=${globex.org}&status=`);
  assert.deepEqual(await listed(admin), globex.invoices);
  assert.match(await admin.locator("tbody").textContent(), /25\.00 USD/);
  await admin.getByLabel("Customer").selectOption({ label: "Acme Quantum Ltd" });
  await admin.getByLabel("Status").selectOption("paid");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(`${BASE}/admin/billing?org=${acme.org}&status=paid`);
  assert.equal(await admin.locator("tbody tr").count(), 0);
  assert.match(await admin.locator("main").textContent(), /No paid invoices/);
  await check(admin, "admin-invoices-none-paid");

  // One invoice: printable, linking its customer and contract.
  const [september, october] = acme.invoices;
  await admin.goto(`${BASE}/admin/billing?org=${acme.org}`);
  assert.deepEqual((await listed(admin)).sort(), [...acme.invoices].sort());
  await admin.getByRole("link", { name: september }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${september}`);
  assert.match(await admin.locator("tfoot").textContent(), /1500\.00 EUR/);
  assert.equal(await admin.getByRole("link", { name: "Acme Quantum Ltd" }).getAttribute("href"), `/admin/customers/${acme.org}`);
  assert.equal(await admin.getByRole("link", { name: acme.contract }).getAttribute("href"), `/admin/contracts/${acme.contract}`);
  await check(admin, "admin-invoice");

  // A form posted without the session's CSRF token is refused, and changes nothing.
  const forged = await admin.request.post(`${BASE}/admin/invoices/${september}/pay`, { form: { reference: "x", confirm: "yes" } });
  assert.equal(forged.status(), 403);

  // Mark paid: a confirmation with the payment's reference.
  await admin.getByRole("link", { name: "Mark paid…" }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${september}/pay`);
  await check(admin, "admin-invoice-pay");
  await admin.getByLabel("Payment reference").fill("BANK-2026-0917");
  await admin.getByLabel(/I confirm/).check();
  await admin.getByRole("button", { name: "Mark paid" }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${september}?done=pay`);
  assert.equal(await admin.getByRole("status").textContent(), "The invoice was marked paid.");
  assert.equal(await admin.locator(".invoice-head .badge").textContent(), "paid");
  assert.match(await admin.locator(".facts").first().textContent(), /BANK-2026-0917/);
  // Paid: nothing more to do with it.
  assert.equal(await admin.getByRole("link", { name: /Mark paid|Void invoice|Send invoice/ }).count(), 0);
  const paid = await api(operator, "GET", `/invoices/${september}`, undefined, 200);
  assert.equal(paid.status, "paid");
  assert.equal(paid.paid.reference, "BANK-2026-0917");

  // Voiding again on a stale page: the API's refusal is shown and nothing changes.
  const stale = await admin.request.post(`${BASE}/admin/invoices/${september}/void`, {
    form: { csrf: await csrfOf(admin, `${BASE}/admin/invoices/${october}/void`), reason: "late", confirm: "yes" },
  });
  assert.equal(stale.status(), 409);
  assert.equal((await api(operator, "GET", `/invoices/${september}`, undefined, 200)).status, "paid");

  // Void the October invoice: it needs the tick (a form without it changes nothing)...
  await admin.goto(`${BASE}/admin/invoices/${october}`);
  await admin.getByRole("link", { name: "Void invoice…" }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${october}/void`);
  const unticked = await admin.request.post(`${BASE}/admin/invoices/${october}/void`, {
    form: { csrf: await csrfOf(admin, admin.url()), reason: "billed twice" },
  });
  assert.equal(unticked.status(), 422);
  assert.equal((await api(operator, "GET", `/invoices/${october}`, undefined, 200)).status, "issued");
  await admin.getByLabel(/Reason/).fill("Billed twice by mistake");
  await admin.getByLabel(/I confirm/).check();
  await check(admin, "admin-invoice-void");
  await admin.getByRole("button", { name: "Void invoice" }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${october}?done=void`);
  assert.equal(await admin.locator(".invoice-head .badge").textContent(), "void");
  assert.equal((await api(operator, "GET", `/invoices/${october}`, undefined, 200)).status, "void");

  // Send the November invoice to the billing provider: it is open then.
  const november = acme.invoices[2];
  await admin.goto(`${BASE}/admin/invoices/${november}/send`);
  await admin.getByLabel(/I confirm/).check();
  await admin.getByRole("button", { name: "Send invoice" }).click();
  await admin.waitForURL(`${BASE}/admin/invoices/${november}?done=send`);
  assert.equal(await admin.locator(".invoice-head .badge").textContent(), "open");
  assert.equal((await api(operator, "GET", `/invoices/${november}`, undefined, 200)).status, "open");

  // The status filter now finds the paid one (the list follows the log).
  for (let i = 0; ; i++) {
    await admin.goto(`${BASE}/admin/billing?org=${acme.org}&status=paid`);
    if ((await listed(admin)).length === 1 || i === 50) break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.deepEqual(await listed(admin), [september]);
  await check(admin, "admin-invoices-paid");

  // The billing runs: scheduled, not started here; their outcome per month.
  await admin.getByRole("link", { name: "Billing runs" }).click();
  await admin.waitForURL(`${BASE}/admin/billing/runs`);
  assert.match(await admin.locator("main").textContent(), /The API offers no call to start a run/);
  const november_run = admin.locator("tbody tr", { has: admin.getByRole("rowheader", { name: "2026-11" }) });
  assert.match(await november_run.textContent(), /1500\.00 EUR, 25\.00 USD/);
  const october_run = admin.locator("tbody tr", { has: admin.getByRole("rowheader", { name: "2026-10" }) });
  assert.equal(await october_run.locator("td[data-label=void]").textContent(), "1");
  await check(admin, "admin-billing-runs");

  // Narrow screens: the printable invoice reflowed.
  await admin.setViewportSize({ width: 390, height: 844 });
  await admin.goto(`${BASE}/admin/invoices/${september}`);
  await check(admin, "admin-invoice-narrow");

  // A person of a customer organization is refused at every billing page, whatever their
  // scopes: no invoice, no navigation.
  const other = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(other, acme.email);
  let refused = await other.goto(`${BASE}/admin/billing`);
  if (refused.url().startsWith(`${BASE}/oauth2/`)) {
    await other.waitForSelector("text=Allow access?");
    [refused] = await Promise.all([
      other.waitForResponse((res) => new URL(res.url()).pathname === "/admin/billing"),
      other.getByRole("button", { name: "Allow" }).click(),
    ]);
  }
  assert.equal(refused.status(), 403);
  assert.equal(await other.getByRole("heading", { level: 1 }).textContent(), "Not for your organization");
  assert.equal(await other.getByRole("navigation", { name: "Admin" }).count(), 0);
  for (const path of [`/admin/invoices/${november}`, `/admin/invoices/${november}/void`, "/admin/billing/runs"]) {
    const r = await other.goto(`${BASE}${path}`);
    assert.equal(r.status(), 403, path);
    assert.doesNotMatch(await other.locator("main").textContent(), /Acme|Globex|EUR|USD/, path);
  }
  const posted = await other.request.post(`${BASE}/admin/invoices/${november}/void`, {
    form: { csrf: await csrfOf(other, `${BASE}/admin/billing`), reason: "mine", confirm: "yes" },
  });
  assert.equal(posted.status(), 403);
  assert.equal((await api(operator, "GET", `/invoices/${november}`, undefined, 200)).status, "open");
  await check(other, "admin-billing-refused");
});

/** The session's CSRF token, from the sign-out form of a page of the console. */
async function csrfOf(page, url) {
  const r = await page.request.get(url);
  const html = await r.text();
  const m = html.match(/name="csrf" value="([^"]+)"/);
  assert.ok(m, `no CSRF token on ${url}`);
  return m[1];
}
