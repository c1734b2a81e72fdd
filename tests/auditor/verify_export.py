#!/usr/bin/env python3
"""Independent check of a Quantus compliance export, written from docs/event-log.md
("Compliance exports") and RFC 9162 section 2.1.3, sharing no code with the Rust implementation.

  verify_export.py ARCHIVE KEYS.json

ARCHIVE: the tar archive of `GET /v1/audit/exports` (or `quantus audit export`).
KEYS.json: the published key set (GET /v1/keys), obtained independently.

Checks: manifest.json is in RFC 8785 form and an evidence key of KEYS.json signed its payload
under the context `quantus/export/v1` (PyCA `cryptography` via ../crosscheck); keys.json has the
recorded digest; the checkpoint note is signed by a checkpoint key, matches the manifest and
covers the range; each events file is the next one the manifest lists, with its count, last
position and SHA-256; each event is the exported tenant's, at a position inside the range and
after the previous one, has the right hash (verify_log.py's recipe and form checks), follows
the previous event of its aggregate in the export (sequence + 1, prev_hash), and its inclusion
proof leads to the checkpoint's root; the files' counts add up to the manifest's. Exit 0 when
all hold (prints OK), 1 with `BROKEN: reason`, 2 when it cannot run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "crosscheck"))
import crosscheck  # noqa: E402
import rfc8785  # noqa: E402
from verify_checkpoints import Broken, open_note, run, unb64url  # noqa: E402
from verify_log import EnvelopeProblem, check_envelope, compute_hash  # noqa: E402

CONTEXT = b"quantus/export/v1"
FORMAT = "quantus-export/1"


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def included(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def files_of(path: str) -> list[tuple[str, bytes]]:
    out = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile() or "/" not in member.name:
                    continue
                data = tar.extractfile(member).read()
                out.append((member.name.split("/", 1)[1], data))
    except (tarfile.TarError, EOFError) as err:
        raise Broken(f"the archive cannot be read (truncated?): {err}")
    return out


def check_manifest(raw: bytes, keys: list[dict]) -> dict:
    doc = json.loads(raw)
    if rfc8785.dumps(doc) != raw.rstrip(b"\n"):
        raise Broken("manifest.json is not in RFC 8785 form")
    message = rfc8785.dumps(doc["payload"])
    manifest = doc["payload"]
    for s in doc["signatures"]:
        for k in keys:
            if k["kid"] != s["kid"] or k["purpose"] != "evidence" or k["alg"] != s["alg"]:
                continue
            if k.get("compromised_at") and k["compromised_at"] <= manifest["created_at"]:
                continue
            ok, why = crosscheck.verify(k["alg"], unb64url(k["public_key"]), message, CONTEXT,
                                        unb64url(s["sig"]))
            if ok:
                return manifest
            raise Broken(f"the manifest's signature by {s['kid']} does not verify ({why})")
    raise Broken("no trusted evidence key signed the manifest")


def check(archive: str, keys_path: str) -> list[str]:
    with open(keys_path, "rb") as f:
        keys = json.load(f)["keys"]
    files = files_of(archive)
    by_name = dict(files)
    if "manifest.json" not in by_name:
        raise Broken("the archive has no manifest.json: it is truncated")
    m = check_manifest(by_name["manifest.json"], keys)
    if m["format"] != FORMAT:
        raise Broken(f"unknown format {m['format']!r}")
    if "keys.json" in by_name and hashlib.sha256(by_name["keys.json"]).hexdigest() != m["keys_sha256"]:
        raise Broken("keys.json does not have the digest the manifest records")
    _, size, root = open_note(m["checkpoint"]["note"], keys)
    if size != m["checkpoint"]["tree_size"] or root.hex() != m["checkpoint"]["root_hash"]:
        raise Broken("the checkpoint note differs from the manifest's tree size or root")
    if size < m["through_position"]:
        raise Broken("the checkpoint does not cover the range")
    note = by_name.get("checkpoint.note", b"").decode()
    if not note.startswith(m["checkpoint"]["note"]):
        raise Broken("checkpoint.note is not the checkpoint the manifest names")

    chunks = [(n, d) for n, d in files if n.startswith("events/")]
    last = m["after_position"]
    heads: dict[tuple[str, str], tuple[int, str]] = {}
    for i, (name, data) in enumerate(chunks):
        if i >= len(m["chunks"]) or m["chunks"][i]["name"] != name:
            raise Broken(f"{name} is not the next events file the manifest lists")
        listed = m["chunks"][i]
        lines = [line for line in data.split(b"\n") if line]
        for raw in lines:
            rec = json.loads(raw)
            p, env = rec["position"], rec["envelope"]
            where = f"the event at position {p}"
            if env.get("tenant_id") != m["tenant"]:
                raise Broken(f"{where} belongs to tenant {env.get('tenant_id')}, not {m['tenant']}")
            if not last < p <= m["through_position"]:
                raise Broken(f"{where} is out of order or outside the range")
            last = p
            try:
                check_envelope(env)
            except EnvelopeProblem as err:
                raise Broken(f"{where}: {err}")
            if compute_hash(env) != env["hash"]:
                raise Broken(f"{where}: its hash does not match its content (altered)")
            key = (env["aggregate_type"], env["aggregate_id"])
            if key in heads and (env["sequence"] != heads[key][0] + 1 or env["prev_hash"] != heads[key][1]):
                raise Broken(f"{where}: {key[0]} {key[1]} #{env['sequence']} does not follow #{heads[key][0]}: an event is missing")
            heads[key] = (env["sequence"], env["hash"])
            leaf = hashlib.sha256(b"\x00" + bytes.fromhex(env["hash"])).digest()
            path = [base64.b64decode(h, validate=True) for h in rec["inclusion_path"]]
            if not included(leaf, p - 1, size, path, root):
                raise Broken(f"{where} is not included in the signed checkpoint")
        if len(lines) != listed["events"] or last != listed["last_position"]:
            raise Broken(f"{name} holds {len(lines)} events, the manifest lists {listed['events']}: events are missing")
        if hashlib.sha256(data).hexdigest() != listed["sha256"]:
            raise Broken(f"{name} does not have the SHA-256 the manifest records")
    if len(chunks) != len(m["chunks"]):
        raise Broken("events files listed by the manifest are missing: the archive is truncated")
    if sum(c["events"] for c in m["chunks"]) != m["events"]:
        raise Broken("the manifest's event count does not add up")
    return [
        f"tenant: {m['tenant']}",
        f"events: {m['events']} (positions {m['after_position'] + 1}..{m['through_position']}), all included in the checkpoint of {size}",
        "OK",
    ]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: verify_export.py ARCHIVE KEYS.json\n")
        return 2
    return run("verify_export.py", lambda: check(argv[1], argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
