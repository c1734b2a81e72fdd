"""Tests of crosscheck.py: its commands run as programs, and the independent library
checked against known answers shipped in the cryptography-vectors package.

Run: python3 -m pytest -q tests/crosscheck
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("crosscheck.py")
ALGS = ["Ed25519", "ML-DSA-44", "ML-DSA-65", "ML-DSA-87", "ML-DSA-65-Ed25519"]

_spec = importlib.util.spec_from_file_location("crosscheck", SCRIPT)
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)

from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa  # noqa: E402


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cc") / "signed.json"
    r = run("sign", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


# --- sign, then verify -------------------------------------------------------------------


def test_sign_writes_the_documented_shape_for_all_five_algorithms(signed):
    vectors = json.loads(signed.read_text())
    keys = {"alg", "seed", "public_key", "context", "message", "signature", "expect"}
    for v in vectors:
        assert keys <= set(v), v
        assert "=" not in v["public_key"] + v["signature"]
    for alg in ALGS:
        mine = [v for v in vectors if v["alg"] == alg]
        valid = [v for v in mine if v["expect"] == "valid"]
        invalid = [v for v in mine if v["expect"] == "invalid"]
        assert {v["message"] for v in valid} >= {"", b"quantus cross-check".hex(), "ab" * 1000}
        assert b"quantus/crosscheck".hex() in {v["context"] for v in valid}
        assert invalid, alg
        seed = bytes.fromhex(mine[0]["seed"])
        assert seed == bytes(range(64 if alg == "ML-DSA-65-Ed25519" else 32))
        assert len(base64.urlsafe_b64decode(mine[0]["public_key"] + "==")) == cc.PK_LEN[alg]
        assert len(base64.urlsafe_b64decode(mine[0]["signature"] + "==")) == cc.SIG_LEN[alg]


def test_sign_then_verify_round_trip(signed):
    r = run("verify", str(signed))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    n = len(json.loads(signed.read_text()))
    assert sum(line.startswith("ok ") for line in lines) == n
    assert not any(line.startswith("MISMATCH") for line in lines)
    for alg in ALGS:
        assert any(line.startswith(f"ok {alg} ") and "expect=invalid got=invalid" in line for line in lines), alg


def _tamper(vectors: list[dict], alg: str, how: str) -> list[dict]:
    v = next(v for v in vectors if v["alg"] == alg and v["expect"] == "valid" and v["message"])
    if how == "message":
        v["message"] = "00" + v["message"]
    elif how == "public_key":  # a key that is not the seed's
        pk = bytearray(base64.urlsafe_b64decode(v["public_key"] + "=="))
        pk[-1] ^= 1
        v["public_key"] = b64u(bytes(pk))
    elif how == "expect":  # a valid signature claimed invalid
        v["expect"] = "invalid"
    return [v]


@pytest.mark.parametrize("how", ["message", "public_key", "expect"])
@pytest.mark.parametrize("alg", ALGS)
def test_a_tampered_vector_is_a_mismatch(signed, tmp_path, alg, how):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_tamper(json.loads(signed.read_text()), alg, how)))
    r = run("verify", str(bad))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith(f"MISMATCH {alg}: "), r.stdout
    if how == "public_key":
        assert "derived from the seed differs" in r.stdout


def test_one_bad_vector_among_good_ones_fails_the_file(signed, tmp_path):
    vectors = json.loads(signed.read_text())
    vectors[3]["signature"] = vectors[4]["signature"]  # another message's signature
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(vectors))
    r = run("verify", str(bad))
    assert r.returncode == 1
    assert sum(line.startswith("MISMATCH") for line in r.stdout.splitlines()) == 1


@pytest.mark.parametrize("content", ["[]", "not json", '[{"alg": "RSA"}]',
                                     '[{"alg": "Ed25519", "public_key": "a=", "context": "", "message": "",'
                                     ' "signature": "", "expect": "valid"}]'])
def test_malformed_files_are_mismatches(tmp_path, content):
    f = tmp_path / "x.json"
    f.write_text(content)
    r = run("verify", str(f))
    assert r.returncode == 1
    assert "MISMATCH" in r.stdout


def test_exit_2_with_an_install_hint_when_the_library_is_missing(tmp_path, signed):
    fake = tmp_path / "cryptography"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no cryptography here')\n")
    r = run("verify", str(signed), env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pip install" in r.stderr and "cryptography>=47" in r.stderr


# --- the composite, byte by byte ---------------------------------------------------------


def test_composite_representative_layout():
    msg, ctx = b"licence", b"quantus"
    m = cc.composite_representative(msg, ctx)
    assert m[:32] == bytes.fromhex("436f6d706f73697465416c676f726974686d5369676e61747572657332303235")
    assert m[32:62] == b"COMPSIG-MLDSA65-Ed25519-SHA512"
    assert m[62] == len(ctx) and m[63:70] == ctx
    assert m[70:] == hashlib.sha512(msg).digest() and len(m) == 70 + 64


def test_composite_halves_are_the_draft_components_and_do_not_downgrade():
    seed = bytes(range(64))
    sig = cc.sign("ML-DSA-65-Ed25519", seed, b"m", b"c")
    pq = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed[:32]).public_key()
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed[32:]).public_key()
    m = cc.composite_representative(b"m", b"c")
    pq.verify(sig[:3309], m, b"COMPSIG-MLDSA65-Ed25519-SHA512")
    ed.verify(sig[3309:], m)
    # Stripped halves do not pass as stand-alone signatures over the message.
    with pytest.raises(InvalidSignature):
        pq.verify(sig[:3309], b"m", b"c")
    assert not cc.verify("ML-DSA-65", pq.public_bytes_raw(), b"m", b"c", sig[:3309])[0]
    assert not cc.verify("Ed25519", ed.public_bytes_raw(), b"m", b"c", sig[3309:])[0]


def test_ed25519_frames_the_context_with_a_length_byte():
    seed = bytes(32)
    sig = cc.sign("Ed25519", seed, b"M", b"ctx")
    pk = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
    pk.verify(sig, b"\x03ctxM")
    with pytest.raises(InvalidSignature):
        pk.verify(sig, b"M")


# --- the independent library against known answers ---------------------------------------


def test_ed25519_rfc8032_test_1():
    # RFC 8032 section 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    pk = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
                        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert cc.public_key_from_seed("Ed25519-RFC8032", seed) == pk
    assert cc.sign("Ed25519-RFC8032", seed, b"", b"") == sig
    assert cc.verify("Ed25519-RFC8032", pk, b"", b"", sig) == (True, "")


@pytest.mark.parametrize("alg", ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"])
def test_library_agrees_with_mldsa_kats(alg):
    """cryptography-vectors: asymmetric/MLDSA/kat_MLDSA_{44,65,87}_det_pure.rsp
    (post-quantum-cryptography/KAT; FIPS 204 keyGen from xi, pure ML-DSA with ctx)."""
    pytest.importorskip("cryptography_vectors", reason="pip install cryptography-vectors")
    kats = cc.mldsa_kats(alg, limit=20)
    assert len(kats) == 20
    priv, pub = cc.MLDSA[alg][0], cc.MLDSA[alg][1]
    for k in kats:
        assert priv.from_seed_bytes(k["xi"]).public_key().public_bytes_raw() == k["pk"], k["count"]
        key = pub.from_public_bytes(k["pk"])
        key.verify(k["sig"], k["msg"], k["ctx"])
        with pytest.raises(InvalidSignature):
            key.verify(k["sig"], k["msg"], k["ctx"] + b"\x00")
        with pytest.raises(InvalidSignature):
            key.verify(k["sig"], k["msg"])  # the ctx is bound: not the empty one


def test_library_agrees_with_ed25519_kats():
    """cryptography-vectors: asymmetric/Ed25519/sign.input (first lines = RFC 8032 TEST 1-3)."""
    pytest.importorskip("cryptography_vectors", reason="pip install cryptography-vectors")
    for k in cc.ed25519_kats(limit=64):
        assert cc.public_key_from_seed("Ed25519-RFC8032", k["seed"]) == k["pk"]
        assert cc.sign("Ed25519-RFC8032", k["seed"], k["msg"], b"") == k["sig"]


def test_export_vectors(tmp_path):
    pytest.importorskip("cryptography_vectors", reason="pip install cryptography-vectors")
    out = tmp_path / "kat.json"
    r = run("export-vectors", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    vectors = json.loads(out.read_text())
    for alg in ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"]:
        known = [v for v in vectors if v["alg"] == alg and v["kind"] == "keyGen+sigVer"]
        assert 1 <= len(known) <= 20
        assert all(v["rnd"] == "00" * 32 and v["expect"] == "valid" for v in known)
        assert all(v["source"] == f"asymmetric/MLDSA/kat_MLDSA_{alg[-2:]}_det_pure.rsp" for v in known)
        assert any(v["kind"] == "sigVer-derived-invalid" and v["expect"] == "invalid"
                   for v in vectors if v["alg"] == alg)
    assert any(v["alg"] == "Ed25519-RFC8032" for v in vectors)
    # The export is readable by `verify` as it stands, and every vector is as expected.
    r = run("verify", str(out))
    assert r.returncode == 0, r.stdout
    assert r.stdout.count("\nok ") + r.stdout.startswith("ok ") == len(vectors)
