#!/usr/bin/env python3
"""Independent check of Quantus's signed log checkpoints, written from docs/event-log.md
("Checkpoints") and RFC 9162 section 2.1, sharing no code with the Rust implementation.

  verify_checkpoints.py LOG.jsonl KEYS.json [NOTE [--witness VKEY]... [--quorum N]]

LOG.jsonl: `quantus events tail --no-follow` output (one {"position", "envelope"} per line).
KEYS.json: the published key set (GET /v1/keys). NOTE: a signed checkpoint kept outside the
log (a witness's copy); the log must still hold that tree. With --witness (a C2SP signed-note
verifier key of a witness, `<name>+<key id>+base64(0x04 || Ed25519 key)`), NOTE must also
carry valid C2SP tlog-cosignature (cosignature/v1) lines of at least N of those witnesses
(default 1), written from the C2SP text and checked with PyCA `cryptography`.

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


def parse_vkey(vkey: str) -> tuple[str, bytes, bytes]:
    """(name, key id, Ed25519 public key) of a cosignature/v1 verifier key."""
    try:
        name, key_hash, blob_text = vkey.split("+", 2)
        blob = base64.b64decode(blob_text, validate=True)
    except ValueError as err:
        raise ValueError(f"--witness {vkey!r} is not <name>+<id>+<base64 key>") from err
    if len(blob) != 33 or blob[0] != 0x04:
        raise ValueError(f"--witness {vkey!r} is not a cosignature/v1 (type 0x04) Ed25519 key")
    kid = hashlib.sha256(name.encode() + b"\n" + blob).digest()[:4]
    if kid.hex() != key_hash.lower():
        raise ValueError(f"--witness {vkey!r}: the key id does not match the name and key")
    return name, kid, blob[1:]


def cosigners(note: str, witnesses: list[tuple[str, bytes, bytes]]) -> list[str]:
    """Names of the witnesses with a valid cosignature/v1 line on the note."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body, sigs = note.split("\n\n", 1)
    body += "\n"
    found: list[str] = []
    for line in sigs.splitlines():
        name, blob_text = line[len(DASH):].split(" ", 1)
        blob = base64.b64decode(blob_text, validate=True)
        for w_name, kid, public in witnesses:
            if w_name != name or blob[:4] != kid or len(blob) != 4 + 8 + 64 or name in found:
                continue
            timestamp = int.from_bytes(blob[4:12], "big")
            message = f"cosignature/v1\ntime {timestamp}\n".encode() + body.encode()
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(blob[12:], message)
                found.append(name)
            except InvalidSignature:
                pass
    return found


def check(
    log_path: str,
    keys_path: str,
    witness: str | None,
    witnesses: list[str] | None = None,
    quorum: int = 1,
) -> list[str]:
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
    witnessed = None
    if witness is not None:
        with open(witness, encoding="utf-8") as f:
            note = f.read()
        _, n, root = open_note(note, keys)
        wanted.append((n, root, "the given checkpoint"))
        if witnesses:
            names = cosigners(note, [parse_vkey(v) for v in witnesses])
            if len(names) < quorum:
                raise Broken(
                    f"the given checkpoint carries valid cosignatures of {len(names)} of the "
                    f"{len(witnesses)} given witnesses, fewer than {quorum}"
                )
            witnessed = f"witnessed: {n} events cosigned by {', '.join(names)}"
    for n, root, what in wanted:
        if n > size:
            raise Broken(f"{what} covers {n} events but the log has {size}: the log was cut short")
        if tree_head(leaves[:n]) != root:
            raise Broken(f"{what}: the log's first {n} events do not hash to its signed root: the log was rewritten")
    out = [f"checkpoints: {count} signed tree heads match the log of {size} events"]
    if witness is not None:
        out.append("given checkpoint: consistent with the log")
    if witnessed:
        out.append(witnessed)
    out.append("OK")
    return out


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="verify_checkpoints.py")
    parser.add_argument("log")
    parser.add_argument("keys")
    parser.add_argument("note", nargs="?")
    parser.add_argument("--witness", action="append", default=[])
    parser.add_argument("--quorum", type=int, default=1)
    args = parser.parse_args(argv[1:])
    if args.witness and args.note is None:
        sys.stderr.write("verify_checkpoints.py: --witness needs a NOTE to check\n")
        return 2
    return run("verify_checkpoints.py", lambda: check(args.log, args.keys, args.note, args.witness, args.quorum))


def run(prog: str, verdict, errors: tuple = (OSError, ValueError, KeyError), show=str) -> int:
    """What every verifier's command line does with its `verdict`: the lines and exit 0 when it
    holds, `BROKEN: why` and exit 1 when the evidence is broken, exit 2 when it cannot tell
    (no ML-DSA support, a file it cannot read, input of the wrong kind)."""
    try:
        crosscheck.require_mldsa()
    except SystemExit as e:
        return int(e.code or 2)
    try:
        print("\n".join(verdict()))
        return 0
    except Broken as broken:
        print(f"BROKEN: {broken}")
        return 1
    except errors as err:
        sys.stderr.write(f"{prog}: {show(err)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
