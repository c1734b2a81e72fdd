-- pgbench script: what one Quantus event append does, without Quantus.
--
-- Run by scripts/bench.sh (which creates a fresh scratch database with a table
-- `events` shaped exactly like infra/src/db.rs's, the sequence `bench_position`
-- and the helpers `bench_uuid7()`, `bench_now()` and `bench_payload(id)`; they live in
-- SQL functions because pgbench would read the colons in their literals as variables), e.g.
--
--   pgbench -n -M prepared -c 8 -j 2 -T 20 -D locked=1 -D rows=1 -f scripts/pgbench-append.sql DB
--   pgbench -n -M prepared -c 8 -j 2 -T 20 -D locked=0 -D rows=1 -f scripts/pgbench-append.sql DB
--
-- locked=1  the serialised append of infra/src/event_store.rs (SqlEventRepository::append):
--           BEGIN; pg_advisory_xact_lock(7215130706); SELECT MAX(position); INSERT one
--           row at max+1; COMMIT -- five client round trips; from the lock's grant the last
--           three (MAX, INSERT, COMMIT with its WAL flush) run while every other client waits.
--           (The real append also runs one more indexed SELECT under the lock -- the
--           aggregate's last sequence and hash -- and the command pipeline adds an
--           aggregate load before and a MAX(position) per aggregate after, outside it.)
-- locked=0  the same row as one autocommitted INSERT, position from a sequence: no lock,
--           no MAX, so concurrent commits can share one WAL flush (group commit).
-- rows=N    rows per transaction (default in bench.sh: 1). rows=16 with locked=1 is what
--           appending a batch of 16 commands' events in one serialised transaction would
--           cost: one lock, one MAX, one multi-row INSERT, one commit.
--
-- The row is an OrganizationCreated event as `quantus bench` writes it: UUIDv7-like ids
-- (time-ordered, like Uuid::now_v7, so the unique indexes see the same locality), RFC 3339
-- microsecond timestamp, a ~25-byte JSON payload, genesis prev_hash and a 64-hex hash;
-- about 466 bytes per row (pg_column_size).

\if :locked
BEGIN;
SELECT pg_advisory_xact_lock(7215130706);
SELECT COALESCE(MAX(position), 0) + 1 AS pos FROM events \gset
INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence, event_type,
    schema_version, occurred_at, tenant_id, actor_kind, actor_id, correlation_id, causation_id,
    payload, prev_hash, hash)
SELECT CAST(:pos AS bigint) + a.n - 1, bench_uuid7(), 'Organization', a.id, 1, 'OrganizationCreated',
    1, bench_now(), a.id,
    'system', 'bench', gen_random_uuid()::text, gen_random_uuid()::text,
    bench_payload(a.id), repeat('0', 64), md5(a.id) || md5(random()::text)
FROM (SELECT n, bench_uuid7() AS id FROM generate_series(1, CAST(:rows AS int)) n) a;
END;
\else
INSERT INTO events (position, event_id, aggregate_type, aggregate_id, sequence, event_type,
    schema_version, occurred_at, tenant_id, actor_kind, actor_id, correlation_id, causation_id,
    payload, prev_hash, hash)
SELECT nextval('bench_position'), bench_uuid7(), 'Organization', a.id, 1, 'OrganizationCreated',
    1, bench_now(), a.id,
    'system', 'bench', gen_random_uuid()::text, gen_random_uuid()::text,
    bench_payload(a.id), repeat('0', 64), md5(a.id) || md5(random()::text)
FROM (SELECT n, bench_uuid7() AS id FROM generate_series(1, CAST(:rows AS int)) n) a;
\endif
