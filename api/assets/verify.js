// The verify page: checks a licence file or an evidence archive in this browser, against the
// published key set (or one the auditor gives), and never sends the file anywhere. It
// reproduces, byte for byte, what `quantus license verify` and `quantus evidence verify` check
// (crypto/src: document.rs, algorithm.rs, keys.rs, license.rs, evidence.rs, checkpoint.rs,
// merkle.rs), and words each refusal as the command line does, so both answers can be compared.
// Signatures use the vendored noble libraries (noble.js, loaded before this script).
"use strict";
(() => {
  const N = globalThis.QuantusNoble;
  const utf8 = new TextEncoder();

  const LICENSE_CONTEXT = "quantus/license/v1";
  const EVIDENCE_CONTEXT = "quantus/evidence/v1";
  const CHECKPOINT_CONTEXT = "quantus/checkpoint/v1";
  const CRL_CONTEXT = "quantus/crl/v1";
  const CRL_FORMAT = "quantus-crl/1";
  // The command line's default --crl-max-age-hours.
  const CRL_MAX_AGE = 168n * 3600n * 1000000000n;
  const LICENSE_FORMAT = "quantus-license/1";
  const EVIDENCE_FORMAT = "quantus-evidence/1";
  // draft-ietf-lamps-pq-composite-sigs: the composite's message representative.
  const COMPOSITE_PREFIX = utf8.encode("CompositeAlgorithmSignatures2025");
  const COMPOSITE_LABEL = utf8.encode("COMPSIG-MLDSA65-Ed25519-SHA512");
  // Public key and signature sizes by algorithm (FIPS 204, RFC 8032).
  const SIZES = {
    Ed25519: [32, 64],
    "ML-DSA-44": [1312, 2420],
    "ML-DSA-65": [1952, 3309],
    "ML-DSA-87": [2592, 4627],
    "ML-DSA-65-Ed25519": [1952 + 32, 3309 + 64],
  };
  const PURPOSE_NAMES = { license: "License", evidence: "Evidence", token: "Token", checkpoint: "Checkpoint" };

  /** A refusal, worded as the command line words it. */
  class Invalid extends Error {}

  // ---- bytes ----

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  /** base64 (standard alphabet with padding, or base64url without), strictly: null if not. */
  function base64(text, url) {
    if (typeof text !== "string") return null;
    const ok = url ? /^[A-Za-z0-9_-]*$/.test(text) && text.length % 4 !== 1 : /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text);
    if (!ok) return null;
    let b64 = url ? text.replace(/-/g, "+").replace(/_/g, "/") : text;
    while (b64.length % 4) b64 += "=";
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    // Canonical encodings only: unused trailing bits must be zero, as the Rust decoder asks.
    const back = btoa(String.fromCharCode(...bytes));
    return back === b64 ? bytes : null;
  }

  function hex32(text) {
    if (typeof text !== "string" || !/^[0-9a-fA-F]{64}$/.test(text)) {
      throw new Invalid(`the manifest is malformed: ${JSON.stringify(text)} is not a 32-byte hex hash`);
    }
    return Uint8Array.from(text.match(/../g), (h) => parseInt(h, 16));
  }

  async function sha256(bytes) {
    // WebCrypto where the page is a secure context (fast for large artifacts), noble elsewhere.
    if (globalThis.crypto?.subtle) return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return N.sha256(bytes);
  }

  // ---- RFC 8785 canonical JSON (what every signature covers) ----

  function canonical(v) {
    if (v === null || typeof v === "boolean" || typeof v === "string") return JSON.stringify(v);
    if (typeof v === "number") return JSON.stringify(v);
    if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
    // Keys sorted by UTF-16 code units, which is what Array.prototype.sort does.
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
  }

  /** SignedDocument::from_canonical_json: the one encoding, optionally one final line feed. */
  function signedDocument(bytes, prefix) {
    let body = bytes;
    if (body.length && body[body.length - 1] === 0x0a) body = body.subarray(0, body.length - 1);
    const fail = (why) => new Invalid(`${prefix}not a signed document: ${why}`);
    let text;
    let doc;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(body);
      doc = JSON.parse(text);
    } catch (e) {
      throw fail(e.message);
    }
    if (doc === null || typeof doc !== "object" || Array.isArray(doc)) throw fail("not a JSON object");
    for (const k of Object.keys(doc)) if (k !== "payload" && k !== "signatures") throw fail(`unknown field \`${k}\``);
    if (!("payload" in doc)) throw fail("missing field `payload`");
    if (!Array.isArray(doc.signatures)) throw fail("missing field `signatures`");
    for (const s of doc.signatures) {
      if (!s || typeof s.kid !== "string" || typeof s.alg !== "string" || typeof s.sig !== "string" || Object.keys(s).length !== 3) {
        throw fail("a signature is not {kid, alg, sig}");
      }
      if (!(s.alg in SIZES)) throw fail(`unknown algorithm ${s.alg}`);
    }
    if (canonical(doc) !== text) throw fail("not in canonical form (RFC 8785)");
    return doc;
  }

  // ---- instants (RFC 3339, to the nanosecond, as chrono keeps them) ----

  const INSTANT = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

  /** Nanoseconds since the epoch (BigInt), or null when not an instant. */
  function instant(text) {
    const m = typeof text === "string" && INSTANT.exec(text);
    if (!m) return null;
    const [, y, mo, d, h, mi, s, frac, zone] = m;
    let ms = Date.UTC(+y, +mo - 1, +d, +h, +mi, +s);
    if (zone.toUpperCase() !== "Z") {
      const sign = zone[0] === "-" ? -1 : 1;
      ms -= sign * (+zone.slice(1, 3) * 60 + +zone.slice(4, 6)) * 60000;
    }
    const nanos = frac ? BigInt(frac.slice(1).padEnd(9, "0")) : 0n;
    return BigInt(ms) * 1000000n + nanos;
  }

  const now = () => BigInt(Date.now()) * 1000000n;
  const LATEST = instant("9999-12-31T23:59:59Z");

  function parts(nanos) {
    const ms = Number(nanos / 1000000n) - (nanos % 1000000000n < 0n ? 1000 : 0);
    const date = new Date(Math.floor(ms / 1000) * 1000).toISOString();
    const n = Number(((nanos % 1000000000n) + 1000000000n) % 1000000000n);
    // chrono prints 0, 3, 6 or 9 fractional digits, as few as hold the value.
    const frac = n === 0 ? "" : n % 1000000 === 0 ? `.${String(n / 1000000).padStart(3, "0")}` : n % 1000 === 0 ? `.${String(n / 1000).padStart(6, "0")}` : `.${String(n).padStart(9, "0")}`;
    return [date.slice(0, 10), date.slice(11, 19) + frac];
  }

  /** chrono's `to_rfc3339()`. */
  const rfc3339 = (nanos) => parts(nanos).join("T") + "+00:00";
  /** chrono's `Display` of a UTC instant. */
  const shown = (nanos) => `${parts(nanos).join(" ")} UTC`;

  // ---- the key set (crypto/src/keys.rs) ----

  async function keySet(bytes, prefix = "") {
    const fail = (why) => new Invalid(`${prefix}invalid key set: ${why}`);
    let set;
    try {
      set = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    } catch (e) {
      throw fail(e.message);
    }
    if (!set || !Array.isArray(set.keys) || !set.policy || !Array.isArray(set.policy.verify)) {
      throw fail("not a key set: {keys, policy} expected");
    }
    const keys = [];
    for (const k of set.keys) {
      if (!k || typeof k.kid !== "string" || !(k.alg in SIZES) || !(k.purpose in PURPOSE_NAMES)) throw fail("a key lacks its kid, alg or purpose");
      const bytes = base64(k.public_key, true);
      if (!bytes) throw fail(`key ${k.kid} is not base64url`);
      const expected = SIZES[k.alg][0];
      if (bytes.length !== expected) throw fail(`key ${k.kid}: ${k.alg} expects a ${expected}-byte public key, got ${bytes.length}`);
      const kid = hex((await sha256(concat(utf8.encode(k.alg), [0], bytes))).subarray(0, 16));
      if (kid !== k.kid) throw fail(`key ${k.kid} does not match its kid (${kid})`);
      const at = (field) => {
        if (k[field] === undefined || k[field] === null) return null;
        const t = instant(k[field]);
        if (t === null) throw fail(`key ${k.kid}: ${field} is not an RFC 3339 instant`);
        return t;
      };
      keys.push({ ...k, bytes, notBefore: at("not_before"), retiredAt: at("retired_at"), compromisedAt: at("compromised_at") });
    }
    const verify = set.policy.verify.map((r) => ({ alg: r.alg, until: r.until ? instant(r.until) : null }));
    return { keys, verify };
  }

  /** TrustedKeys::accepts: null, or why the key may not vouch. */
  function rejection(keys, key, purpose, signedAt, at) {
    if (key.purpose !== purpose) return `key ${key.kid} is for ${PURPOSE_NAMES[key.purpose]}, not ${PURPOSE_NAMES[purpose]}`;
    const rule = keys.verify.find((r) => r.alg === key.alg);
    if (!rule) return `algorithm ${key.alg} is not allowed to verify by the crypto policy`;
    if (rule.until !== null && at >= rule.until) return `algorithm ${key.alg} stopped being allowed to verify at ${shown(rule.until)}`;
    if (signedAt < key.notBefore) return `key ${key.kid} is not valid before ${shown(key.notBefore)}`;
    if (key.retiredAt !== null && at >= key.retiredAt) return `key ${key.kid} was retired at ${shown(key.retiredAt)}`;
    if (key.compromisedAt !== null && signedAt >= key.compromisedAt) {
      return `key ${key.kid} is compromised since ${shown(key.compromisedAt)}; this was signed at ${shown(signedAt)}`;
    }
    return null;
  }

  // ---- signatures (crypto/src/algorithm.rs) ----

  function mldsa(alg, pk, message, ctx, sig) {
    const scheme = { "ML-DSA-44": N.ml_dsa44, "ML-DSA-65": N.ml_dsa65, "ML-DSA-87": N.ml_dsa87 }[alg];
    try {
      return scheme.verify(sig, message, pk, { context: ctx });
    } catch {
      return false;
    }
  }

  function ed25519Key(pk) {
    try {
      N.ed25519.Point.fromBytes(pk, true);
      return true;
    } catch {
      return false;
    }
  }

  function ed25519(pk, message, sig) {
    try {
      // Strict, as ed25519-dalek's verify_strict: canonical encodings, no small-order key.
      return N.ed25519.verify(sig, message, pk, { zip215: false });
    } catch {
      return false;
    }
  }

  /**
   * PublicKey::verify: null when the signature holds, else the reason. `halves` receives one
   * entry per algorithm a composite signature combines, for the page to show.
   */
  function verifySignature(alg, pk, message, context, sig, halves) {
    const ctx = utf8.encode(context);
    const [pkLen, sigLen] = SIZES[alg];
    if (pk.length !== pkLen) return `${alg} expects a ${pkLen}-byte public key, got ${pk.length}`;
    if (sig.length !== sigLen) return `${alg} expects a ${sigLen}-byte signature, got ${sig.length}`;
    if (alg === "Ed25519") {
      if (!ed25519Key(pk)) return `the ${alg} public key is malformed`;
      return ed25519(pk, concat([ctx.length], ctx, message), sig) ? null : `the ${alg} signature does not verify`;
    }
    if (alg !== "ML-DSA-65-Ed25519") return mldsa(alg, pk, message, ctx, sig) ? null : `the ${alg} signature does not verify`;
    const m = concat(COMPOSITE_PREFIX, COMPOSITE_LABEL, [ctx.length], ctx, N.sha512(message));
    const [pqPk, edPk] = [pk.subarray(0, 1952), pk.subarray(1952)];
    const pq = mldsa("ML-DSA-65", pqPk, m, COMPOSITE_LABEL, sig.subarray(0, 3309));
    const edKey = ed25519Key(edPk);
    const ed = edKey && ed25519(edPk, m, sig.subarray(3309));
    halves.push(["ML-DSA-65", pq], ["Ed25519", ed]);
    if (!edKey) return `the ${alg} public key is malformed`;
    if (!pq) return "the ML-DSA-65 half of the composite signature does not verify";
    if (!ed) return "the Ed25519 half of the composite signature does not verify";
    return null;
  }

  /**
   * SignedDocument::verify: the first signature by a trusted key that the policy accepts and
   * that verifies; signatures by unknown keys are passed over; else the first reason found.
   */
  function verifyDocument(doc, keys, purpose, context, signedAt, report) {
    const message = utf8.encode(canonical(doc.payload));
    let first = null;
    for (const s of doc.signatures) {
      const key = keys.keys.find((k) => k.kid === s.kid);
      if (!key) {
        report.row(`Signature by ${s.kid}`, "skipped", "not a key of the trusted key set");
        continue;
      }
      const reason = (() => {
        if (key.alg !== s.alg) return `signature by ${s.kid} claims ${s.alg} but the key is ${key.alg}`;
        const rejected = rejection(keys, key, purpose, signedAt, now());
        if (rejected) {
          report.row(`Key ${key.kid}`, "failed", rejected);
          return rejected;
        }
        report.row(`Key ${key.kid}`, "passed", `trusted for ${purpose} signatures; ${key.alg} allowed by the crypto policy; not retired; not compromised when this was signed`);
        const sig = base64(s.sig, true);
        if (!sig) return `not a signed document: signature by ${s.kid} is not base64url`;
        const halves = [];
        const bad = verifySignature(key.alg, key.bytes, message, context, sig, halves);
        for (const [alg, ok] of halves) {
          report.row(`${alg} part of the ${key.alg} signature`, ok ? "passed" : "failed", ok ? "verifies" : "does not verify");
        }
        report.row(`${key.alg} signature by ${s.kid}`, bad ? "failed" : "passed", bad ? bad : `verifies over the canonical payload (context ${context})`);
        return bad ? `bad signature by ${s.kid}: ${bad}` : null;
      })();
      if (reason === null) return s;
      first ??= reason;
    }
    throw new Invalid(first ?? `no signature is by a trusted key (kids: ${doc.signatures.map((s) => s.kid).join(", ")})`);
  }

  // ---- licence files (crypto/src/license.rs) ----

  async function verifyLicense(bytes, keys, fingerprint, report) {
    const doc = signedDocument(bytes, "");
    const l = doc.payload;
    const malformed = (why) => new Invalid(`not a licence file: ${why}`);
    if (!l || typeof l !== "object" || Array.isArray(l)) throw malformed("the payload is not an object");
    const times = {};
    for (const f of ["issued_at", "not_before", "expires_at"]) {
      times[f] = instant(l[f]);
      if (times[f] === null || times[f] < 0n || times[f] > LATEST) throw malformed(`${f} is not an instant between 1970 and 9999`);
    }
    if (l.format !== LICENSE_FORMAT) throw malformed(`format ${JSON.stringify(l.format)} is not ${LICENSE_FORMAT}`);
    if (!Number.isSafeInteger(l.grace_period_seconds) || l.grace_period_seconds < 0) throw malformed("grace_period_seconds is not a whole number of seconds");
    const graceEnds = times.expires_at + BigInt(l.grace_period_seconds) * 1000000000n;
    if (graceEnds > LATEST) throw malformed("the grace period ends past 9999-12-31T23:59:59Z");
    report.row("Format", "passed", `${LICENSE_FORMAT}, licence ${l.license_id} for organization ${l.organization_id}`);

    const signedBy = verifyDocument(doc, keys, "license", LICENSE_CONTEXT, times.issued_at, report);
    const crl = await revocation(l.license_id, keys, report);

    const at = now();
    if (at < times.not_before) {
      report.row("Validity dates", "failed", `not valid before ${rfc3339(times.not_before)}`);
      throw new Invalid(`licence is not valid before ${shown(times.not_before)}`);
    }
    let standing;
    if (at < times.expires_at) {
      standing = `until ${rfc3339(times.expires_at)}`;
    } else if (at < graceEnds) {
      standing = `expired, in grace period until ${rfc3339(graceEnds)}`;
    } else {
      report.row("Validity dates", "failed", `expired at ${rfc3339(times.expires_at)}`);
      throw new Invalid(`licence expired at ${shown(times.expires_at)} and its grace period ended at ${shown(graceEnds)}`);
    }
    report.row("Validity dates", "passed", `from ${rfc3339(times.not_before)}, valid ${standing}`);
    if (typeof l.machine_fingerprint === "string") {
      if (!fingerprint) {
        report.row("Machine binding", "failed", "bound to one machine: give its fingerprint");
        throw new Invalid("licence is bound to a machine: give the machine's fingerprint");
      }
      if (fingerprint !== l.machine_fingerprint) {
        report.row("Machine binding", "failed", "bound to another machine");
        throw new Invalid("licence is bound to another machine");
      }
      report.row("Machine binding", "passed", "bound to the machine with the given fingerprint");
    } else {
      report.row("Machine binding", "skipped", "not bound to a machine");
    }
    return [`valid: licence ${l.license_id} for ${l.organization_id} (${l.product} ${l.edition}) ${standing}; signed by ${signedBy.kid}; ${crl === null ? "no CRL checked" : `CRL #${crl} checked`}`];
  }

  /**
   * The platform's published CRL (`/verify/crl`), trusted only once its signature verifies
   * against the key set (Crl::verify, the command line's --crl with its default maximum age).
   * Throws when it names the licence or cannot be trusted; answers its serial, or null when
   * the platform did not answer (then, as without --crl, no CRL is checked).
   */
  async function revocation(licenseId, keys, report) {
    let bytes;
    try {
      const res = await fetch("/verify/crl", { credentials: "omit", headers: { accept: "application/json" } });
      if (!res.ok) throw new Error(`the platform answered ${res.status}`);
      bytes = new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      report.row("Revocation list", "skipped", `the published CRL could not be loaded (${e.message}): no CRL checked`);
      return null;
    }
    const invalid = (why) => {
      report.row("Revocation list", "failed", `the published CRL is not trusted: ${why}`);
      return new Invalid(`CRL is not valid: ${why}`);
    };
    const doc = signedDocument(bytes, "CRL: ");
    const list = doc.payload;
    if (!list || typeof list !== "object" || Array.isArray(list)) throw invalid("the payload is not an object");
    const issued = instant(list.issued_at);
    if (issued === null) throw invalid("issued_at is not an RFC 3339 instant");
    if (!Number.isSafeInteger(list.serial) || list.serial < 0) throw invalid("serial is not a whole number");
    if (!Array.isArray(list.entries) || list.entries.some((e) => !e || typeof e.license_id !== "string" || typeof e.reason !== "string" || instant(e.revoked_at) === null)) {
      throw invalid("entries are not {license_id, reason, revoked_at}");
    }
    if (list.format !== CRL_FORMAT) throw invalid(`format ${JSON.stringify(list.format)} is not ${CRL_FORMAT}`);
    // The CRL's own signature rows, told apart from the licence's.
    const rows = { row: (what, outcome, detail) => report.row(`CRL: ${what}`, outcome, detail) };
    try {
      verifyDocument(doc, keys, "license", CRL_CONTEXT, issued, rows);
    } catch (e) {
      if (e instanceof Invalid) throw invalid(e.message);
      throw e;
    }
    if (now() - issued > CRL_MAX_AGE) {
      report.row("Revocation list", "failed", `the published CRL is older than ${CRL_MAX_AGE / 3600000000000n} hours`);
      throw new Invalid(`CRL was issued at ${shown(issued)}, more than the allowed ${CRL_MAX_AGE / 1000000000n} s ago`);
    }
    const entry = list.entries.find((e) => e.license_id === licenseId);
    if (entry) {
      report.row("Revocation list", "failed", `revoked (named in the CRL of ${rfc3339(issued)}, #${list.serial}): ${entry.reason}`);
      throw new Invalid(`licence was revoked at ${shown(instant(entry.revoked_at))}: ${entry.reason}`);
    }
    report.row("Revocation list", "passed", `not named in the CRL of ${rfc3339(issued)} (#${list.serial}, ${list.entries.length} revoked licences)`);
    return list.serial;
  }

  // ---- evidence archives (commands/src/evidence.rs unpack, crypto/src/evidence.rs) ----

  /** The files of a tar archive (ustar, GNU long names, pax paths), by path. */
  function untar(bytes) {
    const files = new Map();
    const text = (b) => new TextDecoder().decode(b.subarray(0, b.indexOf(0) < 0 ? b.length : b.indexOf(0)));
    let at = 0;
    let longName = null;
    while (at + 512 <= bytes.length) {
      const h = bytes.subarray(at, at + 512);
      if (h.every((b) => b === 0)) break;
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : h[i];
      const recorded = parseInt(text(h.subarray(148, 156)).trim(), 8);
      if (sum !== recorded) throw new Invalid(at === 0 ? "not a tar archive" : "broken archive entry: bad header checksum");
      const size = parseInt(text(h.subarray(124, 136)).trim() || "0", 8);
      const type = String.fromCharCode(h[156] || 0x30);
      const start = at + 512;
      if (!Number.isSafeInteger(size) || start + size > bytes.length) throw new Invalid("broken archive entry: truncated");
      const data = bytes.subarray(start, start + size);
      at = start + Math.ceil(size / 512) * 512;
      if (type === "L") {
        longName = text(data);
        continue;
      }
      if (type === "x") {
        const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(new TextDecoder().decode(data));
        if (path) longName = path[1];
        continue;
      }
      let name = longName ?? text(h.subarray(0, 100));
      const magic = text(h.subarray(257, 263));
      if (longName === null && magic === "ustar") {
        const prefix = text(h.subarray(345, 500));
        if (prefix) name = `${prefix}/${name}`;
      }
      longName = null;
      if (type !== "0" && type !== "\0" && type !== "7") continue;
      files.set(name, data);
    }
    return files;
  }

  async function verifyEvidence(bytes, keys, source, report) {
    const files = new Map();
    for (const [path, data] of untar(bytes)) {
      // Paths are `evidence-<id>/<file>`; anything else is passed over, as by the command line.
      const slash = path.indexOf("/");
      if (slash < 0) continue;
      const inner = path.slice(slash + 1);
      if (!inner || inner.includes("..")) continue;
      files.set(inner, data);
    }
    const manifestBytes = files.get("manifest.json");
    if (!manifestBytes) throw new Invalid("the archive has no manifest.json");
    files.delete("manifest.json");
    const doc = signedDocument(manifestBytes, "manifest.json: ");
    if (files.has("keys.json")) {
      const own = await keySet(files.get("keys.json"), "keys.json: ");
      report.row("Archive's own key set", "skipped", `${own.keys.length} keys; not used: checked with ${source}`);
      files.delete("keys.json");
    }
    const m = doc.payload;
    const malformed = (why) => new Invalid(`the manifest is malformed: ${why}`);
    if (!m || typeof m !== "object" || Array.isArray(m)) throw malformed("not an object");
    const created = instant(m.created_at);
    if (created === null) throw malformed("created_at is not an RFC 3339 instant");
    if (!Array.isArray(m.artifacts) || !Array.isArray(m.events) || !m.checkpoint) throw malformed("artifacts, events and checkpoint are required");
    if (m.format !== EVIDENCE_FORMAT) throw malformed(`unknown format ${JSON.stringify(m.format)}`);
    report.row("Format", "passed", `${EVIDENCE_FORMAT}, bundle ${m.bundle_id} of job ${m.job_id}`);

    let signedBy;
    try {
      signedBy = verifyDocument(doc, keys, "evidence", EVIDENCE_CONTEXT, created, report);
    } catch (e) {
      if (e instanceof Invalid) throw new Invalid(`the manifest's signature: ${e.message}`);
      throw e;
    }

    // Every `<name>_sha256` the manifest records vouches for the archive's `<name>.json`, when
    // the archive carries it: the configuration snapshot, and files later formats add.
    let configChecked = false;
    for (const field of Object.keys(m).filter((f) => f.endsWith("_sha256")).sort()) {
      const name = field.slice(0, -"_sha256".length);
      // `config_sha256` names `config.json`; `job_state_sha256` names `job-state.json`.
      const data = files.get(`${name}.json`) ?? files.get(`${name.replaceAll("_", "-")}.json`);
      const what = name === "config" ? "Configuration snapshot" : `${name}.json`;
      if (!data) {
        report.row(what, "skipped", "not included (digest vouched for by the manifest)");
        continue;
      }
      if (hex(await sha256(data)) !== m[field]) {
        report.row(what, "failed", `does not have the recorded SHA-256 ${m[field]}`);
        throw new Invalid(name === "config" ? "the configuration snapshot does not have the recorded SHA-256" : `${name}.json does not have the recorded SHA-256`);
      }
      if (name === "config") configChecked = true;
      report.row(what, "passed", `SHA-256 ${m[field]}`);
    }

    const artifactLines = [];
    for (const a of m.artifacts) {
      const data = files.get(`artifacts/${a.name}`);
      let state;
      if (data) {
        if (hex(await sha256(data)) !== a.sha256 || data.length !== a.size) {
          report.row(`Artifact ${a.name}`, "failed", `does not have the recorded SHA-256 ${a.sha256} or size ${a.size}`);
          throw new Invalid(`artifact ${JSON.stringify(a.name)} does not have the recorded SHA-256 or size`);
        }
        state = "verified";
        report.row(`Artifact ${a.name}`, "passed", `SHA-256 ${a.sha256}, ${a.size} bytes`);
      } else if (typeof a.purged_by === "string") {
        state = `purged by retention policy ${a.purged_by} (digest vouched for by the manifest)`;
        report.row(`Artifact ${a.name}`, "skipped", state);
      } else {
        state = "not included (digest vouched for by the manifest)";
        report.row(`Artifact ${a.name}`, "skipped", state);
      }
      artifactLines.push(`artifact ${a.name}: ${state}`);
    }

    const cp = await openCheckpoint(m.checkpoint.note, keys);
    if (cp.size !== BigInt(m.checkpoint.tree_size) || hex(cp.root) !== m.checkpoint.root_hash) {
      report.row("Log checkpoint", "failed", "does not match the manifest's tree size or root");
      throw new Invalid("the signed checkpoint does not match the manifest's tree size or root");
    }
    report.row("Log checkpoint", "passed", `signed tree head of ${cp.size} events, root ${hex(cp.root)}`);

    for (const e of m.events) {
      const path = (e.inclusion_path || []).map((p) => {
        const b = base64(p, false);
        if (!b || b.length !== 32) throw malformed("an inclusion path hash is not 32 bytes of base64");
        return b;
      });
      const leaf = await sha256(concat([0], hex32(e.hash)));
      const included = e.position > 0 && (await verifyInclusion(leaf, BigInt(e.position - 1), cp.size, path, cp.root));
      if (!included) {
        report.row(`Event ${e.position}`, "failed", `${e.event_type} is not included in the signed checkpoint`);
        throw new Invalid(`the event at position ${e.position} is not included in the signed checkpoint`);
      }
    }
    report.row("Events", "passed", `${m.events.length} job events, each with its inclusion proof in the checkpoint`);

    // The submitter's state at job time (job-state.json, vouched for by the manifest above):
    // each of its events proven in the checkpoint here; the summary is shown as signed (the
    // CLI also derives it again from the events).
    let stateLines = ["job state: not in this bundle (made before bundles carried it)"];
    const stateFile = files.get("job-state.json");
    if (m.job_state_sha256 !== undefined && !stateFile) {
      throw new Invalid("the archive has no job-state.json, which the manifest names");
    }
    if (stateFile) {
      let state;
      try {
        state = JSON.parse(new TextDecoder().decode(stateFile));
      } catch {
        throw new Invalid("job-state.json is malformed: not JSON");
      }
      for (const e of [state.job, ...(state.events || [])]) {
        const path = (e.inclusion_path || []).map((p) => base64(p, false));
        if (path.some((b) => !b || b.length !== 32)) throw new Invalid("job-state.json is malformed: an inclusion path hash is not 32 bytes of base64");
        const leaf = await sha256(concat([0], hex32(e.hash)));
        if (!(e.position > 0 && (await verifyInclusion(leaf, BigInt(e.position - 1), cp.size, path, cp.root)))) {
          report.row("Job state", "failed", `the event at position ${e.position} is not included in the signed checkpoint`);
          throw new Invalid(`job-state.json: the event at position ${e.position} is not included in the signed checkpoint`);
        }
      }
      report.row("Job state", "passed", `${1 + (state.events || []).length} events, each with its inclusion proof in the checkpoint; summary as signed`);
      stateLines = jobStateLines(state.summary);
    }

    return [
      `valid: evidence bundle ${m.bundle_id} for job ${m.job_id} of organization ${m.organization_id}`,
      `signed by ${signedBy.kid} (checked with ${source})`,
      `configuration ${m.config_sha256}: ${configChecked ? "verified" : "not included"}`,
      `events: ${m.events.length} included in the checkpoint of ${m.checkpoint.tree_size} events`,
      ...artifactLines,
      ...stateLines,
    ];
  }

  /** The CLI's job-state lines (src/cli/evidence.rs), the header saying what was checked here. */
  function jobStateLines(st) {
    const s = st.submitter;
    const name = s.name != null ? ` ${JSON.stringify(s.name)}` : s.name_sealed ? " (name sealed)" : "";
    const lines = [
      `job state as of position ${st.position} (${st.as_of}), events proven in the log, summary as signed:`,
      `  submitted by ${s.kind} ${s.id}${name} of organization ${s.organization_id ?? "(none recorded)"}, ${s.status}`,
      `  roles in organization ${st.organization_id}: ${s.roles.length ? s.roles.join(", ") : "none"}`,
    ];
    if (!st.licenses.length) lines.push("  licences: none");
    for (const l of st.licenses) {
      const t = l.terms || {};
      const features = Array.isArray(t.features) ? t.features.filter((f) => typeof f === "string") : [];
      lines.push(
        `  licence ${l.id}: ${l.status}${l.in_force ? " (in force)" : " (not in force)"}, ${t.product ?? ""} ${t.edition ?? ""}, features [${features.join(", ")}], valid ${t.not_before ?? ""} to ${t.expires_at ?? ""}`,
      );
    }
    return lines;
  }

  /** RFC 9162 §2.1.3.2 inclusion proof (crypto/src/merkle.rs). */
  async function verifyInclusion(leaf, index, size, proof, root) {
    if (index >= size) return false;
    let [fnum, snum, r] = [index, size - 1n, leaf];
    for (const p of proof) {
      if (snum === 0n) return false;
      if ((fnum & 1n) === 1n || fnum === snum) {
        r = await sha256(concat([1], p, r));
        if ((fnum & 1n) === 0n) {
          while ((fnum & 1n) === 0n && fnum !== 0n) {
            fnum >>= 1n;
            snum >>= 1n;
          }
        }
      } else {
        r = await sha256(concat([1], r, p));
      }
      fnum >>= 1n;
      snum >>= 1n;
    }
    return snum === 0n && equal(r, root);
  }

  /** checkpoint::open: a C2SP signed note verified with a trusted checkpoint key. */
  async function openCheckpoint(note, keys) {
    const bad = (why) => new Invalid(`the log checkpoint: the checkpoint is malformed: ${why}`);
    if (typeof note !== "string") throw bad("no note");
    const split = note.indexOf("\n\n");
    if (split < 0) throw bad("no blank line before the signatures");
    const body = `${note.slice(0, split)}\n`;
    const lines = body.split("\n");
    if (!lines[0]) throw bad("no origin");
    if (!/^(0|[1-9]\d*)$/.test(lines[1] ?? "")) throw bad("the size is not a decimal number");
    const root = base64(lines[2] ?? "", false);
    if (!root || root.length !== 32) throw bad("the root is not 32 bytes of base64");
    if (lines.length !== 4) throw bad("the body has extension lines");
    const checkpoint = { size: BigInt(lines[1]), root };
    let matched = false;
    for (const line of note.slice(split + 2).split("\n").filter((l, i, all) => l || i < all.length - 1)) {
      if (!line.startsWith("\u2014 ")) throw bad("a signature line lacks the dash");
      const rest = line.slice(2);
      const space = rest.indexOf(" ");
      if (space < 0) throw bad("a signature line lacks its key name");
      const name = rest.slice(0, space);
      const blob = base64(rest.slice(space + 1), false);
      if (!blob) throw bad("a signature is not base64");
      if (blob.length < 5) throw bad("a signature is too short");
      const [id, sig] = [blob.subarray(0, 4), blob.subarray(4)];
      for (const key of keys.keys.filter((k) => k.purpose === "checkpoint")) {
        const type = key.alg === "Ed25519" ? [0x01] : concat([0xff], utf8.encode(key.alg), [0]);
        const keyId = (await sha256(concat(utf8.encode(name), [0x0a], type, key.bytes))).subarray(0, 4);
        if (!equal(keyId, id)) continue;
        // A checkpoint carries no signing time: a key compromised at any time vouches for none.
        if (key.compromisedAt !== null || rejection(keys, key, "checkpoint", now(), now())) continue;
        matched = true;
        const halves = [];
        if (verifySignature(key.alg, key.bytes, utf8.encode(body), CHECKPOINT_CONTEXT, sig, halves) === null) return checkpoint;
      }
    }
    throw new Invalid(matched ? "the log checkpoint: the checkpoint's signature does not verify" : "the log checkpoint: no signature on the checkpoint is by a trusted checkpoint key");
  }

  // ---- the page ----

  const $ = (id) => document.getElementById(id);
  let trusted = null; // { keys, source }
  let published = null;
  let last = null; // the last file checked: { name, bytes }

  function badge(outcome) {
    const span = document.createElement("span");
    span.className = `badge s-${outcome === "failed" ? "failed-check" : outcome}`;
    span.textContent = outcome;
    return span;
  }

  let generation = 0;

  async function check(name, bytes) {
    last = { name, bytes };
    // A newer check (another file, another key set) supersedes this one on the page.
    const mine = ++generation;
    const rows = $("checks");
    rows.replaceChildren();
    const report = {
      row(what, outcome, detail) {
        if (mine !== generation) return;
        const tr = document.createElement("tr");
        const th = document.createElement("th");
        th.scope = "row";
        th.textContent = what;
        const state = document.createElement("td");
        state.dataset.label = "Outcome";
        state.append(badge(outcome));
        const td = document.createElement("td");
        td.dataset.label = "Detail";
        td.className = "detail";
        td.textContent = detail;
        tr.append(th, state, td);
        rows.append(tr);
      },
    };
    $("result").hidden = false;
    $("result-name").textContent = name;
    const verdict = $("verdict");
    verdict.className = "verdict checking";
    verdict.textContent = "Checking…";
    $("checks").closest(".table-wrap").setAttribute("aria-busy", "true");
    let lines;
    try {
      if (!trusted) throw new Invalid("no trusted key set: the published one could not be loaded; choose a key set file");
      const first = bytes.find((b) => ![0x20, 0x09, 0x0a, 0x0d].includes(b));
      lines = first === 0x7b
        ? await verifyLicense(bytes, trusted.keys, $("fingerprint").value.trim(), report)
        : await verifyEvidence(bytes, trusted.keys, trusted.source, report);
    } catch (e) {
      lines = [`invalid: ${e instanceof Invalid ? e.message : `the file could not be checked: ${e.message}`}`];
    }
    if (mine !== generation) return;
    $("checks").closest(".table-wrap").removeAttribute("aria-busy");
    verdict.className = `verdict ${lines[0].startsWith("valid:") ? "valid" : "invalid"}`;
    verdict.replaceChildren();
    lines.forEach((line, i) => {
      if (i) verdict.append(document.createElement("br"));
      const span = document.createElement("span");
      span.className = "line";
      span.textContent = line;
      verdict.append(span);
    });
    $("result-h").focus();
  }

  async function readFile(file) {
    return new Uint8Array(await file.arrayBuffer());
  }

  async function usePublished() {
    if (!published) {
      const res = await fetch("/verify/keys.json", { credentials: "omit", headers: { accept: "application/json" } });
      if (!res.ok) throw new Error(`the platform answered ${res.status}`);
      published = await keySet(new Uint8Array(await res.arrayBuffer()));
    }
    trusted = { keys: published, source: "the published key set" };
    $("keys-status").textContent = `Using the published key set of this platform (${published.keys.length} keys).`;
    $("keys-published").hidden = true;
  }

  function start() {
    const drop = $("dropzone");
    const input = $("file");
    input.addEventListener("change", async () => {
      if (input.files[0]) await check(input.files[0].name, await readFile(input.files[0]));
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => {
        e.preventDefault();
        drop.classList.add("over");
      });
    }
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", async (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = e.dataTransfer.files[0];
      if (file) await check(file.name, await readFile(file));
    });
    $("keys-file").addEventListener("change", async (e) => {
      const file = e.target.files[0];
      if (!file) return;
      try {
        trusted = { keys: await keySet(await readFile(file)), source: "the given key set" };
        $("keys-status").textContent = `Using the key set file ${file.name} (${trusted.keys.keys.length} keys).`;
        $("keys-published").hidden = false;
      } catch (err) {
        trusted = null;
        $("keys-status").textContent = `That key set cannot be used: ${err.message}`;
      }
      if (last) await check(last.name, last.bytes);
    });
    $("keys-published").addEventListener("click", async () => {
      await usePublished();
      if (last) await check(last.name, last.bytes);
    });
    usePublished().catch((err) => {
      $("keys-status").textContent = `The published key set could not be loaded (${err.message}); choose a key set file.`;
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
