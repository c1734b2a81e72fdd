#!/usr/bin/env python3
"""Independent cross-check of quantus-crypto's signatures (crypto/src/algorithm.rs).

Nothing here calls the Rust code. Keys, signatures and the composite message representative
are recomputed with PyCA `cryptography` (OpenSSL's ML-DSA and Ed25519) and `hashlib`.

Install:  pip install -r tests/crosscheck/requirements.txt
          (cryptography >= 47: the first release with ML-DSA, context strings and
          `from_seed_bytes`; cryptography-vectors only for `export-vectors` and its test)

Commands
--------
  crosscheck.py verify FILE          check every vector of FILE (made by the Rust side)
  crosscheck.py sign OUT             write vectors signed here, for the Rust side to verify
  crosscheck.py export-vectors OUT   write known-answer ML-DSA / Ed25519 vectors, from the
                                     cryptography-vectors package, for the Rust side

Exit codes: 0 every vector as expected; 1 at least one MISMATCH (or a malformed FILE, or bad usage);
2 a needed library cannot be imported or lacks ML-DSA (the message says what to install).

The algorithms (as the Rust side defines them)
----------------------------------------------
  Ed25519            RFC 8032 Ed25519 (pure) over  len(ctx) (1 byte) || ctx || M
  ML-DSA-44/65/87    FIPS 204 ML-DSA.Sign / Verify (pure), context string ctx;
                     KeyGen from the 32-byte seed xi (FIPS 204 Algorithm 6)
  ML-DSA-65-Ed25519  draft-ietf-lamps-pq-composite-sigs-19, id-MLDSA65-Ed25519-SHA512:
                     M' = "CompositeAlgorithmSignatures2025" || "COMPSIG-MLDSA65-Ed25519-SHA512"
                          || len(ctx) (1 byte) || ctx || SHA-512(M)
                     signature = ML-DSA-65.Sign(M', ctx = label) (3309 B) || Ed25519(M') (64 B)
                     public key = ML-DSA-65 pk (1952 B) || Ed25519 pk (32 B)
                     seed (64 B) = ML-DSA seed xi (32 B) || Ed25519 seed (32 B)
  Ed25519-RFC8032    export-vectors only: plain RFC 8032 Ed25519 over M (no ctx framing);
                     `context` is always "". Not an algorithm of the Rust enum: it checks
                     the underlying ed25519-dalek key derivation and verification.

JSON shape of `verify` input and `sign` output (one shape for both)
-------------------------------------------------------------------
A JSON array of objects:
  {
    "alg":        "Ed25519" | "ML-DSA-44" | "ML-DSA-65" | "ML-DSA-87" | "ML-DSA-65-Ed25519",
    "seed":       hex, the secret seed (32 bytes; 64 for the composite),
    "public_key": base64url without padding, the public key derived from the seed,
    "context":    hex, the context string (0..255 bytes; "" for none),
    "message":    hex, the message M,
    "signature":  base64url without padding,
    "expect":     "valid" | "invalid"
  }
Any other member is ignored by `verify`. `verify` derives the public key from `seed` and
requires it to equal `public_key` byte for byte (a `seed` that is absent or null skips this
check), then verifies `signature` over (`message`, `context`) under `public_key` and compares
the outcome with `expect`. `sign` writes "valid" vectors made here plus, per algorithm,
"invalid" ones (one signature byte flipped — one per half for the composite — and a valid
signature presented under another context); each of those carries a "note" member.

JSON shape of `export-vectors` output
-------------------------------------
The same array shape (so `verify` and the Rust side's loader read it unchanged), with
members added to every object:
    "source": path of the file inside the cryptography-vectors package it came from
              (e.g. "asymmetric/MLDSA/kat_MLDSA_65_det_pure.rsp"),
    "tcId":   the vector's number in that file ("count" for .rsp, line index for sign.input),
    "kind":   "keyGen+sigVer" (a known answer: seed -> public_key, and a valid signature)
              | "sigVer-derived-invalid" (a known answer altered here: `note` says how),
    "rnd":    hex of 32 zero bytes, on ML-DSA "keyGen+sigVer" vectors only: these KATs are
              ML-DSA.Sign in its deterministic variant (rnd = 0^32), so a correct signer
              given rnd = 0^32 must reproduce `signature` byte for byte (a sigGen check),
    "note":   on derived vectors, what was altered.
"alg" is one of "ML-DSA-44", "ML-DSA-65", "ML-DSA-87" (FIPS 204 pure, with `context`) or
"Ed25519-RFC8032" (see above). At most 20 known answers per parameter set are exported.

Sources of the known answers (both shipped in the PyPI package cryptography-vectors):
  asymmetric/MLDSA/kat_MLDSA_{44,65,87}_det_pure.rsp — the KAT files of the
    post-quantum-cryptography/KAT project (xi, pk, sk, msg, ctx, sm = sig || msg),
    FIPS 204 final, pure ML-DSA with a context string, deterministic signing. They are
    KATs used across implementations, not NIST ACVP files (none is shipped on PyPI by a
    source we trust; see the README next to this file).
  asymmetric/Ed25519/sign.input — the ed25519 reference (SUPERCOP) test vectors, whose
    first three lines are RFC 8032 section 7.1 TEST 1-3: seed||pk : pk : msg : sig||msg.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

INSTALL_HINT = "pip install -U 'cryptography>=47'  (or: pip install -r tests/crosscheck/requirements.txt)"

try:
    import cryptography
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
except ImportError as exc:  # pragma: no cover - exercised only on a bare machine
    print(f"cannot import cryptography's ML-DSA ({exc}); {INSTALL_HINT}", file=sys.stderr)
    sys.exit(2)

COMPOSITE_PREFIX = b"CompositeAlgorithmSignatures2025"
COMPOSITE_LABEL = b"COMPSIG-MLDSA65-Ed25519-SHA512"

MLDSA = {
    "ML-DSA-44": (mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 1312, 2420),
    "ML-DSA-65": (mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey, 1952, 3309),
    "ML-DSA-87": (mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 2592, 4627),
}
ALGS = ["Ed25519", "ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "ML-DSA-65-Ed25519"]
SEED_LEN = {"Ed25519": 32, "ML-DSA-44": 32, "ML-DSA-65": 32, "ML-DSA-87": 32,
            "ML-DSA-65-Ed25519": 64, "Ed25519-RFC8032": 32}
PK_LEN = {"Ed25519": 32, "Ed25519-RFC8032": 32, "ML-DSA-65-Ed25519": 1952 + 32,
          **{a: v[2] for a, v in MLDSA.items()}}
SIG_LEN = {"Ed25519": 64, "Ed25519-RFC8032": 64, "ML-DSA-65-Ed25519": 3309 + 64,
           **{a: v[3] for a, v in MLDSA.items()}}

SIGN_CONTEXT = b"quantus/crosscheck"
SIGN_MESSAGES = [b"", b"quantus cross-check", b"\xab" * 1000]
KAT_FILES = {a: f"asymmetric/MLDSA/kat_MLDSA_{a[-2:]}_det_pure.rsp" for a in MLDSA}
ED25519_KAT_FILE = "asymmetric/Ed25519/sign.input"


class VectorError(Exception):
    """A vector that cannot even be read (bad hex, bad base64, unknown alg...)."""


def library_versions() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"


def require_mldsa() -> None:
    """Exit 2 if this cryptography build has no usable ML-DSA (old OpenSSL, LibreSSL...)."""
    try:
        mldsa.MLDSA44PrivateKey.from_seed_bytes(bytes(32))
    except (UnsupportedAlgorithm, AttributeError) as exc:
        print(f"{library_versions()} has no ML-DSA ({exc}); {INSTALL_HINT}", file=sys.stderr)
        sys.exit(2)


# --- encodings ---------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text or "+" in text or "/" in text:
        raise VectorError(f"not base64url without padding: {str(text)[:40]!r}")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise VectorError(f"bad base64url: {exc}") from None
    if b64u(data) != text:  # non-canonical trailing bits
        raise VectorError("non-canonical base64url")
    return data


def unhex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except (TypeError, ValueError):
        raise VectorError(f"{what} is not hex") from None


# --- the algorithms, rebuilt independently ----------------------------------------------


def ed25519_framed(ctx: bytes, message: bytes) -> bytes:
    """The Rust side's Ed25519 input: len(ctx) || ctx || M."""
    if len(ctx) > 255:
        raise ValueError("context longer than 255 bytes")
    return bytes([len(ctx)]) + ctx + message


def composite_representative(message: bytes, ctx: bytes) -> bytes:
    """M' = Prefix || Label || len(ctx) || ctx || SHA-512(M)."""
    if len(ctx) > 255:
        raise ValueError("context longer than 255 bytes")
    return COMPOSITE_PREFIX + COMPOSITE_LABEL + bytes([len(ctx)]) + ctx + hashlib.sha512(message).digest()


def public_key_from_seed(alg: str, seed: bytes) -> bytes:
    if len(seed) != SEED_LEN[alg]:
        raise VectorError(f"seed is {len(seed)} bytes, {alg} expects {SEED_LEN[alg]}")
    if alg in ("Ed25519", "Ed25519-RFC8032"):
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    if alg in MLDSA:
        return MLDSA[alg][0].from_seed_bytes(seed).public_key().public_bytes_raw()
    if alg == "ML-DSA-65-Ed25519":
        return public_key_from_seed("ML-DSA-65", seed[:32]) + public_key_from_seed("Ed25519", seed[32:])
    raise VectorError(f"unknown alg {alg!r}")


def sign(alg: str, seed: bytes, message: bytes, ctx: bytes) -> bytes:
    """Signs with the independent library (ML-DSA is hedged: OpenSSL draws rnd itself)."""
    if alg == "Ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(ed25519_framed(ctx, message))
    if alg == "Ed25519-RFC8032":
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    if alg in MLDSA:
        return MLDSA[alg][0].from_seed_bytes(seed).sign(message, ctx)
    if alg == "ML-DSA-65-Ed25519":
        m = composite_representative(message, ctx)
        pq = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed[:32]).sign(m, COMPOSITE_LABEL)
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed[32:]).sign(m)
        return pq + ed
    raise VectorError(f"unknown alg {alg!r}")


def _ed25519_ok(pk: bytes, sig: bytes, data: bytes) -> tuple[bool, str]:
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(pk)
    except ValueError as exc:
        return False, f"Ed25519 public key rejected ({exc})"
    try:
        key.verify(sig, data)
        return True, ""
    except InvalidSignature:
        return False, "Ed25519 signature does not verify"


def _mldsa_ok(alg: str, pk: bytes, sig: bytes, data: bytes, ctx: bytes) -> tuple[bool, str]:
    try:
        key = MLDSA[alg][1].from_public_bytes(pk)
    except ValueError as exc:
        return False, f"{alg} public key rejected ({exc})"
    try:
        key.verify(sig, data, ctx)
        return True, ""
    except InvalidSignature:
        return False, f"{alg} signature does not verify"
    except ValueError as exc:  # e.g. context too long
        return False, f"{alg} verify refused its input ({exc})"


def verify(alg: str, pk: bytes, message: bytes, ctx: bytes, sig: bytes) -> tuple[bool, str]:
    """(valid, why not). Lengths are checked first, as the Rust side does."""
    if alg not in PK_LEN:
        raise VectorError(f"unknown alg {alg!r}")
    if len(ctx) > 255:
        return False, "context longer than 255 bytes"
    if len(pk) != PK_LEN[alg]:
        return False, f"public key is {len(pk)} bytes, {alg} expects {PK_LEN[alg]}"
    if len(sig) != SIG_LEN[alg]:
        return False, f"signature is {len(sig)} bytes, {alg} expects {SIG_LEN[alg]}"
    if alg == "Ed25519":
        return _ed25519_ok(pk, sig, ed25519_framed(ctx, message))
    if alg == "Ed25519-RFC8032":
        if ctx:
            return False, "Ed25519-RFC8032 takes no context"
        return _ed25519_ok(pk, sig, message)
    if alg in MLDSA:
        return _mldsa_ok(alg, pk, sig, message, ctx)
    # Composite: both halves are always checked; valid only if both verify.
    m = composite_representative(message, ctx)
    pq_ok, pq_why = _mldsa_ok("ML-DSA-65", pk[:1952], sig[:3309], m, COMPOSITE_LABEL)
    ed_ok, ed_why = _ed25519_ok(pk[1952:], sig[3309:], m)
    why = "; ".join(f"composite {w}" for w in (pq_why, ed_why) if w)
    return pq_ok and ed_ok, why


# --- commands ----------------------------------------------------------------------------


def check_vector(v: object) -> tuple[bool, str]:
    """(as expected, one-line description)."""
    if not isinstance(v, dict):
        raise VectorError("not a JSON object")
    alg = v.get("alg")
    if alg not in PK_LEN:
        raise VectorError(f"unknown alg {alg!r}")
    expect = v.get("expect")
    if expect not in ("valid", "invalid"):
        raise VectorError(f"expect must be 'valid' or 'invalid', not {expect!r}")
    for field in ("public_key", "context", "message", "signature"):
        if field not in v:
            raise VectorError(f"missing {field!r}")
    pk = unb64u(v["public_key"])
    ctx = unhex(v["context"], "context")
    msg = unhex(v["message"], "message")
    sig = unb64u(v["signature"])
    seed_note = "no seed"
    if v.get("seed") is not None:
        derived = public_key_from_seed(alg, unhex(v["seed"], "seed"))
        if derived != pk:
            first = next((i for i, (a, b) in enumerate(zip(derived, pk)) if a != b), min(len(derived), len(pk)))
            return False, (f"public key derived from the seed differs from public_key "
                           f"(lengths {len(derived)}/{len(pk)}, first difference at byte {first})")
        seed_note = "pk from seed ok"
    valid, why = verify(alg, pk, msg, ctx, sig)
    got = "valid" if valid else "invalid"
    desc = f"expect={expect} got={got} msg={len(msg)}B ctx={len(ctx)}B {seed_note}"
    if why and not valid:
        desc += f" ({why})"
    if "note" in v:
        desc += f" [{v['note']}]"
    if got != expect:
        return False, f"signature is {got} but expected {expect}: " + desc
    return True, desc


def cmd_verify(path: str) -> int:
    try:
        vectors = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        print(f"MISMATCH file: cannot read {path}: {exc}")
        return 1
    if not isinstance(vectors, list) or not vectors:
        print(f"MISMATCH file: {path} is not a non-empty JSON array")
        return 1
    bad = 0
    for i, v in enumerate(vectors):
        alg = v.get("alg", "?") if isinstance(v, dict) else "?"
        try:
            ok, desc = check_vector(v)
        except VectorError as exc:
            ok, desc = False, f"malformed vector: {exc}"
        if ok:
            print(f"ok {alg} #{i} {desc}")
        else:
            bad += 1
            print(f"MISMATCH {alg}: #{i} {desc}")
    print(f"{len(vectors) - bad} passed, {bad} failed ({library_versions()})")
    return 1 if bad else 0


def _flip(sig: bytes, at: int) -> bytes:
    out = bytearray(sig)
    out[at] ^= 0x01
    return bytes(out)


def make_vectors() -> list[dict]:
    vectors = []

    def add(alg, seed, pk, ctx, msg, sig, expect, note=None):
        v = {"alg": alg, "seed": seed.hex(), "public_key": b64u(pk), "context": ctx.hex(),
             "message": msg.hex(), "signature": b64u(sig), "expect": expect}
        if note:
            v["note"] = note
        vectors.append(v)

    for alg in ALGS:
        seed = bytes(range(SEED_LEN[alg]))
        pk = public_key_from_seed(alg, seed)
        for msg in SIGN_MESSAGES:
            add(alg, seed, pk, SIGN_CONTEXT, msg, sign(alg, seed, msg, SIGN_CONTEXT), "valid")
        # Edge contexts: empty (length byte 0) and the longest allowed (255 bytes).
        add(alg, seed, pk, b"", b"abc", sign(alg, seed, b"abc", b""), "valid")
        long_ctx = bytes(range(255))
        add(alg, seed, pk, long_ctx, b"abc", sign(alg, seed, b"abc", long_ctx), "valid")
        # Rejections.
        msg = SIGN_MESSAGES[1]
        sig = sign(alg, seed, msg, SIGN_CONTEXT)
        if alg == "ML-DSA-65-Ed25519":
            add(alg, seed, pk, SIGN_CONTEXT, msg, _flip(sig, 10), "invalid", "ML-DSA half: byte 10 flipped")
            add(alg, seed, pk, SIGN_CONTEXT, msg, _flip(sig, 3309 + 5), "invalid", "Ed25519 half: byte 5 flipped")
        else:
            add(alg, seed, pk, SIGN_CONTEXT, msg, _flip(sig, 10), "invalid", "signature byte 10 flipped")
        add(alg, seed, pk, SIGN_CONTEXT + b"!", msg, sig, "invalid",
            "valid signature under context 'quantus/crosscheck', presented under 'quantus/crosscheck!'")
    return vectors


def cmd_sign(out: str) -> int:
    vectors = make_vectors()
    for v in vectors:  # never hand out a vector that this side itself disagrees with
        ok, desc = check_vector(v)
        if not ok:
            print(f"MISMATCH {v['alg']}: self-check of a signed vector failed: {desc}", file=sys.stderr)
            return 1
    Path(out).write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {out} ({library_versions()})")
    return 0


# --- known answers from cryptography-vectors --------------------------------------------


def _vectors_package():
    try:
        import cryptography_vectors
    except ImportError:
        print("cannot import cryptography_vectors; pip install cryptography-vectors "
              "(the version of cryptography, e.g. cryptography-vectors==" + cryptography.__version__ + ")",
              file=sys.stderr)
        sys.exit(2)
    return cryptography_vectors


def read_vector_file(rel: str) -> str:
    with _vectors_package().open_vector_file(rel, "r") as f:
        return f.read()


def parse_rsp(text: str) -> list[dict]:
    """`key = value` lines; a new record starts at each `count` (files have no blank lines)."""
    records, cur = [], {}
    for line in text.splitlines():
        if " = " not in line:
            continue
        key, value = (s.strip() for s in line.split(" = ", 1))
        if key == "count" and cur:
            records.append(cur)
            cur = {}
        cur[key] = value
    if cur:
        records.append(cur)
    return records


def mldsa_kats(alg: str, limit: int = 20) -> list[dict]:
    """Known answers for `alg`: count, xi, pk, msg, ctx, sig (bytes; sig split off sm)."""
    out = []
    for r in parse_rsp(read_vector_file(KAT_FILES[alg]))[:limit]:
        msg, sm = bytes.fromhex(r["msg"]), bytes.fromhex(r["sm"])
        assert int(r["mlen"]) == len(msg) and sm.endswith(msg), f"{alg} count {r['count']}: sm is not sig||msg"
        out.append({"count": int(r["count"]), "xi": bytes.fromhex(r["xi"]), "pk": bytes.fromhex(r["pk"]),
                    "msg": msg, "ctx": bytes.fromhex(r["ctx"]), "sig": sm[: len(sm) - len(msg)]})
    return out


def ed25519_kats(limit: int = 8) -> list[dict]:
    out = []
    for i, line in enumerate(read_vector_file(ED25519_KAT_FILE).splitlines()[:limit]):
        sk, pk, msg, sm, _ = line.split(":")
        msg = bytes.fromhex(msg)
        out.append({"count": i, "seed": bytes.fromhex(sk)[:32], "pk": bytes.fromhex(pk), "msg": msg,
                    "sig": bytes.fromhex(sm)[:64]})
    return out


def make_export(per_set: int = 10) -> list[dict]:
    per_set = min(per_set, 20)
    vectors = []
    for alg in MLDSA:
        for n, k in enumerate(mldsa_kats(alg, per_set)):
            base = {"alg": alg, "seed": k["xi"].hex(), "public_key": b64u(k["pk"]), "context": k["ctx"].hex(),
                    "message": k["msg"].hex(), "signature": b64u(k["sig"]), "expect": "valid",
                    "source": KAT_FILES[alg], "tcId": k["count"]}
            vectors.append({**base, "kind": "keyGen+sigVer", "rnd": "00" * 32})
            if n < 2:  # a few rejections derived from known answers
                vectors.append({**base, "expect": "invalid", "kind": "sigVer-derived-invalid",
                                "signature": b64u(_flip(k["sig"], 0)), "note": "signature byte 0 (c~) flipped"})
                vectors.append({**base, "expect": "invalid", "kind": "sigVer-derived-invalid",
                                "context": (k["ctx"] + b"\x00").hex(), "note": "context with 0x00 appended"})
    for k in ed25519_kats():
        base = {"alg": "Ed25519-RFC8032", "seed": k["seed"].hex(), "public_key": b64u(k["pk"]), "context": "",
                "message": k["msg"].hex(), "signature": b64u(k["sig"]), "expect": "valid",
                "source": ED25519_KAT_FILE, "tcId": k["count"]}
        vectors.append({**base, "kind": "keyGen+sigVer"})
        if k["count"] == 1:
            vectors.append({**base, "expect": "invalid", "kind": "sigVer-derived-invalid",
                            "signature": b64u(_flip(k["sig"], 40)), "note": "signature byte 40 (S) flipped"})
    return vectors


def cmd_export(out: str) -> int:
    vectors = make_export()
    bad = 0
    for v in vectors:  # the independent library must agree with every known answer
        ok, desc = check_vector(v)
        if not ok:
            bad += 1
            print(f"MISMATCH {v['alg']}: {v['source']} tcId {v['tcId']}: {desc}", file=sys.stderr)
    if bad:
        return 1
    Path(out).write_text(json.dumps(vectors, indent=1) + "\n")
    from importlib.metadata import version

    print(f"wrote {len(vectors)} vectors to {out} (cryptography-vectors {version('cryptography-vectors')}, "
          f"{library_versions()})")
    return 0


USAGE = "usage: crosscheck.py verify FILE | sign OUT | export-vectors OUT"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("verify", "sign", "export-vectors"):
        print(USAGE, file=sys.stderr)
        return 1
    require_mldsa()
    cmd, arg = argv
    if cmd == "verify":
        return cmd_verify(arg)
    if cmd == "sign":
        return cmd_sign(arg)
    return cmd_export(arg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
