// The web consoles used as people would: headless Chromium, driven by Playwright, against a
// running Quantus (QUANTUS_URL, with the bootstrap admin's QUANTUS_CLIENT_ID / _SECRET acting
// as the vendor's operator through the API). Every console page is checked with axe-core
// (no serious or critical violation) and saved as a screenshot to SCREENSHOTS.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import {
  BASE, QUANTUS_BIN, PASSWORD,
  adminToken, api, customerOrg, check, signIn, platformOperator, nav, until, download, consoleBrowser,
} from "./kit.mjs";

const browser = consoleBrowser();

test("the vendor's operator drafts and sends a contract in the Admin console, the customer signs it in the Portal, the operator activates it and the customer gets its licence; another organization sees none of it", async () => {
  const operator = await adminToken();
  const acme = await customerOrg(operator, "Acme Quantum");
  const globex = await customerOrg(operator, "Globex Research");

  // The vendor's operator signs in to the Admin console through QSA.
  const operatorEmail = await platformOperator(operator);
  const admin = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(admin, operatorEmail, "admin");
  assert.equal(await admin.getByRole("heading", { level: 1 }).textContent(), "Customers");
  await check(admin, "admin-customers");

  // Registers Acme's organization as a customer...
  await admin.getByRole("link", { name: "Register a customer" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/new`);
  await admin.getByLabel("Organization").selectOption({ label: "Acme Quantum" });
  await admin.getByLabel("Legal name").fill("Acme Quantum GmbH");
  await admin.getByLabel("Billing email").fill("billing@acme.example");
  await admin.getByLabel("Currency").fill("EUR");
  await check(admin, "admin-customer-new");
  await admin.getByRole("button", { name: "Register customer" }).click();
  await admin.waitForURL(`${BASE}/admin/customers/${acme.org}?done=registered`);
  assert.match(await admin.getByRole("status").textContent(), /The customer was registered/);
  assert.equal(await admin.getByRole("heading", { level: 1 }).textContent(), "Acme Quantum GmbH");
  assert.match(await admin.locator("main").textContent(), /No contracts/);
  await check(admin, "admin-customer");

  // ...drafts its contract with one line item (the price typed in euros)...
  await admin.getByLabel("Starts").fill("2026-01-01");
  await admin.getByLabel("Ends").fill("2027-12-31");
  await admin.getByLabel("Item id").fill("qpu");
  await admin.getByLabel("Product").fill("qpu-access");
  await admin.getByLabel("Edition").fill("pro");
  await admin.getByLabel("Features").fill("qpu, priority-queue");
  await admin.getByLabel("Quantity").fill("1");
  await admin.getByLabel(/Unit price per month/).fill("1500.00");
  await admin.getByLabel("Machines per licence").fill("2");
  await admin.getByLabel("Monthly quota: metric").fill("jobs");
  await admin.getByLabel("Quota amount").fill("100");
  await admin.getByLabel("Quota enforcement").selectOption("hard");
  await admin.getByLabel("Licence limit: name").fill("qubits");
  await admin.getByLabel("Limit value").fill("64");
  await admin.getByRole("button", { name: "Draft contract" }).click();
  await admin.waitForURL(/\/admin\/contracts\/[0-9a-f-]+\?done=drafted$/);
  const contract = new URL(admin.url()).pathname.split("/").pop();
  assert.equal(await admin.locator(".facts .badge").first().textContent(), "draft");
  assert.match(await admin.locator(".facts").textContent(), /1500\.00 EUR/);
  await check(admin, "admin-contract-draft");

  // A form posted without the session's CSRF token is refused.
  const forgedSend = await admin.request.post(`${BASE}/admin/contracts/${contract}/send`, { form: {} });
  assert.equal(forgedSend.status(), 403);

  // ...and sends it for signature.
  await admin.getByRole("button", { name: "Send to customer" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=sent`);
  assert.equal(await admin.locator(".facts .badge").first().textContent(), "sent");
  assert.match(await admin.locator("main").textContent(), /Waiting for the customer's signature/);
  // The API's refusal is shown as the API gave it (a sent contract cannot be activated).
  const early = await admin.request.post(`${BASE}/admin/contracts/${contract}/activate`, {
    form: { csrf: await admin.locator("input[name=csrf]").first().inputValue() },
  });
  assert.equal(early.status(), 409);
  assert.match(await early.text(), /class="detail" role="alert">[^<]*sent/);
  // Lists are read models: wait until they show the change (read-your-writes).
  await until(operator, `/contracts?org=${acme.org}`, (r) => r.items[0]?.status === "sent", "the sent contract");

  // The customer's owner signs in through QSA and finds the contract waiting.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  await signIn(page, acme.email);
  assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Acme Quantum");
  assert.match(await page.locator("main").textContent(), /Acme Quantum GmbH/);
  assert.ok(await page.getByRole("link", { name: `review and sign contract ${contract}` }).isVisible());

  // The session is an HttpOnly, SameSite=Lax cookie holding no token; pages forbid framing
  // and inline script.
  const cookie = (await context.cookies()).find((c) => c.name === "quantus_portal");
  assert.ok(cookie && cookie.httpOnly && cookie.sameSite === "Lax", JSON.stringify(cookie));
  assert.ok(!cookie.value.includes("eyJ"), "the cookie holds no JWT");
  const headers = (await page.request.get(`${BASE}/portal/`)).headers();
  assert.match(headers["content-security-policy"], /frame-ancestors 'none'/);
  assert.doesNotMatch(headers["content-security-policy"], /unsafe-inline/);
  assert.equal(headers["x-frame-options"], "DENY");
  await check(page, "portal-overview");

  await nav(page, "Contracts").click();
  await page.waitForURL(`${BASE}/portal/contracts`);
  await check(page, "portal-contracts");
  await page.getByRole("link", { name: contract }).click();
  await page.waitForURL(`${BASE}/portal/contracts/${contract}`);
  assert.equal(await page.locator(".facts .badge").first().textContent(), "sent");
  await check(page, "portal-contract-to-sign");

  // A form posted without the session's CSRF token is refused.
  const forged = await page.request.post(`${BASE}/portal/contracts/${contract}/sign`, {
    form: { signed_by: "Mallory", accept: "yes" },
  });
  assert.equal(forged.status(), 403);

  await page.getByLabel("Your full name").fill("Ada Lovelace");
  await page.getByLabel(/I have read the contract/).check();
  await page.getByRole("button", { name: "Sign contract" }).click();
  await page.waitForURL(`${BASE}/portal/contracts/${contract}?done=signed`);
  assert.match(await page.getByRole("status").textContent(), /You signed the contract/);
  assert.equal(await page.locator(".facts .badge").first().textContent(), "signed");
  const signed = await api(operator, "GET", `/contracts/${contract}`, undefined, 200);
  assert.equal(signed.signed_by, "Ada Lovelace");

  // The operator sees the signature and activates the contract; QuantumLock issues the licence.
  await until(operator, `/contracts?org=${acme.org}&status=signed`, (r) => r.items.length === 1, "the signed contract");
  await nav(admin, "Contracts", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/contracts`);
  await admin.getByLabel("Status").selectOption("signed");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts?status=signed`);
  assert.deepEqual(await admin.locator("tbody tr a").allTextContents(), [contract]);
  assert.match(await admin.locator("tbody").textContent(), /Acme Quantum GmbH/);
  await check(admin, "admin-contracts-signed");
  await admin.getByRole("link", { name: contract }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}`);
  assert.match(await admin.locator(".facts").textContent(), /Signed by\s*Ada Lovelace/);
  await admin.getByRole("button", { name: "Activate" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=activated`);
  assert.equal(await admin.locator(".facts .badge").first().textContent(), "active");
  let license;
  for (let i = 0; i < 100 && !license; i++) {
    const c = await api(operator, "GET", `/contracts/${contract}`, undefined, 200);
    const id = c.licenses?.qpu;
    if (id) {
      const r = await fetch(`${BASE}/v1/licenses/${id}`, { headers: { authorization: `Bearer ${operator}` } });
      if (r.status === 200) license = id;
    }
    if (!license) await new Promise((ok) => setTimeout(ok, 100));
  }
  assert.ok(license, "the licence was issued");
  for (let i = 0; i < 100; i++) {
    const listed = await api(operator, "GET", `/licenses?org=${acme.org}`, undefined, 200);
    if (listed.items.length === 1) break;
    await new Promise((ok) => setTimeout(ok, 100));
  }

  // The operator sees the licence the contract produced, valid, and no refused step.
  await admin.goto(`${BASE}/admin/contracts/${contract}`);
  const item = admin.locator("tbody tr").first();
  assert.match(await item.textContent(), new RegExp(`${license}\\s*valid`));
  assert.match(await admin.locator("main").textContent(), /QuantumLock refused none/);
  await check(admin, "admin-contract-active");

  // The licence, among every customer's: suspended after a confirmation, then reinstated.
  await nav(admin, "Licences", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/licenses`);
  assert.match(await admin.locator("tbody").textContent(), /Acme Quantum GmbH/);
  await check(admin, "admin-licenses");
  await admin.getByRole("link", { name: license }).click();
  await admin.waitForURL(`${BASE}/admin/licenses/${license}`);
  assert.match(await admin.locator(".facts").textContent(), /Standing now\s*valid/);
  await check(admin, "admin-license");
  await admin.getByRole("link", { name: "Suspend…" }).click();
  await admin.waitForURL(`${BASE}/admin/licenses/${license}/suspend`);
  await admin.getByLabel(/Reason/).fill("Invoice overdue");
  await admin.getByLabel(/I confirm/).check();
  await check(admin, "admin-license-suspend");
  await admin.getByRole("button", { name: "Suspend licence" }).click();
  await admin.waitForURL(`${BASE}/admin/licenses/${license}?done=suspend`);
  assert.match(await admin.getByRole("status").textContent(), /The licence was suspended/);
  assert.match(await admin.locator(".facts").textContent(), /Standing now\s*suspended/);
  await admin.getByRole("link", { name: "Reinstate…" }).click();
  await admin.waitForURL(`${BASE}/admin/licenses/${license}/reinstate`);
  await admin.getByLabel(/I confirm/).check();
  await admin.getByRole("button", { name: "Reinstate licence" }).click();
  await admin.waitForURL(`${BASE}/admin/licenses/${license}?done=reinstate`);
  assert.match(await admin.locator(".facts").textContent(), /Standing now\s*valid/);

  await page.goto(`${BASE}/portal/contracts/${contract}`);
  assert.equal(await page.locator(".facts .badge").first().textContent(), "active");
  await check(page, "portal-contract-active");
  await page.getByRole("link", { name: "View licence" }).click();
  await page.waitForURL(`${BASE}/portal/licenses/${license}`);
  assert.match(await page.locator("main").textContent(), /valid/);
  assert.match(await page.locator(".facts").textContent(), /Revocation list\s*does not name it/);
  await check(page, "portal-license");

  // The licence file, the public keys and the CRL verify offline with the CLI.
  const dir = mkdtempSync(join(tmpdir(), "portal-"));
  const licenseFile = await download(page, page.getByRole("link", { name: "Download licence file" }), dir);
  const keysFile = await download(page, page.getByRole("link", { name: "Public keys" }), dir);
  const crlFile = await download(page, page.getByRole("link", { name: "Revocation list" }), dir);
  const verdict = execFileSync(QUANTUS_BIN, ["license", "verify", licenseFile, "--keys", keysFile, "--crl", crlFile], {
    encoding: "utf8",
  });
  assert.match(verdict, new RegExp(license));

  // A job the organization ran, its artifact and its evidence bundle.
  const job = (await api(operator, "POST", "/jobs", {
    organization_id: acme.org, backend: "ibm_kyiv",
    workload: { circuit: "ghz", qubits: 27, shots: 4096 }, config: { optimization_level: 3, seed: 7 },
  }, 201)).id;
  await api(operator, "POST", `/jobs/${job}/start`, {}, 200);
  const counts = JSON.stringify({ "000000000000000000000000000": 2011, "111111111111111111111111111": 2085 });
  const put = await fetch(`${BASE}/v1/jobs/${job}/artifacts/counts.json`, {
    method: "PUT", headers: { authorization: `Bearer ${operator}`, "content-type": "application/json" }, body: counts,
  });
  assert.equal(put.status, 201, await put.text());
  const completed = await api(operator, "POST", `/jobs/${job}/complete`, { result_summary: { ghz_fidelity: "0.91" }, metrics: { shots: 4096 } }, 200);
  await api(operator, "GET", `/entitlements?org=${acme.org}&min_position=${completed.position}&wait_ms=5000`, undefined, 200);
  await nav(page, "Jobs").click();
  await page.waitForURL(`${BASE}/portal/jobs`);
  await check(page, "portal-jobs");
  await page.getByRole("link", { name: job }).click();
  await page.waitForURL(`${BASE}/portal/jobs/${job}`);
  assert.match(await page.locator("main").textContent(), /ghz_fidelity/);
  await check(page, "portal-job");
  const artifact = await download(page, page.getByRole("link", { name: "counts.json" }), dir);
  assert.equal(readFileSync(artifact, "utf8"), counts);
  // The owner makes the job's evidence bundle in the browser and sees it verified, by the
  // same check as POST /v1/evidence/verify.
  assert.match(await page.locator("main").textContent(), /No evidence bundle was made for this job yet/);
  await page.getByRole("button", { name: "Create evidence bundle" }).click();
  await page.waitForURL(/\/portal\/evidence\/[0-9a-f-]{36}\?done=created$/);
  const bundle = new URL(page.url()).pathname.split("/").pop();
  assert.equal(await page.locator("#verdict .badge").textContent(), "valid");
  const evidenceSigner = (await api(operator, "GET", "/keys", undefined, 200)).keys.filter((k) => k.purpose === "evidence");
  const verified = await page.locator("main").textContent();
  assert.ok(evidenceSigner.some((k) => verified.includes(k.kid)), "the signer is an evidence key");
  assert.match(verified, /counts\.json\s*verified/);
  assert.match(verified, /Checkpoint\s*tree size \d+, root [0-9a-f]{64}/);
  assert.match(verified, /The submitter's state at job time/);
  await check(page, "portal-bundle-verified");
  await page.getByRole("link", { name: job }).click();
  await page.waitForURL(`${BASE}/portal/jobs/${job}`);
  await page.getByRole("link", { name: bundle, exact: true }).waitFor();
  const archive = await download(page, page.getByRole("link", { name: `Download bundle ${bundle}` }), dir);
  execFileSync(QUANTUS_BIN, ["evidence", "verify", archive, "--keys", keysFile], { encoding: "utf8" });
  await nav(page, "Evidence").click();
  await page.waitForURL(`${BASE}/portal/evidence`);
  await page.getByRole("link", { name: job }).first().waitFor();
  await check(page, "portal-evidence");

  await nav(page, "Licences").click();
  await page.waitForURL(`${BASE}/portal/licenses`);
  assert.equal(await page.locator("tbody tr").count(), 1);
  await check(page, "portal-licenses");

  await nav(page, "Usage").click();
  await page.waitForURL(`${BASE}/portal/usage`);
  assert.match(await page.locator("main").textContent(), /qubits\s*64/);
  // The job above was admitted on the hard jobs quota.
  const jobsQuota = page.locator("tbody tr").first();
  assert.equal(await jobsQuota.locator("th").textContent(), "jobs");
  assert.equal(await jobsQuota.locator("meter").getAttribute("value"), "1");
  assert.deepEqual(await jobsQuota.locator("td.num").allTextContents(), ["100", "99"]);
  await check(page, "portal-usage");

  // Last month's invoice, listed and printable.
  const issued = await api(operator, "POST", "/invoices", { contract_id: contract, period: "2026-11" }, 201);
  const invoice = issued.id;
  await api(operator, "GET", `/invoices?org=${acme.org}&min_position=${issued.position}&wait_ms=5000`, undefined, 200);
  await nav(page, "Invoices").click();
  await page.waitForURL(`${BASE}/portal/invoices`);
  await check(page, "portal-invoices");
  await page.getByRole("link", { name: invoice }).click();
  await page.waitForURL(`${BASE}/portal/invoices/${invoice}`);
  assert.match(await page.locator("tfoot").textContent(), /1500\.00 EUR/);
  await check(page, "portal-invoice");

  // Narrow screens get the same pages, reflowed.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${BASE}/portal/contracts/${contract}`);
  await check(page, "portal-contract-narrow");
  await page.setViewportSize({ width: 1280, height: 800 });

  // The account page, another console signing in through QSA (no password: QSA's session
  // is still there; its own consent).
  await page.getByRole("link", { name: "Ada Lovelace" }).click();
  await page.waitForSelector("text=Allow access?");
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${BASE}/account/`);
  const account = await page.locator("main").textContent();
  assert.match(account, new RegExp(acme.email.replace(/[.+]/g, "\\$&")));
  assert.match(account, /Signed in with\s*password/);
  assert.match(account, /Authenticator app\s*not set up/);
  assert.match(account, /Acme Quantum\s*owner/);
  await check(page, "account");
  await page.goto(`${BASE}/portal/contracts/${contract}`);

  // Signing out ends the QSA session too: the Portal asks for the password again.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.waitForURL(`${BASE}/portal/signed-out`);
  await check(page, "portal-signed-out");
  await page.goto(`${BASE}/portal/`);
  assert.equal(await page.title(), "Sign in · Quantus");
  // ...and the QSA session's grants: the account console's token stops working too.
  await page.goto(`${BASE}/account/`);
  assert.equal(await page.title(), "Sign in · Quantus");

  // Another organization's owner sees none of Acme's data.
  const other = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(other, globex.email);
  assert.equal(await other.getByRole("heading", { level: 1 }).textContent(), "Globex Research");
  assert.doesNotMatch(await other.locator("main").textContent(), /Acme/);
  await other.goto(`${BASE}/portal/contracts`);
  assert.match(await other.locator("main").textContent(), /No contracts/);
  await check(other, "portal-contracts-empty");
  let r = await other.goto(`${BASE}/portal/contracts/${contract}`);
  assert.equal(r.status(), 404);
  assert.doesNotMatch(await other.locator("main").textContent(), /qpu-access/);
  await check(other, "portal-not-found");
  r = await other.goto(`${BASE}/portal/licenses/${license}`);
  assert.equal(r.status(), 404);
  assert.equal((await other.request.get(`${BASE}/portal/licenses/${license}/file`)).status(), 404);
  r = await other.goto(`${BASE}/portal/jobs/${job}`);
  assert.equal(r.status(), 404);
  assert.equal((await other.request.get(`${BASE}/portal/evidence/${bundle}/bundle.tar`)).status(), 404);
  assert.equal((await other.request.get(`${BASE}/portal/jobs/${job}/artifacts/counts.json`)).status(), 404);
  r = await other.goto(`${BASE}/portal/invoices/${invoice}`);
  assert.equal(r.status(), 404);
  await other.goto(`${BASE}/portal/licenses`);
  assert.equal(await other.locator("tbody tr").count(), 0);

  // A member of Acme (no contract or billing scopes): those pages are not offered, and the
  // API's refusal is shown as the API gave it.
  const memberEmail = `member-${randomUUID()}@example.com`;
  await api(operator, "POST", "/users", {
    organization_id: acme.org, email: memberEmail, name: "Grace Hopper", password: PASSWORD, roles: ["member"],
  }, 201);
  const member = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(member, memberEmail);
  const links = await member.getByRole("navigation", { name: "Customer Portal" }).getByRole("link").allTextContents();
  assert.deepEqual(links, ["Overview", "Usage", "Licences", "Jobs", "Evidence"]);
  r = await member.goto(`${BASE}/portal/contracts/${contract}`);
  assert.equal(r.status(), 403);
  assert.equal(await member.getByRole("alert").textContent(), "this needs the contracts:read scope");
  await check(member, "portal-forbidden");

  // An auditor of Acme reads and verifies bundles but may not make one: no button, and a
  // forged post (with the session's own CSRF token) gets the API's refusal.
  const auditorEmail = `auditor-${randomUUID()}@example.com`;
  await api(operator, "POST", "/users", {
    organization_id: acme.org, email: auditorEmail, name: "Mary Jackson", password: PASSWORD, roles: ["auditor"],
  }, 201);
  const auditor = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await signIn(auditor, auditorEmail);
  await auditor.goto(`${BASE}/portal/jobs/${job}`);
  await auditor.getByRole("link", { name: bundle, exact: true }).waitFor();
  assert.equal(await auditor.getByRole("button", { name: "Create evidence bundle" }).count(), 0);
  const csrf = await auditor.locator("input[name=csrf]").first().inputValue();
  const posted = await auditor.request.post(`${BASE}/portal/jobs/${job}/evidence`, { form: { csrf }, maxRedirects: 0 });
  const forgedBundle = { status: posted.status(), text: await posted.text() };
  assert.equal(forgedBundle.status, 403, forgedBundle.text);
  assert.match(forgedBundle.text, /this needs the evidence:write scope/);
  await auditor.getByRole("link", { name: bundle, exact: true }).click();
  await auditor.waitForURL(`${BASE}/portal/evidence/${bundle}`);
  assert.equal(await auditor.locator("#verdict .badge").textContent(), "valid");
  await auditor.close();

  // A customer's person is refused at the Admin console, whatever their scopes: no data, no
  // navigation.
  let refused = await other.goto(`${BASE}/admin/`);
  if (refused.url().startsWith(`${BASE}/oauth2/`)) {
    await other.waitForSelector("text=Allow access?");
    [refused] = await Promise.all([
      other.waitForResponse((res) => new URL(res.url()).pathname === "/admin/"),
      other.getByRole("button", { name: "Allow" }).click(),
    ]);
  }
  assert.equal(refused.status(), 403);
  assert.equal(await other.getByRole("heading", { level: 1 }).textContent(), "Not for your organization");
  assert.equal(await other.getByRole("navigation", { name: "Admin" }).count(), 0);
  assert.doesNotMatch(await other.locator("main").textContent(), /Acme|Customers/);
  assert.equal(await other.getByRole("link", { name: "Go to the Customer Portal" }).getAttribute("href"), "/portal/");
  r = await other.goto(`${BASE}/admin/contracts/${contract}`);
  assert.equal(r.status(), 403);
  assert.doesNotMatch(await other.locator("main").textContent(), /qpu-access|Acme/);
  await check(other, "admin-forbidden");

  // The operator terminates the contract, after a confirmation; its licence is revoked.
  await admin.goto(`${BASE}/admin/contracts/${contract}`);
  await admin.getByRole("link", { name: "Terminate…" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}/terminate`);
  await check(admin, "admin-contract-terminate");
  await admin.getByLabel(/Reason/).fill("The customer moved to another plan");
  await admin.getByLabel(/I understand/).check();
  await admin.getByRole("button", { name: "Terminate contract" }).click();
  await admin.waitForURL(`${BASE}/admin/contracts/${contract}?done=terminated`);
  assert.equal(await admin.locator(".facts .badge").first().textContent(), "terminated");
  assert.match(await admin.locator("tbody tr").first().textContent(), /revoked with the contract/);
  await until(operator, `/licenses/${license}/status`, (r) => r.standing === "revoked", "the licence revoked");
  await until(operator, `/licenses/${license}`, (r) => r.status === "revoked", "the licence revoked in the list");
  // The customer's Portal says the revocation list now names it.
  const later = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await later.goto(`${BASE}/portal/`);
  await later.getByLabel("Email").fill(acme.email);
  await later.getByLabel("Password").fill(PASSWORD);
  await later.getByRole("button", { name: "Sign in" }).click();
  // QSA may remember the consent given earlier; if not, it asks again.
  const portal = new RegExp(`^${BASE}/portal/`);
  await Promise.race([
    later.waitForSelector("text=Allow access?").then(() => later.getByRole("button", { name: "Allow" }).click()),
    later.waitForURL(portal),
  ]);
  await later.waitForURL(portal);
  await later.goto(`${BASE}/portal/licenses/${license}`);
  assert.match(await later.locator(".facts").textContent(), /Revocation list\s*names it: revoked/);
  await check(later, "portal-license-revoked");
  await later.close();
  await check(admin, "admin-contract-terminated");
  await admin.setViewportSize({ width: 390, height: 844 });
  await check(admin, "admin-contract-narrow");
  await admin.goto(`${BASE}/admin/customers/${acme.org}`);
  await check(admin, "admin-customer-narrow");
  await admin.setViewportSize({ width: 1280, height: 800 });

  // The event log, filtered to Acme's sent contracts, read page by page.
  await api(operator, "POST", "/audit/checkpoints", undefined);
  await nav(admin, "Event log", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/events`);
  await check(admin, "admin-events");
  await admin.getByLabel("Tenant").fill(acme.org);
  await admin.getByLabel("Aggregate type").fill("Contract");
  await admin.getByLabel("Event type").fill("ContractSent");
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(/\/admin\/events\?/);
  const sentEvent = admin.getByRole("link", { name: `Contract ${contract}` });
  for (let i = 0; i < 50 && (await sentEvent.count()) === 0; i++) {
    await admin.getByRole("link", { name: "Next page" }).click();
    await admin.waitForLoadState();
  }
  assert.equal(await sentEvent.count(), 1);
  assert.deepEqual([...new Set(await admin.locator("tbody td[data-label=Event]").allTextContents())], ["ContractSent"]);
  await check(admin, "admin-events-filtered");

  // The same filter over the two seconds around the event's appending (the instant in its
  // UUID v7 id): the read starts there, so it is on the first page; from after it, it is gone.
  const chain = await api(operator, "GET", `/aggregates/Contract/${contract}/events`, undefined, 200);
  const sentId = chain.events.find((e) => e.envelope.event_type === "ContractSent").envelope.event_id;
  const appended = Math.floor(parseInt(sentId.replace(/-/g, "").slice(0, 12), 16) / 1000) * 1000;
  const utc = (ms) => new Date(ms).toISOString().slice(0, 19);
  await admin.getByLabel("From (UTC)").fill(utc(appended));
  await admin.getByLabel("Before (UTC)").fill(utc(appended + 2000));
  await admin.getByRole("button", { name: "Filter" }).click();
  await admin.waitForURL(/from=.*to=/);
  assert.equal(await sentEvent.count(), 1);
  const [, firstRead] = (await admin.locator("main p.muted").first().textContent()).match(/Positions (\d+) to/);
  assert.ok(Number(firstRead) > 1, `the read starts at ${firstRead}`);
  await check(admin, "admin-events-by-time");
  await admin.goto(`${BASE}/admin/events?tenant=${acme.org}&event_type=ContractSent&from=${utc(appended + 2000)}`);
  assert.equal(await sentEvent.count(), 0);
  assert.equal(await admin.getByLabel("From (UTC)").inputValue(), utc(appended + 2000));
  await admin.goBack();

  // The contract's history: a hash chain, and one event's inclusion in the signed log.
  await sentEvent.click();
  await admin.waitForURL(`${BASE}/admin/events/Contract/${contract}`);
  assert.match(await admin.locator("main").textContent(), /Hash chain intact/);
  assert.deepEqual(
    (await admin.locator("ol.chain strong").allTextContents()).slice(0, 3),
    ["1. ContractDrafted", "2. ContractSent", "3. ContractSigned"],
  );
  await check(admin, "admin-event-history");
  await admin.getByRole("link", { name: "Verify inclusion of event 2" }).click();
  await admin.waitForURL(/verify=/);
  assert.match(await admin.locator("#proof-h + dl").textContent(), /included\s*in the signed log/);
  await check(admin, "admin-event-inclusion");
  await nav(admin, "Checkpoints", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/checkpoints`);
  assert.ok((await admin.locator("tbody tr").count()) >= 1);
  await check(admin, "admin-checkpoints");

  // The evidence keyring is rotated, then its previous key marked compromised after typing
  // its id; the crypto policy is shown beside them.
  const evidenceKeys = async () =>
    (await api(operator, "GET", "/keys", undefined, 200)).keys.filter((k) => k.purpose === "evidence");
  const [old] = await evidenceKeys();
  await nav(admin, "Keys", "Admin").click();
  await admin.waitForURL(`${BASE}/admin/keys`);
  assert.match(await admin.locator("main").textContent(), /Crypto policy/);
  await check(admin, "admin-keys");
  await admin.getByLabel("Keyring", { exact: true }).selectOption("evidence");
  // Rotating takes a moment (a new key is made and signs). Slowed down here, the form shows it
  // is working (form busy, button disabled, "Working…" in a live region) and a double click
  // sends one request. Playwright's own calls wait for a pending navigation, so the page
  // records what it shows 100 ms after the submission (sessionStorage outlives the navigation).
  let rotations = 0;
  await admin.route("**/admin/keys/rotate", async (route) => {
    rotations += 1;
    await new Promise((ok) => setTimeout(ok, 1500));
    await route.continue();
  });
  const busyState = () => {
    const form = document.querySelector('form[action="/admin/keys/rotate"]');
    const button = form.querySelector("button");
    const live = button.nextElementSibling;
    return {
      busy: form.getAttribute("aria-busy"),
      disabled: button.disabled,
      status: live && live.getAttribute("aria-live") === "polite" ? live.textContent : null,
    };
  };
  await admin.evaluate(() => {
    document.addEventListener("submit", () =>
      setTimeout(() => {
        const form = document.querySelector('form[action="/admin/keys/rotate"]');
        const button = form.querySelector("button");
        const live = button.nextElementSibling;
        sessionStorage.setItem("rotate-busy", JSON.stringify({
          busy: form.getAttribute("aria-busy"),
          disabled: button.disabled,
          status: live && live.getAttribute("aria-live") === "polite" ? live.textContent : null,
        }));
      }, 100));
  });
  await admin.getByRole("button", { name: "Rotate" }).dblclick();
  await admin.waitForURL(/\/admin\/keys\?rotated=/);
  await admin.unroute("**/admin/keys/rotate");
  assert.equal(rotations, 1, "a double click sent the rotation twice");
  assert.deepEqual(
    JSON.parse(await admin.evaluate(() => sessionStorage.getItem("rotate-busy"))),
    { busy: "true", disabled: true, status: "Working…" },
    "the form did not show it was working",
  );
  // The answer's page is not busy (the script marks a form only once it is sent).
  assert.equal(await admin.locator("form[aria-busy]").count(), 0);
  // The busy state for the screenshot and axe: a submit event the script handles as a real
  // one, which submits nothing (only a form's own submission navigates); reloaded after.
  await admin.evaluate(() =>
    document.querySelector('form[action="/admin/keys/rotate"]').dispatchEvent(new Event("submit", { bubbles: true, cancelable: true })));
  assert.deepEqual(await admin.evaluate(busyState), { busy: "true", disabled: true, status: "Working…" });
  await check(admin, "admin-keys-busy");
  await admin.reload();
  const fresh = new URL(admin.url()).searchParams.get("rotated");
  assert.notEqual(fresh, old.kid);
  assert.ok((await evidenceKeys()).some((k) => k.kid === fresh), "the new key is in the evidence keyring");
  assert.match(await admin.getByRole("status").textContent(), new RegExp(`A new key ${fresh} signs`));
  await admin.getByRole("link", { name: `Mark compromised… key ${old.kid}` }).click();
  await admin.waitForURL(`${BASE}/admin/keys/${old.kid}/compromise`);
  await admin.getByLabel(/Reason/).fill("Backup tape lost");
  await admin.getByLabel("Type the key id to confirm").fill("not-the-key");
  await check(admin, "admin-key-compromise");
  let mistyped;
  [mistyped] = await Promise.all([
    admin.waitForResponse((res) => res.request().method() === "POST"),
    admin.getByRole("button", { name: "Mark compromised" }).click(),
  ]);
  assert.equal(mistyped.status(), 422);
  assert.ok(!(await evidenceKeys()).find((k) => k.kid === old.kid).compromised_at, "nothing changed");
  await admin.goBack();
  await admin.getByLabel("Type the key id to confirm").fill(old.kid);
  await admin.getByLabel(/Reason/).fill("Backup tape lost");
  await admin.getByRole("button", { name: "Mark compromised" }).click();
  await admin.waitForURL(/\/admin\/keys\?compromised=/);
  assert.ok((await evidenceKeys()).find((k) => k.kid === old.kid).compromised_at);
  assert.match(await admin.locator("tbody tr", { hasText: old.kid }).textContent(), /compromised/);
  await check(admin, "admin-keys-after");

  // Retiring a key: the one that signs now is refused with the API's detail; after another
  // rotation the previous one is retired, after a confirmation.
  await admin.getByLabel("Keyring", { exact: true }).selectOption("evidence");
  await admin.getByRole("button", { name: "Rotate" }).click();
  await admin.waitForURL(/\/admin\/keys\?rotated=/);
  const newest = new URL(admin.url()).searchParams.get("rotated");
  await admin.getByRole("link", { name: `Retire… key ${newest}` }).click();
  await admin.waitForURL(`${BASE}/admin/keys/${newest}/retire`);
  await admin.getByLabel(/verifies nothing signed after now/).check();
  await check(admin, "admin-key-retire");
  const [signing] = await Promise.all([
    admin.waitForResponse((res) => res.request().method() === "POST"),
    admin.getByRole("button", { name: "Retire key" }).click(),
  ]);
  assert.ok(signing.status() >= 400, `${signing.status()}`);
  assert.match(await admin.getByRole("alert").textContent(), new RegExp(`key ${newest} signs now: rotate to another key before retiring it`));
  assert.ok(!(await evidenceKeys()).find((k) => k.kid === newest).retired_at, "nothing changed");
  await admin.goto(`${BASE}/admin/keys`);
  await admin.getByLabel("Keyring", { exact: true }).selectOption("evidence");
  await admin.getByRole("button", { name: "Rotate" }).click();
  await admin.waitForURL(/\/admin\/keys\?rotated=/);
  await admin.getByRole("link", { name: `Retire… key ${newest}` }).click();
  await admin.getByLabel(/verifies nothing signed after now/).check();
  await admin.getByRole("button", { name: "Retire key" }).click();
  await admin.waitForURL(/\/admin\/keys\?retired=/);
  assert.ok((await evidenceKeys()).find((k) => k.kid === newest).retired_at, "retired at the API");
  assert.match(await admin.locator("tbody tr", { hasText: newest }).textContent(), /retired/);
  assert.equal(await admin.getByRole("link", { name: `Retire… key ${newest}` }).count(), 0);

  // The crypto policy: a change QuantumLock refuses shows its detail and changes nothing; an
  // end date for ML-DSA-87's verification is set after a confirmation.
  const rule = async (algorithm) =>
    (await api(operator, "GET", "/crypto/policy", undefined, 200)).rules.find((r) => r.algorithm === algorithm);
  await admin.getByRole("link", { name: "Change… rule ML-DSA-65-Ed25519" }).click();
  await admin.waitForURL(`${BASE}/admin/keys/policy/ML-DSA-65-Ed25519`);
  await admin.getByLabel("Verifies", { exact: true }).uncheck();
  await admin.getByLabel(/I have checked/).check();
  await admin.getByRole("button", { name: "Change the rule" }).click();
  assert.match(await admin.getByRole("alert").textContent(), /an algorithm that may sign must also verify/);
  assert.equal((await rule("ML-DSA-65-Ed25519")).may_verify, true);
  await admin.goto(`${BASE}/admin/keys`);
  await admin.getByRole("link", { name: "Change… rule ML-DSA-87" }).click();
  await admin.waitForURL(`${BASE}/admin/keys/policy/ML-DSA-87`);
  await admin.getByLabel(/Verifies until/).fill("2031-01-01T00:00:00");
  await admin.getByLabel(/I have checked/).check();
  await check(admin, "admin-policy-rule");
  await admin.getByRole("button", { name: "Change the rule" }).click();
  await admin.waitForURL(/\/admin\/keys\?policy=ML-DSA-87/);
  assert.equal(Date.parse((await rule("ML-DSA-87")).verify_until), Date.parse("2031-01-01T00:00:00Z"));
  assert.match(await admin.locator("tbody tr", { hasText: "ML-DSA-87" }).last().textContent(), /2031-01-01/);
  await check(admin, "admin-keys-policy");
});

test("a person who denies the Portal access is told so and may sign in again", async () => {
  const operator = await adminToken();
  const { org, email } = await customerOrg(operator, "Initech");
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  await page.goto(`${BASE}/portal/contracts`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForSelector("text=Allow access?");
  await page.getByRole("button", { name: "Deny" }).click();
  await page.waitForURL(`${BASE}/portal/callback**`);
  assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Sign-in did not complete");
  assert.equal(await page.getByRole("alert").textContent(), "the user denied the request");
  await check(page, "portal-sign-in-denied");
  // No session was made: the Portal still sends the person to QSA (signed in there already).
  await page.getByRole("link", { name: "Sign in again" }).click();
  await page.waitForSelector("text=Allow access?");
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(`${BASE}/portal/`);
  assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Initech");

  // Lists come in pages of 20, in the API's order.
  await api(operator, "POST", "/customers", {
    organization_id: org, name: "Initech LLC", billing_email: "ap@initech.example", currency: "USD",
  }, 201);
  const ids = [];
  let last = 0;
  for (let i = 0; i < 21; i++) {
    const id = (await api(operator, "POST", "/contracts", {
      organization_id: org, starts_at: "2027-01-01T00:00:00Z", ends_at: "2028-01-01T00:00:00Z",
      line_items: [{ id: "seat", product: "tps-reports", edition: "basic", quantity: i + 1, unit_price: 1000, max_activations: 1 }],
    }, 201)).id;
    last = (await api(operator, "POST", `/contracts/${id}/send`, undefined, 200)).position;
    ids.push(id);
  }
  // The list is a read model: wait until it has the last change (read-your-writes).
  await api(operator, "GET", `/contracts?org=${org}&min_position=${last}&wait_ms=5000`, undefined, 200);
  await page.goto(`${BASE}/portal/contracts`);
  assert.equal(await page.locator("tbody tr").count(), 20);
  await page.getByRole("link", { name: "Next page" }).click();
  await page.waitForURL(/after=/);
  assert.deepEqual(await page.locator("tbody tr a").allTextContents(), [ids[20]]);
  assert.equal(await page.getByRole("link", { name: "Next page" }).count(), 0);
  await check(page, "portal-contracts-page-2");
  await page.getByRole("link", { name: "First page" }).click();
  await page.waitForURL(`${BASE}/portal/contracts`);
  assert.equal(await page.locator("tbody tr").count(), 20);
});
