"""Tests for verify_log.py, with logs built by hand.

The hashes are computed here with the recipe of docs/event-log.md (drop `hash`,
RFC 8785, UTF-8, SHA-256), independently of the code under test, and the verifier
is run as a program, exactly as an auditor would run it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import rfc8785

VERIFIER = Path(__file__).with_name("verify_log.py")
ZEROS = "0" * 64


# --- Building logs -----------------------------------------------------------------------


def recipe_hash(envelope: dict) -> str:
    """The spec's recipe, as printed in docs/event-log.md."""
    return hashlib.sha256(rfc8785.dumps({k: v for k, v in envelope.items() if k != "hash"})).hexdigest()


def uuid7(n: int) -> str:
    """A deterministic, well-formed UUIDv7 (version 7, variant 10xx) for test number n."""
    ms = 0x01A227AF1C28 + n
    tail = f"{n:016x}"
    return f"{ms:012x}"[:8] + "-" + f"{ms:012x}"[8:] + "-7" + tail[:3] + "-8" + tail[3:6] + "-" + tail[4:16]


class LogBuilder:
    """Appends correctly chained events and hands out positions 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.heads: dict[str, tuple[int, str]] = {}  # aggregate_id -> (sequence, hash)
        self.counter = 0

    def new_org(self) -> str:
        self.counter += 1
        return uuid7(1000 + self.counter)

    def append(self, org: str, event_type: str, payload: dict) -> dict:
        self.counter += 1
        sequence, prev = self.heads.get(org, (0, ZEROS))
        env = {
            "event_id": uuid7(self.counter),
            "aggregate_type": "Organization",
            "aggregate_id": org,
            "sequence": sequence + 1,
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": f"2026-11-29T14:21:{self.counter % 60:02d}.123456Z",
            "tenant_id": org,
            "actor": {"kind": "service", "id": "bootstrap-admin"},
            "correlation_id": uuid7(2000 + self.counter),
            "causation_id": uuid7(3000 + self.counter),
            "payload": payload,
            "prev_hash": prev,
        }
        env["hash"] = recipe_hash(env)
        self.heads[org] = (sequence + 1, env["hash"])
        record = {"position": len(self.records) + 1, "envelope": env}
        self.records.append(record)
        return record


def clean_log() -> list[dict]:
    """Two organizations, created, renamed and suspended, interleaved: 5 events."""
    log = LogBuilder()
    a, b = log.new_org(), log.new_org()
    log.append(a, "OrganizationCreated", {"name": "Zürich Quantum Labs"})
    log.append(b, "OrganizationCreated", {"name": "Basel Qubits"})
    log.append(a, "OrganizationRenamed", {"name": "ZQL"})
    log.append(b, "OrganizationSuspended", {})
    log.append(a, "OrganizationRenamed", {"name": "ZQL AG", "seats": 12})
    return log.records


def rehash(record: dict) -> dict:
    """Recompute a record's own hash after a deliberate edit (a 'clever' forger)."""
    record["envelope"]["hash"] = recipe_hash(record["envelope"])
    return record


def run(records_or_text) -> tuple[int, str]:
    """Run the verifier on a list of records (or raw text) via stdin; return (exit code, stdout)."""
    if isinstance(records_or_text, str):
        text = records_or_text
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records_or_text)
    proc = subprocess.run(
        [sys.executable, str(VERIFIER), "-"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    return proc.returncode, proc.stdout.decode("utf-8")


def assert_broken(records, expected_start: str, reason_part: str) -> str:
    code, out = run(records)
    assert code == 1, out
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(expected_start), out
    assert reason_part in lines[0], out
    return lines[0]


# --- The spec's worked example -------------------------------------------------------------

WORKED_EXAMPLE = {
    "actor": {"id": "bootstrap-admin", "kind": "service"},
    "aggregate_id": "01a227af-1c27-7646-b9ec-b2cc682f182b",
    "aggregate_type": "Organization",
    "causation_id": "01a227af-1c27-7646-b9ec-b2cea2f3fff4",
    "correlation_id": "01a227af-1c27-7646-b9ec-b2cd22b95080",
    "event_id": "01a227af-1c28-769f-bdff-355a6d816c59",
    "event_type": "OrganizationCreated",
    "hash": "4d801296f8848473d545e69c50e4bff18c5a16db8cc0e013c67f5e77f5970745",
    "occurred_at": "2026-11-29T14:21:57.159736Z",
    "payload": {"name": "Zürich Quantum Labs"},
    "prev_hash": ZEROS,
    "schema_version": 1,
    "sequence": 1,
    "tenant_id": "01a227af-1c27-7646-b9ec-b2cc682f182b",
}

WORKED_CANONICAL = (
    '{"actor":{"id":"bootstrap-admin","kind":"service"},"aggregate_id":"01a227af-1c27-7646-b9ec-b2cc682f182b",'
    '"aggregate_type":"Organization","causation_id":"01a227af-1c27-7646-b9ec-b2cea2f3fff4",'
    '"correlation_id":"01a227af-1c27-7646-b9ec-b2cd22b95080","event_id":"01a227af-1c28-769f-bdff-355a6d816c59",'
    '"event_type":"OrganizationCreated","occurred_at":"2026-11-29T14:21:57.159736Z",'
    '"payload":{"name":"Zürich Quantum Labs"},'
    '"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000",'
    '"schema_version":1,"sequence":1,"tenant_id":"01a227af-1c27-7646-b9ec-b2cc682f182b"}'
)


def test_worked_example_canonical_form_and_hash():
    canonical = rfc8785.dumps({k: v for k, v in WORKED_EXAMPLE.items() if k != "hash"})
    assert canonical == WORKED_CANONICAL.encode("utf-8")
    assert b"Z\xc3\xbcrich" in canonical  # the spec: "the ü is the two bytes C3 BC"
    assert hashlib.sha256(canonical).hexdigest() == WORKED_EXAMPLE["hash"]
    assert recipe_hash(WORKED_EXAMPLE) == "4d801296f8848473d545e69c50e4bff18c5a16db8cc0e013c67f5e77f5970745"


def test_worked_example_passes_as_a_log():
    code, out = run([{"position": 1, "envelope": WORKED_EXAMPLE}])
    assert code == 0, out
    assert out == "events: 1\naggregates: 1\npositions: 1..1\nOK\n"


def test_worked_example_with_escaped_non_ascii_input_still_passes():
    # The hash is over the JSON value, not the bytes of the line: \u00fc is the same ü.
    text = json.dumps({"position": 1, "envelope": WORKED_EXAMPLE}, ensure_ascii=True) + "\n"
    assert "\\u00fc" in text
    assert run(text)[0] == 0


# --- Clean logs ------------------------------------------------------------------------------


def test_clean_log_passes():
    code, out = run(clean_log())
    assert code == 0, out
    assert out == "events: 5\naggregates: 2\npositions: 1..5\nOK\n"


def test_empty_log_passes():
    code, out = run("")
    assert code == 0, out
    assert out == "events: 0\naggregates: 0\npositions: none (empty log)\nOK\n"


def test_reads_a_file_argument(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in clean_log()), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(VERIFIER), str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.endswith("OK\n")


def test_duplicate_delivery_passes():
    records = clean_log()
    # At-least-once: a batch published again after a crash, e.g. positions 2 and 3 again.
    records = records[:4] + [copy.deepcopy(records[1]), copy.deepcopy(records[2])] + records[4:]
    code, out = run(records)
    assert code == 0, out
    assert out.startswith("events: 5\naggregates: 2\npositions: 1..5\n")


def test_duplicate_delivery_with_reordered_members_passes():
    # "Identical" means the same JSON value: member order on the wire does not matter.
    records = clean_log()
    again = copy.deepcopy(records[0])
    again["envelope"] = dict(reversed(list(again["envelope"].items())))
    assert run(records + [again])[0] == 0


# --- Tampering -----------------------------------------------------------------------------


def test_changed_payload_breaks_the_hash():
    records = clean_log()
    records[2]["envelope"]["payload"]["name"] = "Evil Corp"
    event_id = records[2]["envelope"]["event_id"]
    org = records[2]["envelope"]["aggregate_id"]
    line = assert_broken(records, f"BROKEN at position 3: event {event_id} (Organization {org} #2): ", "hash mismatch")
    assert f"recomputed {recipe_hash(records[2]['envelope'])}" in line


def test_changed_payload_with_recomputed_hash_breaks_the_next_link():
    records = clean_log()
    records[0]["envelope"]["payload"]["name"] = "Evil Corp"
    rehash(records[0])
    # Position 1 is self-consistent now; the next event of the same aggregate (position 3) is not.
    assert_broken(records, "BROKEN at position 3: ", "prev_hash")


def test_changed_prev_hash_breaks_the_chain():
    records = clean_log()
    records[2]["envelope"]["prev_hash"] = "f" * 64
    # Without rehash the hash check fires; with it, the link check does.
    assert_broken(records, "BROKEN at position 3: ", "hash mismatch")
    rehash(records[2])
    assert_broken(records, "BROKEN at position 3: ", f"prev_hash {'f' * 64} is not the hash")


def test_genesis_prev_hash_must_be_zeros():
    records = clean_log()
    records[1]["envelope"]["prev_hash"] = "1" * 64
    rehash(records[1])
    assert_broken(records, "BROKEN at position 2: ", "prev_hash of 64 zeros")


def test_removed_event_breaks_the_sequence():
    records = clean_log()
    del records[2]  # org A's sequence 2
    assert_broken(records, "BROKEN at position 5: ", "sequence 3 follows sequence 1")


def test_removed_first_event_breaks_the_sequence():
    records = clean_log()
    del records[0]  # org A's sequence 1
    assert_broken(records, "BROKEN at position 3: ", "first event of the aggregate has sequence 2, expected 1")


def test_removed_last_event_leaves_a_position_gap():
    records = clean_log()
    del records[3]  # org B's last event: no chain notices, only the positions do
    code, out = run(records)
    assert (code, out) == (1, "BROKEN: log position 4 is missing\n")


def test_gap_in_positions():
    records = clean_log()
    for record in records[2:]:
        record["position"] += 1  # 1, 2, 4, 5, 6
    code, out = run(records)
    assert (code, out) == (1, "BROKEN: log position 3 is missing\n")


def test_log_not_starting_at_one():
    records = clean_log()
    for record in records:
        record["position"] += 10
    assert run(records) == (1, "BROKEN: log position 1 is missing\n")


def test_two_different_events_at_one_position():
    records = clean_log()
    other = LogBuilder()
    intruder = other.append(other.new_org(), "OrganizationCreated", {"name": "Intruder"})
    intruder["position"] = 2  # a valid, correctly hashed event, but position 2 is taken
    records.append(intruder)
    assert_broken(
        records,
        f"BROKEN at position 2: event {intruder['envelope']['event_id']} ",
        f"position 2 already holds a different event {records[1]['envelope']['event_id']}",
    )


def test_same_event_id_at_two_positions():
    records = clean_log()
    copy_at_6 = copy.deepcopy(records[0])
    copy_at_6["position"] = 6
    assert_broken(records + [copy_at_6], "BROKEN at position 6: ", "already used by the event at position 1")


def test_reordered_events_of_one_aggregate():
    records = clean_log()
    # Swap A#2 (position 3) and A#3 (position 5), keeping positions in place.
    records[2]["envelope"], records[4]["envelope"] = records[4]["envelope"], records[2]["envelope"]
    assert_broken(records, "BROKEN at position 3: ", "sequence 3 follows sequence 1")


# --- Formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member, value, reason",
    [
        ("event_id", "01a227af-1c28-469f-bdff-355a6d816c59", "version 4 UUID, expected version 7"),
        ("event_id", "01A227AF-1C28-769F-BDFF-355A6D816C59", "not a lower-case hyphenated UUID"),
        ("event_id", "01a227af1c28769fbdff355a6d816c59", "not a lower-case hyphenated UUID"),
        ("event_id", "01a227af-1c28-769f-7dff-355a6d816c59", "variant"),
        ("correlation_id", "not-a-uuid", "correlation_id \"not-a-uuid\" is not a lower-case"),
        ("causation_id", 42, "causation_id must be a JSON string"),
        ("occurred_at", "2026-11-29T14:21:57.159Z", "not in the form YYYY-MM-DDTHH:MM:SS.ffffffZ"),
        ("occurred_at", "2026-11-29T14:21:57.159736+00:00", "not in the form"),
        ("occurred_at", "2026-11-29 14:21:57.159736Z", "not in the form"),
        ("occurred_at", "2026-02-30T14:21:57.159736Z", "not a valid date and time"),
        ("occurred_at", "2026-11-29T14:21:57.١٥٩٧٣٦Z", "not in the form"),
        ("sequence", "1", "sequence must be a JSON integer, found string"),
        ("sequence", 1.0, "sequence must be a JSON integer, found number (not an integer)"),
        ("sequence", 0, "sequence must be between 1"),
        ("schema_version", True, "schema_version must be a JSON integer, found boolean"),
        ("actor", {"kind": "robot", "id": "x"}, "actor.kind must be one of user, service, system"),
        ("actor", {"kind": "user"}, "actor lacks member(s) id"),
        ("actor", {"kind": "user", "id": "u", "name": "x"}, "actor has unexpected member(s)"),
        ("hash", "4D801296F8848473D545E69C50E4BFF18C5A16DB8CC0E013C67F5E77F5970745", "not 64 lower-case hex"),
        ("prev_hash", "0" * 63, "not 64 lower-case hex"),
        ("payload", [], "payload must be a JSON object"),
        ("payload", {"amount": 1.5}, "payload.amount is 1.5; payload numbers must be integers"),
        ("payload", {"n": [2**53]}, "payload.n[0] is 9007199254740992"),
        ("tenant_id", "01a227af-1c27-7646-b9ec-b2cc682f1800", "is not its own id"),
    ],
)
def test_bad_member(member, value, reason):
    envelope = copy.deepcopy(WORKED_EXAMPLE)
    envelope[member] = value
    if member != "hash":
        # Give it a correct hash, so that only the format can be the complaint.
        try:
            envelope["hash"] = recipe_hash(envelope)
        except rfc8785.CanonicalizationError:
            pass  # e.g. 2^53: not canonicalizable, the format check must fire first anyway
    assert_broken([{"position": 1, "envelope": envelope}], "BROKEN at position 1: event ", reason)


def test_missing_and_extra_members():
    envelope = copy.deepcopy(WORKED_EXAMPLE)
    del envelope["tenant_id"]
    assert_broken([{"position": 1, "envelope": envelope}], "BROKEN at position 1: ", "envelope lacks member(s) tenant_id")
    envelope = copy.deepcopy(WORKED_EXAMPLE)
    envelope["position"] = 1  # the position is beside the envelope, never inside it
    assert_broken([{"position": 1, "envelope": envelope}], "BROKEN at position 1: ", 'unexpected member(s) "position"')


# --- Malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, reason",
    [
        ("not json\n", "BROKEN at line 1: not valid JSON"),
        ('{"position": 1, "envelope": {}\n', "BROKEN at line 1: not valid JSON"),
        ("[1, 2]\n", "BROKEN at line 1: expected a JSON object, found array"),
        ('{"envelope": {}}\n', "BROKEN at line 1: line lacks member(s) position"),
        ('{"position": 1, "envelope": {}, "x": 1}\n', 'BROKEN at line 1: line has unexpected member(s) "x"'),
        ('{"position": "1", "envelope": {}}\n', "BROKEN at line 1: position must be a JSON integer, found string"),
        ('{"position": 0, "envelope": {}}\n', "BROKEN at line 1: position must be between 1"),
        ('{"position": NaN, "envelope": {}}\n', "BROKEN at line 1: not valid JSON (NaN is not a JSON value)"),
        ('{"position": 1, "position": 2, "envelope": {}}\n', 'BROKEN at line 1: member "position" appears twice in one object'),
        ('{"position": 1, "envelope": "x"}\n', "BROKEN at position 1: event ? (? ? #?): envelope must be a JSON object"),
        ('{"position": 1, "envelope": {}}\n', "BROKEN at position 1: event ? (? ? #?): envelope lacks member(s)"),
    ],
)
def test_malformed_input(text, reason):
    code, out = run(text)
    assert code == 1, out
    assert out.startswith(reason), out
    assert len(out.splitlines()) == 1


def test_malformed_line_after_good_ones_names_its_line_number():
    text = "".join(json.dumps(r) + "\n" for r in clean_log()) + "\n" + "}{\n"
    code, out = run(text)
    assert code == 1 and out.startswith("BROKEN at line 7: not valid JSON"), out


def test_invalid_utf8():
    proc = subprocess.run(
        [sys.executable, str(VERIFIER), "-"], input=b'{"position": 1, "envelope": "\xff"}\n', capture_output=True, check=False
    )
    assert proc.returncode == 1
    assert proc.stdout.decode().startswith("BROKEN at line 1: not valid UTF-8")


def test_lone_surrogate_cannot_be_canonicalized():
    envelope = copy.deepcopy(WORKED_EXAMPLE)
    text = json.dumps({"position": 1, "envelope": envelope}).replace("bootstrap-admin", "boot\\ud800")
    code, out = run(text + "\n")
    assert code == 1 and "cannot be canonicalized" in out, out


def platform_event(aggregate_type: str, tenant_id: str) -> list[dict]:
    """A one-event log of a platform-wide aggregate (keys, crypto policy)."""
    env = {
        "event_id": uuid7(1),
        "aggregate_type": aggregate_type,
        "aggregate_id": "keyring-license" if aggregate_type == "Keyring" else "crypto-policy",
        "sequence": 1,
        "event_type": "KeyActivated" if aggregate_type == "Keyring" else "AlgorithmRuleSet",
        "schema_version": 1,
        "occurred_at": "2026-11-29T14:21:00.123456Z",
        "tenant_id": tenant_id,
        "actor": {"kind": "system", "id": "quantus-bootstrap"},
        "correlation_id": uuid7(2),
        "causation_id": uuid7(3),
        "payload": {"kid": "00" * 16} if aggregate_type == "Keyring" else {"algorithm": "ML-DSA-65-Ed25519"},
        "prev_hash": ZEROS,
    }
    env["hash"] = recipe_hash(env)
    return [{"position": 1, "envelope": env}]


@pytest.mark.parametrize("aggregate_type", ["Keyring", "CryptoPolicy"])
def test_platform_aggregates_belong_to_the_platform_tenant(aggregate_type):
    code, out = run(platform_event(aggregate_type, "platform"))
    assert code == 0, out
    assert out.rstrip().endswith("OK")


@pytest.mark.parametrize("aggregate_type", ["Keyring", "CryptoPolicy"])
def test_platform_aggregates_refuse_an_organization_tenant(aggregate_type):
    code, out = run(platform_event(aggregate_type, uuid7(99)))
    assert code == 1, out
    assert "platform" in out


def owned_event(aggregate_type: str, aggregate_id: str, tenant_id: str) -> list[dict]:
    """A one-event log of an aggregate an organization (or the platform itself) owns."""
    env = {
        "event_id": uuid7(1),
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "sequence": 1,
        "event_type": "ClientDisabled",
        "schema_version": 1,
        "occurred_at": "2026-11-29T14:21:00.123456Z",
        "tenant_id": tenant_id,
        "actor": {"kind": "system", "id": "quantus-bootstrap"},
        "correlation_id": uuid7(2),
        "causation_id": uuid7(3),
        "payload": {"reason": "x"},
        "prev_hash": ZEROS,
    }
    env["hash"] = recipe_hash(env)
    return [{"position": 1, "envelope": env}]


def test_what_the_platform_itself_owns_may_have_the_platform_tenant():
    code, out = run(owned_event("Client", "quantus-bootstrap-admin", "platform"))
    assert code == 0, out
    code, out = run(owned_event("Client", "c1", uuid7(9)))
    assert code == 0, out


def test_an_owned_aggregate_refuses_a_tenant_that_is_neither_an_organization_nor_the_platform():
    code, out = run(owned_event("Client", "c1", "someone"))
    assert code == 1 and "tenant_id" in out, out
    code, out = run(owned_event("Organization", uuid7(9), "platform"))
    assert code == 1, out
