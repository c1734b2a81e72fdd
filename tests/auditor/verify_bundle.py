#!/usr/bin/env python3
"""Independent check of a Quantus evidence bundle archive, written from docs/event-log.md
("Evidence bundles") and RFC 9162 section 2.1.3, sharing no code with the Rust implementation.

  verify_bundle.py ARCHIVE KEYS.json

ARCHIVE: the tar archive of `GET /v1/evidence/{id}/export`.
KEYS.json: the published key set (GET /v1/keys), obtained independently.

Checks: manifest.json is a signed document in RFC 8785 form whose payload an evidence key of
KEYS.json, accepted by its crypto policy, signed under the context `quantus/evidence/v1`
(PyCA `cryptography` via ../crosscheck); every digest it lists (config.json, each artifact the
archive carries, job-state.json); the checkpoint note is signed by a checkpoint key and matches
the manifest; each listed event's inclusion proof leads to its root. Then job-state.json in
full: its form, every state event's proof and envelope hash (verify_log.py's recipe and form
checks), each aggregate's chain from sequence 1, all before the job, the job event the
manifest's, and the summary derived again from the events equal to the one in the file.
Exit 0 when all hold (prints OK), 1 with `BROKEN: reason`, 2 when it cannot run.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import sys
import tarfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "crosscheck"))
import crosscheck  # noqa: E402
import rfc8785  # noqa: E402
from verify_checkpoints import Broken, open_note, run, unb64url  # noqa: E402
from verify_export import included  # noqa: E402
from verify_log import (  # noqa: E402
    EnvelopeProblem,
    _reject_constant,
    _reject_duplicate_members,
    check_envelope,
    compute_hash,
)

CONTEXT = b"quantus/evidence/v1"
FORMAT = "quantus-evidence/1"
JOB_STATE = "job-state.json"
JOB_STATE_FORMAT = "quantus-job-state/1"
GENESIS = "0" * 64
WITHHELD = {
    "UserPasswordSet",
    "UserProfileChanged",
    "UserEmailChanged",
    "UserInvited",
    "UserInviteAccepted",
    "ClientSecretRotated",
    "LicenseActivated",
    "LicenseDeactivated",
}
SUBMITTER_TYPES = {"user": "User", "service": "Client"}

MANIFEST_MEMBERS = {
    "format", "bundle_id", "issuer", "created_at", "job_id", "organization_id", "job",
    "config_sha256", "artifacts", "events", "checkpoint",
}
STATE_EVENT_MEMBERS = {
    "position", "aggregate_type", "aggregate_id", "sequence", "event_type", "hash",
    "inclusion_path",
}
HEX64 = re.compile(r"[0-9a-f]{64}")
INSTANT = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)


# --- Reading -------------------------------------------------------------------------------


def strict_json(raw: bytes, what: str) -> Any:
    try:
        return json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_members,
            parse_constant=_reject_constant,
        )
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Broken(f"{what} is not JSON: {err}")


def members(what: str, obj: Any, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise Broken(f"{what} is not a JSON object")
    missing = sorted(required - obj.keys())
    extra = sorted(obj.keys() - required - optional)
    if missing or extra:
        raise Broken(f"{what} lacks {missing} or has unknown members {extra}")
    return obj


def integer(what: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Broken(f"{what} is not an integer of at least {minimum}")
    return value


def text(what: str, value: Any) -> str:
    if not isinstance(value, str):
        raise Broken(f"{what} is not a string")
    return value


def hex64(what: str, value: Any) -> str:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        raise Broken(f"{what} is not 64 lower-case hex digits")
    return value


def instant(what: str, value: Any) -> int:
    """An RFC 3339 instant as nanoseconds since the epoch (exact, unlike a float)."""
    m = INSTANT.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise Broken(f"{what} is not an RFC 3339 instant: {value!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    try:
        datetime.date(y, mo, d)
    except ValueError:
        raise Broken(f"{what} is not a date: {value!r}")
    if h > 23 or mi > 59 or s > 60:
        raise Broken(f"{what} is not a time of day: {value!r}")
    nanos = int((m.group(7) or "").ljust(9, "0"))
    seconds = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    zone = m.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + nanos


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def files_of(path: str) -> tuple[str, dict[str, bytes]]:
    """The archive's folder and its files by their path inside it."""
    folders, out = set(), {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile() or "/" not in member.name:
                    continue
                folder, inner = member.name.split("/", 1)
                folders.add(folder)
                out[inner] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError) as err:
        raise Broken(f"the archive cannot be read (truncated?): {err}")
    if len(folders) != 1:
        raise Broken(f"the archive's entries are not in one folder: {sorted(folders)}")
    return folders.pop(), out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_of(what: str, value: Any) -> list[bytes]:
    if not isinstance(value, list):
        raise Broken(f"{what}'s inclusion_path is not a list")
    out = []
    for h in value:
        try:
            b = base64.b64decode(text(f"{what}'s inclusion_path", h), validate=True)
        except ValueError:
            b = b""
        if len(b) != 32:
            raise Broken(f"{what}: an inclusion path hash is not 32 bytes of base64")
        out.append(b)
    return out


def proven(what: str, position: int, leaf_data: str, path: Any, size: int, root: bytes) -> None:
    leaf = hashlib.sha256(b"\x00" + bytes.fromhex(leaf_data)).digest()
    if position < 1 or not included(leaf, position - 1, size, path_of(what, path), root):
        raise Broken(f"{what} is not included in the signed checkpoint")


# --- The manifest --------------------------------------------------------------------------


def accepted(keyset: dict, key: dict, signed_at: int, now: int) -> str | None:
    """Why the crypto policy refuses `key` for a signature made at `signed_at`, or None."""
    rule = next((r for r in keyset["policy"]["verify"] if r["alg"] == key["alg"]), None)
    if rule is None:
        return f"algorithm {key['alg']} may not verify under the crypto policy"
    if rule.get("until") and now >= instant("until", rule["until"]):
        return f"algorithm {key['alg']} stopped being allowed to verify"
    if signed_at < instant("not_before", key["not_before"]):
        return f"key {key['kid']} is not valid yet at the manifest's created_at"
    if key.get("retired_at") and now >= instant("retired_at", key["retired_at"]):
        return f"key {key['kid']} is retired"
    if key.get("compromised_at") and signed_at >= instant("compromised_at", key["compromised_at"]):
        return f"key {key['kid']} was compromised when the manifest was made"
    return None


def check_manifest(raw: bytes, keyset: dict) -> dict:
    doc = strict_json(raw, "manifest.json")
    if rfc8785.dumps(doc) != (raw[:-1] if raw.endswith(b"\n") else raw):
        raise Broken("manifest.json is not in RFC 8785 form")
    members("manifest.json", doc, {"payload", "signatures"})
    m = members("the manifest", doc["payload"], MANIFEST_MEMBERS, {"job_state_sha256"})
    if m["format"] != FORMAT:
        raise Broken(f"unknown manifest format {m['format']!r}")
    signed_at = instant("the manifest's created_at", m["created_at"])
    now = time.time_ns()
    message = rfc8785.dumps(m)
    first_error = None
    for s in doc["signatures"]:
        members("a signature", s, {"kid", "alg", "sig"})
        key = next((k for k in keyset["keys"] if k["kid"] == s["kid"]), None)
        if key is None:
            continue
        if key["alg"] != s["alg"]:
            why = f"signature by {s['kid']} claims {s['alg']} but the key is {key['alg']}"
        elif key["purpose"] != "evidence":
            why = f"key {s['kid']} is for {key['purpose']}, not evidence"
        else:
            why = accepted(keyset, key, signed_at, now)
            if why is None:
                ok, detail = crosscheck.verify(
                    key["alg"], unb64url(key["public_key"]), message, CONTEXT, unb64url(s["sig"])
                )
                if ok:
                    return m
                why = f"bad signature by {s['kid']} ({detail})"
        first_error = first_error or why
    raise Broken(f"the manifest's signature: {first_error or 'no signature is by a trusted key'}")


# --- The summary, derived again ------------------------------------------------------------


def payload_of(e: dict) -> dict:
    p = e["envelope"].get("payload")
    if not isinstance(p, dict):
        raise Broken(f"the event at position {e['position']} has no payload")
    return p


def field(obj: dict, name: str, at: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise Broken(f"job-state.json: the event at position {at} has no string {name!r}")
    return value


def summarize(job: dict, events: list[dict]) -> dict:
    env = job["envelope"]
    at = job["position"]
    as_of_text = field(env, "occurred_at", at)
    as_of = instant("the job's occurred_at", as_of_text)
    organization = field(payload_of(job), "organization_id", at)
    actor = env.get("actor") if isinstance(env.get("actor"), dict) else {}
    kind, sid = field(actor, "kind", at), field(actor, "id", at)
    submitter_type = SUBMITTER_TYPES.get(kind)
    submitter = {
        "kind": kind, "id": sid, "organization_id": None, "name": None,
        "name_sealed": False, "status": "unrecorded", "roles": [],
    }
    memberships: dict[str, set[str]] = {}
    licences: dict[str, list] = {}  # id -> [status, terms]

    def roles(p: dict) -> set[str]:
        value = p.get("roles")
        return {r for r in value if isinstance(r, str)} if isinstance(value, list) else set()

    for e in events:
        if "envelope" not in e:
            continue  # withheld: never shapes the summary (its type was checked)
        p, at, t = payload_of(e), e["position"], e["event_type"]
        if e["aggregate_type"] == submitter_type and e["aggregate_id"] == sid:
            if t in ("UserRegistered", "ClientRegistered"):
                org = field(p, "organization_id", at)
                memberships[org] = roles(p)
                submitter["organization_id"] = org
                submitter["status"] = "active"
                if t == "UserRegistered":
                    submitter["name_sealed"] = True
                else:
                    submitter["name"] = field(p, "name", at)
            elif t == "UserRoleGranted":
                memberships.setdefault(field(p, "organization_id", at), set()).add(field(p, "role", at))
            elif t == "UserRoleRevoked":
                memberships.get(field(p, "organization_id", at), set()).discard(field(p, "role", at))
            elif t in ("UserDisabled", "ClientDisabled"):
                submitter["status"] = "disabled"
            elif t == "UserEnabled":
                submitter["status"] = "active"
            elif t == "UserErased":
                memberships.clear()
                submitter["status"] = "erased"
                submitter["name_sealed"] = False
        elif e["aggregate_type"] == "License":
            lid = e["aggregate_id"]
            if t == "LicenseIssued":
                if field(p, "organization_id", at) != organization:
                    raise Broken(f"job-state.json: licence {lid} belongs to another organization than the job's")
                licences.setdefault(lid, ["active", json.loads(json.dumps(p))])
                continue
            if lid not in licences:
                raise Broken(f"job-state.json: licence {lid} has events but no LicenseIssued")
            entry = licences[lid]
            if t == "LicenseSuspended":
                entry[0] = "suspended"
            elif t == "LicenseReinstated":
                entry[0] = "active"
            elif t == "LicenseRevoked":
                entry[0] = "revoked"
            elif t == "LicenseRenewed":
                if "expires_at" not in p:
                    raise Broken(f"job-state.json: the renewal at position {at} has no expires_at")
                entry[1]["expires_at"] = p["expires_at"]
        else:
            raise Broken(
                f"job-state.json: {e['aggregate_type']} {e['aggregate_id']} is neither the submitter nor a licence"
            )
    submitter["roles"] = sorted(memberships.get(organization, set()))
    out = []
    for lid in sorted(licences):
        status, terms = licences[lid]
        not_before = instant(f"licence {lid}'s not_before", terms.get("not_before"))
        expires_at = instant(f"licence {lid}'s expires_at", terms.get("expires_at"))
        grace = terms.get("grace_period_seconds")
        grace = grace if isinstance(grace, int) and not isinstance(grace, bool) else 0
        in_force = status == "active" and not_before <= as_of < expires_at + grace * 1_000_000_000
        out.append({"id": lid, "status": status, "terms": terms, "in_force": in_force})
    return {
        "position": job["position"], "as_of": as_of_text, "organization_id": organization,
        "submitter": submitter, "licenses": out,
    }


def first_difference(path: str, a: Any, b: Any) -> str | None:
    """Where two JSON values first differ (JSON types strictly: true is not 1)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys()):
            found = first_difference(f"{path}.{k}", a.get(k), b.get(k))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(f"{path}[{i}]", x, y)
            if found:
                return found
        return None
    return None if type(a) is type(b) and a == b else path


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def at_path(value: Any, path: str) -> Any:
    for name, index in re.findall(r"\.([^.\[]+)(?:\[(\d+)\])?", path):
        value = value.get(name) if isinstance(value, dict) else None
        if index:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
    return value


# --- job-state.json ------------------------------------------------------------------------


def state_event(what: str, e: Any) -> dict:
    members(what, e, STATE_EVENT_MEMBERS, {"envelope"})
    integer(f"{what}'s position", e["position"], 1)
    integer(f"{what}'s sequence", e["sequence"], 1)
    for name in ("aggregate_type", "aggregate_id", "event_type"):
        text(f"{what}'s {name}", e[name])
    hex64(f"{what}'s hash", e["hash"])
    return e


def check_event(e: dict, size: int, root: bytes) -> None:
    where = f"job-state.json: the event at position {e['position']}"
    proven(where, e["position"], e["hash"], e["inclusion_path"], size, root)
    if "envelope" not in e:
        return
    env = e["envelope"]
    try:
        check_envelope(env)
    except EnvelopeProblem as err:
        raise Broken(f"{where}: {err}")
    for name in ("aggregate_type", "aggregate_id", "sequence", "event_type", "hash"):
        if type(env[name]) is not type(e[name]) or env[name] != e[name]:
            raise Broken(f"{where} does not have the hash it claims (its envelope's {name} differs)")
    computed = compute_hash(env)
    if computed != e["hash"]:
        raise Broken(f"{where} does not have the hash it claims (its envelope hashes to {computed})")


def check_job_state(raw: bytes, m: dict, size: int, root: bytes) -> dict:
    state = strict_json(raw, JOB_STATE)
    members(JOB_STATE, state, {"format", "job", "events", "summary"})
    if state["format"] != JOB_STATE_FORMAT:
        raise Broken(f"job-state.json: unknown format {state['format']!r}")
    job = state_event("the job event", state["job"])
    if not isinstance(state["events"], list):
        raise Broken("job-state.json: events is not a list")
    events = [state_event(f"state event {i}", e) for i, e in enumerate(state["events"])]

    check_event(job, size, root)
    if (
        "envelope" not in job
        or job["aggregate_type"] != "Job"
        or job["event_type"] != "JobSubmitted"
        or job["aggregate_id"] != m["job_id"]
    ):
        raise Broken(f"job-state.json: the job event is not the whole JobSubmitted event of job {m['job_id']}")
    if not any(x["position"] == job["position"] and x["hash"] == job["hash"] for x in m["events"]):
        raise Broken(f"job-state.json: the manifest does not list the job event at position {job['position']}")

    heads: dict[tuple[str, str], tuple[int, int, str]] = {}
    for e in events:
        check_event(e, size, root)
        key = (e["aggregate_type"], e["aggregate_id"])
        what = f"job-state.json: {key[0]} {key[1]}"
        if e["position"] >= job["position"]:
            raise Broken(f"{what}: the event at position {e['position']} is not before the job")
        if key in heads:
            seq, pos, prev = heads[key]
            if e["position"] <= pos:
                raise Broken(f"{what}: events are not in log order at position {e['position']}")
            expected = seq + 1
        else:
            expected, prev = 1, GENESIS
        if e["sequence"] != expected:
            raise Broken(f"{what}: event {expected} is missing (the next one given is {e['sequence']})")
        if "envelope" in e:
            if e["envelope"]["prev_hash"] != prev:
                raise Broken(f"{what}: event {e['sequence']} does not follow event {e['sequence'] - 1}")
        elif e["event_type"] not in WITHHELD:
            raise Broken(f"{what}: event {e['sequence']} ({e['event_type']}) shapes the state but its envelope is left out")
        heads[key] = (e["sequence"], e["position"], e["hash"])
    derived = summarize(job, events)
    path = first_difference("summary", state["summary"], derived)
    if path:
        stored, ours = at_path(state["summary"], path), at_path(derived, path)
        raise Broken(
            f"job-state.json: the summary's {path} is {compact(stored)}, but its events establish {compact(ours)}"
        )
    return derived


# --- The whole archive ---------------------------------------------------------------------


def check(archive: str, keys_path: str) -> list[str]:
    with open(keys_path, "rb") as f:
        keyset = json.load(f)
    try:
        return check_archive(archive, keyset)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # Data of the wrong shape inside the archive: broken, not a failure to run.
        raise Broken(f"the archive is malformed: {err!r}")


def check_archive(archive: str, keyset: dict) -> list[str]:
    folder, files = files_of(archive)
    if "manifest.json" not in files:
        raise Broken("the archive has no manifest.json")
    m = check_manifest(files["manifest.json"], keyset)
    if folder != f"evidence-{m['bundle_id']}":
        raise Broken(f"the archive's folder {folder!r} is not evidence-<the manifest's bundle_id>")
    out = [f"evidence bundle {m['bundle_id']} for job {m['job_id']} of organization {m['organization_id']}"]

    if "config.json" in files:
        if sha256(files["config.json"]) != hex64("config_sha256", m["config_sha256"]):
            raise Broken("config.json does not have the SHA-256 the manifest records")
        out.append("configuration: verified")
    for a in m["artifacts"]:
        members("an artifact", a, {"name", "sha256", "size", "media_type"}, {"purged_by"})
        data = files.get(f"artifacts/{a['name']}")
        if data is not None:
            if sha256(data) != a["sha256"] or len(data) != a["size"]:
                raise Broken(f"artifact {a['name']!r} does not have the recorded SHA-256 or size")
            out.append(f"artifact {a['name']}: verified")
        else:
            out.append(f"artifact {a['name']}: " + (f"purged by {a['purged_by']}" if "purged_by" in a else "not included"))

    cp = members("the manifest's checkpoint", m["checkpoint"], {"note", "tree_size", "root_hash"})
    _, size, root = open_note(text("the checkpoint note", cp["note"]), keyset["keys"])
    if size != cp["tree_size"] or root.hex() != cp["root_hash"]:
        raise Broken("the signed checkpoint does not match the manifest's tree size or root")
    for e in m["events"]:
        members("a manifest event", e, {"position", "event_id", "event_type", "hash", "inclusion_path"})
        integer("a manifest event's position", e["position"], 1)
        proven(f"the event at position {e['position']}", e["position"], hex64("an event hash", e["hash"]),
               e["inclusion_path"], size, root)
    out.append(f"events: {len(m['events'])} included in the checkpoint of {size} events")

    if "job_state_sha256" not in m:
        out.append("job state: not in this bundle")
    else:
        raw = files.get(JOB_STATE)
        if raw is None:
            raise Broken("the archive has no job-state.json, which the manifest names")
        if sha256(raw) != hex64("job_state_sha256", m["job_state_sha256"]):
            raise Broken("job-state.json does not have the recorded SHA-256")
        s = check_job_state(raw, m, size, root)
        # Any spelling of the value is valid (the signed digest pins the bytes); the platform
        # writes the canonical one, which this line lets a test hold it to.
        canonical = rfc8785.dumps(json.loads(raw)) == raw
        out.append("job-state.json: " + ("in RFC 8785 form" if canonical else "not in RFC 8785 form"))
        who = s["submitter"]
        out.append(f"job state as of position {s['position']} ({s['as_of']})")
        out.append(f"submitted by {who['kind']} {who['id']}, {who['status']}, roles [{', '.join(who['roles'])}]")
        for lic in s["licenses"]:
            out.append(f"licence {lic['id']}: {lic['status']}, in force: {str(lic['in_force']).lower()}")
    out.append("OK")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: verify_bundle.py ARCHIVE KEYS.json\n")
        return 2
    return run("verify_bundle.py", lambda: check(argv[1], argv[2]),
               errors=(OSError, ValueError, KeyError, TypeError), show=repr)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
