"""Tests for verify_bundle.py's own parts that whole bundles rarely reach: instants, the strict
comparison of the summary, and the RFC 9162 proofs against a tree built here. Whole bundles are
checked against the platform's in tests/it/job_state.rs."""

from __future__ import annotations

import hashlib

import pytest

import verify_bundle as v
from verify_checkpoints import tree_head


def test_instants_are_compared_exactly_and_in_utc():
    assert v.instant("t", "1970-01-01T00:00:00Z") == 0
    assert v.instant("t", "1970-01-01T01:00:00+01:00") == 0
    assert v.instant("t", "2026-06-01T12:00:00.000000001Z") == v.instant("t", "2026-06-01T12:00:00Z") + 1
    assert v.instant("t", "2000-03-01T00:00:00Z") - v.instant("t", "2000-02-28T00:00:00Z") == 2 * 86400 * 10**9
    for bad in ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-06-01T24:00:00Z", "2026-06-01", 7, None]:
        with pytest.raises(v.Broken):
            v.instant("t", bad)


def test_the_summary_comparison_keeps_json_types_apart():
    assert v.first_difference("summary", {"a": [1, "x"]}, {"a": [1, "x"]}) is None
    assert v.first_difference("summary", {"in_force": True}, {"in_force": 1}) == "summary.in_force"
    assert v.first_difference("summary", {"n": 1}, {"n": 1.0}) == "summary.n"
    assert v.first_difference("summary", {"r": ["a", "b"]}, {"r": ["a"]}) == "summary.r"
    assert v.first_difference("summary", {"s": {"r": ["a", "b"]}}, {"s": {"r": ["a", "c"]}}) == "summary.s.r[1]"
    assert v.first_difference("summary", {"extra": None, "b": 2}, {"b": 2}) is None  # null = absent, as in Rust
    assert v.first_difference("summary", {"extra": 0}, {}) == "summary.extra"
    assert v.at_path({"s": {"r": ["a", "c"]}}, "summary.s.r[1]") == "c"


def leaf(i: int) -> bytes:
    return hashlib.sha256(b"\x00" + bytes([i]) * 32).digest()


def audit_path(leaves: list[bytes], m: int) -> list[bytes]:
    """RFC 9162 section 2.1.3.1, PATH(m, D[n]), by its recursive definition."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return audit_path(leaves[:k], m) + [tree_head(leaves[k:])]
    return audit_path(leaves[k:], m - k) + [tree_head(leaves[:k])]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13])
def test_every_leaf_is_proven_and_no_other(size):
    leaves = [leaf(i) for i in range(size)]
    root = tree_head(leaves)
    for m in range(size):
        path = audit_path(leaves, m)
        assert v.included(leaves[m], m, size, path, root)
        assert not v.included(leaf(99), m, size, path, root)
        if path:
            assert not v.included(leaves[m], m, size, [bytes(32)] + path[1:], root)
    assert not v.included(leaves[0], size, size, [], root)
