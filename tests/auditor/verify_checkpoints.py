#!/usr/bin/env python3
"""Independent check of Quantus's signed log checkpoints, written from docs/event-log.md
("Checkpoints") and RFC 9162 section 2.1, sharing no code with the Rust implementation.

  verify_checkpoints.py LOG.jsonl KEYS.json [NOTE]

LOG.jsonl: `quantus events tail --no-follow` output (one {"position", "envelope"} per line).
KEYS.json: the published key set (GET /v1/keys). NOTE: a signed checkpoint kept outside the
log (a witness's copy); the log must still hold that tree.

For every LogCheckpointSigned event: the note's signature verifies with a checkpoint key of
KEYS.json (signatures are checked with PyCA `cryptography` via ../crosscheck), the note's size
and root equal the event's, and the RFC 9162 tree head of the log's first `size` events equals
that root. Exit 0 when all hold, 1 with the reason otherwise, 2 when it cannot run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crosscheck"))
import crosscheck  # noqa: E402  (signature algorithms, independent of the Rust code)

CONTEXT = b"quantus/checkpoint/v1"
DASH = "\u2014 "


class Broken(Exception):
    pass


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_head(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1, over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(tree_head(leaves[:k]), tree_head(leaves[k:]))


def key_id(name: str, alg: str, public: bytes) -> bytes:
    h = hashlib.sha256(name.encode() + b"\n")
    if alg == "Ed25519":
        h.update(b"\x01")
    else:
        h.update(b"\xff" + alg.encode() + b"\x00")
    h.update(public)
    return h.digest()[:4]


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def open_note(note: str, keys: list[dict]) -> tuple[str, int, bytes]:
    """(origin, size, root) of a note whose signature a checkpoint key verifies."""
    if "\n\n" not in note:
        raise Broken("a checkpoint note has no blank line before its signatures")
    body, sigs = note.split("\n\n", 1)
    body += "\n"
    lines = body.split("\n")
    if len(lines) != 4 or lines[3] != "":
        raise Broken("a checkpoint note's body is not three lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
        raise Broken(f"a checkpoint size is not a decimal number: {size_text!r}")
    root = base64.b64decode(root_text, validate=True)
    if len(root) != 32:
        raise Broken("a checkpoint root is not 32 bytes")
    for line in sigs.splitlines():
        if not line.startswith(DASH):
            raise Broken("a checkpoint signature line lacks the em dash")
        name, blob_text = line[len(DASH):].split(" ", 1)
        blob = base64.b64decode(blob_text, validate=True)
        for k in keys:
            if k["purpose"] != "checkpoint" or k.get("compromised_at"):
                continue
            public = unb64url(k["public_key"])
            if key_id(name, k["alg"], public) != blob[:4]:
                continue
            ok, why = crosscheck.verify(k["alg"], public, body.encode(), CONTEXT, blob[4:])
            if ok:
                return origin, int(size_text), root
            raise Broken(f"the checkpoint of size {size_text} has a bad signature ({why})")
    raise Broken(f"no trusted checkpoint key signed the checkpoint of size {size_text}")


def check(log_path: str, keys_path: str, witness: str | None) -> list[str]:
    with open(keys_path, "rb") as f:
        keys = json.load(f)["keys"]
    events: dict[int, dict] = {}
    with open(log_path, "rb") as f:
        for raw in f:
            if raw.strip():
                record = json.loads(raw)
                events[record["position"]] = record["envelope"]
    size = len(events)
    if sorted(events) != list(range(1, size + 1)):
        raise Broken("log positions are not 1..N")
    leaves = [leaf_hash(bytes.fromhex(events[p]["hash"])) for p in range(1, size + 1)]
    wanted: list[tuple[int, bytes, str]] = []
    count = 0
    for p in range(1, size + 1):
        e = events[p]
        if e["event_type"] != "LogCheckpointSigned":
            continue
        payload = e["payload"]
        _, n, root = open_note(payload["note"], keys)
        if n != payload["tree_size"] or root.hex() != payload["root_hash"]:
            raise Broken(f"the checkpoint event at position {p} differs from its signed note")
        wanted.append((n, root, f"checkpoint of size {n}"))
        count += 1
    if witness is not None:
        with open(witness, encoding="utf-8") as f:
            _, n, root = open_note(f.read(), keys)
        wanted.append((n, root, "the given checkpoint"))
    for n, root, what in wanted:
        if n > size:
            raise Broken(f"{what} covers {n} events but the log has {size}: the log was cut short")
        if tree_head(leaves[:n]) != root:
            raise Broken(f"{what}: the log's first {n} events do not hash to its signed root: the log was rewritten")
    out = [f"checkpoints: {count} signed tree heads match the log of {size} events"]
    if witness is not None:
        out.append("given checkpoint: consistent with the log")
    out.append("OK")
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        sys.stderr.write("usage: verify_checkpoints.py LOG.jsonl KEYS.json [NOTE]\n")
        return 2
    try:
        crosscheck.require_mldsa()
    except SystemExit as e:
        return int(e.code or 2)
    try:
        print("\n".join(check(argv[1], argv[2], argv[3] if len(argv) == 4 else None)))
        return 0
    except Broken as broken:
        print(f"BROKEN: {broken}")
        return 1
    except (OSError, ValueError, KeyError) as err:
        sys.stderr.write(f"verify_checkpoints.py: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
