#!/usr/bin/env python3
"""Independent auditor for the Quantus event log.

This is a second implementation of `quantus audit verify`, written only from
docs/event-log.md (the contract for auditors), so that the spec is proven to be
re-implementable outside Rust.  It reads the output of
`quantus events tail --no-follow`: JSON lines, each `{"position": N, "envelope": {...}}`.

Usage:
    python3 tests/auditor/verify_log.py FILE      # or "-" for stdin

It checks, in the order the lines arrive:
  * every line is one JSON object with exactly `position` and `envelope`;
  * every envelope has exactly the 14 members of docs/event-log.md, with the right
    JSON types and formats;
  * every `hash` equals SHA-256 over the RFC 8785 (JCS) form of the envelope
    without `hash`;
  * per aggregate (aggregate_type, aggregate_id): sequence runs 1, 2, 3, ...;
    sequence 1 has the all-zero prev_hash; every other prev_hash is the hash of
    the previous sequence;
  * one position holds one event (the identical event delivered twice is fine),
    and one event_id appears at one position only;
and finally that the positions are exactly 1..N with no gap.

On success it prints `events: N`, `aggregates: M`, `positions: 1..N` and `OK`
(exit 0).  On the first problem it prints one `BROKEN ...` line and exits 1.
If the `rfc8785` package is missing it exits 2.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, Iterator

try:
    import rfc8785
except ImportError:  # pragma: no cover - depends on the environment
    sys.stderr.write(
        "verify_log.py needs the RFC 8785 (JSON Canonicalization Scheme) package: "
        "pip install rfc8785\n"
    )
    sys.exit(2)


# --- Constants taken from docs/event-log.md -------------------------------------------

#: The members every envelope has, no more, no fewer ("exactly these members").
ENVELOPE_MEMBERS = frozenset(
    {
        "event_id",
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "event_type",
        "schema_version",
        "occurred_at",
        "tenant_id",
        "actor",
        "correlation_id",
        "causation_id",
        "payload",
        "prev_hash",
        "hash",
    }
)

#: The members of one line of `quantus events tail` / `GET /v1/events`.
RECORD_MEMBERS = frozenset({"position", "envelope"})

#: The members of `actor`, and the allowed kinds.
ACTOR_MEMBERS = frozenset({"kind", "id"})
ACTOR_KINDS = ("user", "service", "system")

#: prev_hash of an aggregate's first event: 64 ASCII zeros.
GENESIS_PREV_HASH = "0" * 64

#: Numbers must be integers within +/-(2^53 - 1) so that JCS is exact in every language.
MAX_SAFE_INTEGER = 2**53 - 1

# Patterns are ASCII-only on purpose: Python's `\d` would also accept e.g. Arabic-Indic
# digits, which the spec's formats do not allow.
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HASH_RE = re.compile(r"[0-9a-f]{64}")
OCCURRED_AT_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
)


# --- Errors ---------------------------------------------------------------------------


class Broken(Exception):
    """The log is broken; the message is the complete `BROKEN ...` line to print."""


class EnvelopeProblem(Exception):
    """A problem with one envelope; the caller adds position and event description."""


class DuplicateMember(ValueError):
    """A JSON object names one member twice: legal-ish JSON, but not I-JSON (RFC 7493)."""


# --- Reading the input ------------------------------------------------------------------



# Aggregates that belong to the platform rather than to an organization (docs/event-log.md).
PLATFORM_AGGREGATES = {"Keyring", "CryptoPolicy", "LogCheckpoint"}
PLATFORM_TENANT = "platform"

def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook for json: refuse an object that names a member twice.

    Python's json would silently keep the last value, so a line could carry a member
    the hash never saw.  RFC 8785 requires I-JSON input, which forbids duplicates.
    """
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise DuplicateMember(f"member {json.dumps(name)} appears twice in one object")
        obj[name] = value
    return obj


def _reject_constant(name: str) -> Any:
    """parse_constant hook: NaN and Infinity are not JSON (Python accepts them by default)."""
    raise ValueError(f"{name} is not a JSON value")


def parse_line(line_no: int, raw: bytes) -> Any:
    """Decode one input line (strict UTF-8, strict JSON) or raise Broken."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Broken(f"BROKEN at line {line_no}: not valid UTF-8 ({err.reason} at byte {err.start})")
    try:
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicate_members,
            parse_constant=_reject_constant,
        )
    except DuplicateMember as err:
        raise Broken(f"BROKEN at line {line_no}: {err} (RFC 8785 input must be I-JSON)")
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise Broken(f"BROKEN at line {line_no}: not valid JSON ({err})")


def read_records(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for every non-blank line of the input."""
    for line_no, raw in enumerate(stream, start=1):
        # A blank line carries no record (e.g. a trailing empty line); skip it rather
        # than calling it malformed.
        if not raw.strip():
            continue
        yield line_no, parse_line(line_no, raw)


# --- Type and format checks -----------------------------------------------------------


def json_type_name(value: Any) -> str:
    """The JSON type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number (not an integer)"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_json_integer(value: Any) -> bool:
    """True for a JSON number written without fraction or exponent.

    bool is a subclass of int in Python, so it is excluded explicitly.  A number such
    as 1.0 or 1e0 parses to float and is refused: the spec's "integer" is taken lexically.
    """
    return isinstance(value, int) and not isinstance(value, bool)


def require_integer(name: str, value: Any, minimum: int) -> int:
    """Check that `value` is a JSON integer in [minimum, 2^53 - 1]."""
    if not is_json_integer(value):
        raise EnvelopeProblem(f"{name} must be a JSON integer, found {json_type_name(value)} {short(value)}")
    if value < minimum or value > MAX_SAFE_INTEGER:
        raise EnvelopeProblem(f"{name} must be between {minimum} and 2^53-1, found {value}")
    return value


def require_string(name: str, value: Any) -> str:
    """Check that `value` is a JSON string.

    The spec says only "string" (no minimum length) for aggregate_type, event_type and
    actor.id, so an empty string is accepted: an auditor must not be stricter than the
    contract it audits.
    """
    if not isinstance(value, str):
        raise EnvelopeProblem(f"{name} must be a JSON string, found {json_type_name(value)} {short(value)}")
    return value


def require_uuid(name: str, value: Any, version: int | None = None) -> str:
    """Check a lower-case hyphenated UUID (8-4-4-4-12), optionally of one version.

    For a given version the RFC 9562 variant bits (10xx) are checked too, because
    "UUIDv7" is defined by RFC 9562 with that variant.
    """
    require_string(name, value)
    if not UUID_RE.fullmatch(value):
        raise EnvelopeProblem(f"{name} {json.dumps(value)} is not a lower-case hyphenated UUID")
    if version is not None:
        found = int(value[14], 16)
        if found != version:
            raise EnvelopeProblem(f"{name} {value} is a version {found} UUID, expected version {version}")
        if value[19] not in "89ab":
            raise EnvelopeProblem(f"{name} {value} does not have the RFC 9562 variant (10xx)")
    return value


def require_hash(name: str, value: Any) -> str:
    """Check 64 lower-case hexadecimal digits."""
    require_string(name, value)
    if not HASH_RE.fullmatch(value):
        raise EnvelopeProblem(f"{name} {json.dumps(value)} is not 64 lower-case hex digits")
    return value


def require_occurred_at(value: Any) -> str:
    """Check `YYYY-MM-DDTHH:MM:SS.ffffffZ` and that it names a real UTC instant."""
    require_string("occurred_at", value)
    if not OCCURRED_AT_RE.fullmatch(value):
        raise EnvelopeProblem(f"occurred_at {json.dumps(value)} is not in the form YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        # The pattern fixed the shape; strptime checks the ranges (month 13, Feb 30, ...).
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        raise EnvelopeProblem(f"occurred_at {json.dumps(value)} is not a valid date and time")
    return value


def require_actor(value: Any) -> None:
    """Check `{"kind": "user" | "service" | "system", "id": string}`, nothing else."""
    if not isinstance(value, dict):
        raise EnvelopeProblem(f"actor must be a JSON object, found {json_type_name(value)}")
    check_members("actor", value, ACTOR_MEMBERS)
    if value["kind"] not in ACTOR_KINDS:
        raise EnvelopeProblem(f"actor.kind must be one of user, service, system, found {short(value['kind'])}")
    require_string("actor.id", value["id"])


def check_members(what: str, obj: dict[str, Any], expected: frozenset[str]) -> None:
    """Check that `obj` has exactly the `expected` member names."""
    missing = sorted(expected - obj.keys())
    if missing:
        raise EnvelopeProblem(f"{what} lacks member(s) {', '.join(missing)}")
    extra = sorted(obj.keys() - expected)
    if extra:
        raise EnvelopeProblem(f"{what} has unexpected member(s) {', '.join(map(json.dumps, extra))}")


def check_numbers(where: str, value: Any) -> None:
    """Check that every number inside `value` is an integer within +/-(2^53 - 1).

    The spec requires this of payloads so that the canonical form is exact everywhere.
    """
    if isinstance(value, dict):
        for name, item in value.items():
            check_numbers(f"{where}.{name}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_numbers(f"{where}[{index}]", item)
    elif isinstance(value, float):
        raise EnvelopeProblem(f"{where} is {value!r}; payload numbers must be integers")
    elif is_json_integer(value) and abs(value) > MAX_SAFE_INTEGER:
        raise EnvelopeProblem(f"{where} is {value}; payload integers must be within +/-(2^53-1)")


def check_envelope(env: Any) -> None:
    """Check the members, JSON types and formats of one envelope (not the hash value)."""
    if not isinstance(env, dict):
        raise EnvelopeProblem(f"envelope must be a JSON object, found {json_type_name(env)}")
    check_members("envelope", env, ENVELOPE_MEMBERS)
    require_uuid("event_id", env["event_id"], version=7)
    aggregate_type = require_string("aggregate_type", env["aggregate_type"])
    require_string("aggregate_id", env["aggregate_id"])
    require_integer("sequence", env["sequence"], minimum=1)
    require_string("event_type", env["event_type"])
    require_integer("schema_version", env["schema_version"], minimum=1)
    require_occurred_at(env["occurred_at"])
    # tenant_id is an organization's id (a UUID), or "platform": always for the platform-wide
    # aggregates (keys, crypto policy), and for what the platform itself owns (its
    # administrators, service principals and their grants).
    if aggregate_type in PLATFORM_AGGREGATES:
        if env["tenant_id"] != PLATFORM_TENANT:
            raise EnvelopeProblem(f"tenant_id of a {aggregate_type} event must be {PLATFORM_TENANT!r}")
    elif env["tenant_id"] != PLATFORM_TENANT or aggregate_type == "Organization":
        require_uuid("tenant_id", env["tenant_id"])
    require_actor(env["actor"])
    require_uuid("correlation_id", env["correlation_id"])
    require_uuid("causation_id", env["causation_id"])
    if not isinstance(env["payload"], dict):
        raise EnvelopeProblem(f"payload must be a JSON object, found {json_type_name(env['payload'])}")
    check_numbers("payload", env["payload"])
    require_hash("prev_hash", env["prev_hash"])
    require_hash("hash", env["hash"])
    if aggregate_type == "Organization":
        require_uuid("aggregate_id", env["aggregate_id"])
        # An Organization event belongs to the organization itself.
        if env["tenant_id"] != env["aggregate_id"]:
            raise EnvelopeProblem(
                f"tenant_id {env['tenant_id']} of an Organization event is not its own id {env['aggregate_id']}"
            )


# --- The hash ---------------------------------------------------------------------------


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 (JCS) form of `value`, encoded as UTF-8."""
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as err:
        # e.g. a lone UTF-16 surrogate in a string: not representable in UTF-8.
        raise EnvelopeProblem(f"envelope cannot be canonicalized (RFC 8785): {err}")


def compute_hash(env: dict[str, Any]) -> str:
    """The recipe: drop `hash`, keep everything else (prev_hash too), JCS, UTF-8, SHA-256."""
    without_hash = {name: value for name, value in env.items() if name != "hash"}
    return hashlib.sha256(canonical_bytes(without_hash)).hexdigest()


# --- The auditor ------------------------------------------------------------------------


@dataclass
class ChainHead:
    """What we know about the latest event of one aggregate seen so far."""

    sequence: int
    hash: str
    position: int


@dataclass
class Stored:
    """What we remember of the event at one position (enough to recognise a duplicate)."""

    event_id: str
    fingerprint: str  # SHA-256 of the JCS form of the whole envelope, hash included


def short(value: Any, limit: int = 80) -> str:
    """A value as JSON, cut to a readable length, for messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(env: Any) -> str:
    """`event <event_id> (<aggregate_type> <aggregate_id> #<sequence>)`, '?' for what is unusable."""

    def field(name: str) -> str:
        value = env.get(name) if isinstance(env, dict) else None
        if value is None:
            return "?"
        if isinstance(value, str) and value and value.isprintable() and " " not in value:
            return value
        return short(value, 40)

    return (
        f"event {field('event_id')} "
        f"({field('aggregate_type')} {field('aggregate_id')} #{field('sequence')})"
    )


class Auditor:
    """Feeds records one by one; keeps the state needed for the chain and position checks."""

    def __init__(self) -> None:
        self.by_position: dict[int, Stored] = {}
        self.position_of_event: dict[str, int] = {}
        self.chains: dict[tuple[str, str], ChainHead] = {}

    # Record level -------------------------------------------------------------------

    def feed(self, line_no: int, record: Any) -> None:
        """Check one `{"position": N, "envelope": {...}}` line; raise Broken on the first problem."""
        position, env = self._split_record(line_no, record)
        try:
            self._check_event(position, env)
        except EnvelopeProblem as problem:
            raise Broken(f"BROKEN at position {position}: {describe(env)}: {problem}")

    def _split_record(self, line_no: int, record: Any) -> tuple[int, Any]:
        """Check the line's shape and return (position, envelope)."""
        if not isinstance(record, dict):
            raise Broken(f"BROKEN at line {line_no}: expected a JSON object, found {json_type_name(record)}")
        try:
            check_members("line", record, RECORD_MEMBERS)
            position = require_integer("position", record["position"], minimum=1)
        except EnvelopeProblem as problem:
            raise Broken(f"BROKEN at line {line_no}: {problem}")
        return position, record["envelope"]

    # Event level --------------------------------------------------------------------

    def _check_event(self, position: int, env: Any) -> None:
        check_envelope(env)
        fingerprint = hashlib.sha256(canonical_bytes(env)).hexdigest()

        # Delivery is at least once, so the identical event may come again at its
        # position; it was fully checked the first time and must not be chained twice.
        earlier = self.by_position.get(position)
        if earlier is not None:
            if earlier.fingerprint == fingerprint:
                return
            raise EnvelopeProblem(f"position {position} already holds a different event {earlier.event_id}")

        # "A position handed out is never reused, and an event never changes position":
        # the same event_id at a second position is a copy, not a duplicate delivery.
        other = self.position_of_event.get(env["event_id"])
        if other is not None:
            raise EnvelopeProblem(f"event_id is already used by the event at position {other}")

        recomputed = compute_hash(env)
        if recomputed != env["hash"]:
            raise EnvelopeProblem(f"hash mismatch: stored {env['hash']}, recomputed {recomputed}")

        self._check_link(position, env)

        self.by_position[position] = Stored(env["event_id"], fingerprint)
        self.position_of_event[env["event_id"]] = position

    def _check_link(self, position: int, env: dict[str, Any]) -> None:
        """Check sequence and prev_hash against the aggregate's previous event, then advance."""
        key = (env["aggregate_type"], env["aggregate_id"])
        sequence, prev_hash = env["sequence"], env["prev_hash"]
        head = self.chains.get(key)

        if head is None:
            if sequence != 1:
                raise EnvelopeProblem(
                    f"first event of the aggregate has sequence {sequence}, expected 1 "
                    f"(sequence 1..{sequence - 1} missing)"
                )
            if prev_hash != GENESIS_PREV_HASH:
                raise EnvelopeProblem(f"sequence 1 must have prev_hash of 64 zeros, found {prev_hash}")
        else:
            if sequence != head.sequence + 1:
                raise EnvelopeProblem(
                    f"sequence {sequence} follows sequence {head.sequence} (position {head.position}), "
                    f"expected {head.sequence + 1}"
                )
            if prev_hash != head.hash:
                raise EnvelopeProblem(
                    f"prev_hash {prev_hash} is not the hash {head.hash} "
                    f"of sequence {head.sequence} (position {head.position})"
                )
            # Positions are in commit order and sequence n+1 cannot commit before n.
            if position <= head.position:
                raise EnvelopeProblem(
                    f"sequence {sequence} is at position {position}, not after sequence "
                    f"{head.sequence} at position {head.position}"
                )
        self.chains[key] = ChainHead(sequence, env["hash"], position)

    # End of input -------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Check positions are exactly 1..N and return the summary lines."""
        count = len(self.by_position)
        if count:
            # Distinct positions >= 1: they are 1..N exactly when none of 1..max is absent.
            last = max(self.by_position)
            if last != count:
                missing = next(p for p in range(1, last + 1) if p not in self.by_position)
                raise Broken(f"BROKEN: log position {missing} is missing")
            positions = f"1..{count}"
        else:
            positions = "none (empty log)"
        return [
            f"events: {count}",
            f"aggregates: {len(self.chains)}",
            f"positions: {positions}",
            "OK",
        ]


# --- Command line ------------------------------------------------------------------------


def verify(stream: IO[bytes]) -> list[str]:
    """Audit a whole input; return the success lines or raise Broken."""
    auditor = Auditor()
    for line_no, record in read_records(stream):
        auditor.feed(line_no, record)
    return auditor.finish()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        sys.stderr.write("usage: verify_log.py FILE   (JSON lines of quantus events tail; - for stdin)\n")
        return 2
    try:
        if argv[1] == "-":
            lines = verify(sys.stdin.buffer)
        else:
            with open(argv[1], "rb") as stream:
                lines = verify(stream)
    except Broken as broken:
        print(broken)
        return 1
    except OSError as err:
        sys.stderr.write(f"verify_log.py: cannot read {argv[1]}: {err.strerror}\n")
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
