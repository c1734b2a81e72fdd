# shellcheck shell=bash
#
# How busy the shared machine is around a measurement: what scripts/bench.sh and
# scripts/bench-peer.sh print beside every figure. Sourced, never run.
#   loadavg        before a measurement: CPUs busy over 2 s and the load average; with
#                  BENCH_WAIT_IDLE=1 it first waits (up to BENCH_IDLE_TIMEOUT s) until under
#                  BENCH_IDLE_BUSY percent of the CPUs are busy
#   measure_start / measure_end
#                  around a measurement: the CPU the rest of the machine took meanwhile
#                  (processes named quantus, pgbench, postgres, java, oha and this shell's
#                  own children count as the benchmark's)

# Percent of all CPUs busy over the next 2 s (from /proc/stat).
cpu_busy() {
    local a b
    read -ra a </proc/stat
    sleep 2
    read -ra b </proc/stat
    # user nice system idle iowait irq softirq steal
    local busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    echo $((100 * busy / (busy + idle > 0 ? busy + idle : 1)))
}
# CPU ticks per process, except the benchmark's own (this script and everything under it --
# quantus, pgbench --, PostgreSQL, the Kafka JVM): "pid ticks" lines, ticks = utime + stime +
# cutime + cstime (children reaped by a live parent count, so short-lived compiler processes
# under a running cargo are included).
foreign_ticks() {
    # A process may exit between the glob and the read: cat then fails, which is fine.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v self="$$" '{
        pid = $1; line = $0; sub(/^[0-9]+ \(/, "", line);
        comm = line; sub(/\) .*/, "", comm); sub(/^.*\) /, "", line);
        split(line, f, " "); ppid[pid] = f[2];
        ticks[pid] = f[12] + f[13] + f[14] + f[15];
        if (comm == "quantus" || comm == "pgbench" || comm == "postgres" || comm == "java" || comm == "oha") skip[pid] = 1;
    }
    END {
        for (pid in ticks) {
            if (pid in skip) continue;
            p = pid; mine = 0;
            for (depth = 0; depth < 64 && p > 1; depth++) { if (p == self) { mine = 1; break } p = ppid[p] }
            if (!mine) print pid, ticks[pid]
        }
    }'
}
FOREIGN_BEFORE="" STAT_BEFORE="" T_BEFORE=0
measure_start() {
    FOREIGN_BEFORE="$(foreign_ticks)"
    STAT_BEFORE="$(head -n 1 /proc/stat)"
    T_BEFORE="$(date +%s.%N)"
}
# After a measurement: how much CPU the rest of the machine took meanwhile (other people's builds
# and tests compete for the same 2 CPUs and make the figure pessimistic).
measure_end() {
    local t_after stat_after elapsed hz
    t_after="$(date +%s.%N)"
    stat_after="$(head -n 1 /proc/stat)"
    hz="$(getconf CLK_TCK)"
    elapsed="$(awk -v a="$T_BEFORE" -v b="$t_after" 'BEGIN { printf "%.1f", b - a }')"
    awk -v hz="$hz" -v cpus="$(nproc)" -v elapsed="$elapsed" -v s0="$STAT_BEFORE" -v s1="$stat_after" '
        FNR == NR { before[$1] = $2; next }
        { seen[$1] = 1; d = ($1 in before) ? $2 - before[$1] : $2; if (d > 0) foreign += d }
        END {
            # A process that exited was (mostly) reaped into a live parent cutime: do not
            # count its ticks from before the start twice.
            for (p in before) if (!(p in seen)) foreign -= before[p];
            if (foreign < 0) foreign = 0;
            split(s0, a, " "); split(s1, b, " ");
            busy = (b[2]+b[3]+b[4]+b[7]+b[8]+b[9]) - (a[2]+a[3]+a[4]+a[7]+a[8]+a[9]);
            idle = (b[5]+b[6]) - (a[5]+a[6]);
            printf "during: %.0f%% of the CPUs busy in all; other processes took %.1f CPU-s in %s s (%.0f%% of %d CPUs)\n",
                100 * busy / (busy + idle), foreign / hz, elapsed, 100 * foreign / hz / (elapsed * cpus), cpus
        }' <(echo "$FOREIGN_BEFORE") <(foreign_ticks)
}
# Before each measurement: report how busy the (shared) machine is; with BENCH_WAIT_IDLE=1 first
# wait (up to BENCH_IDLE_TIMEOUT s) until under BENCH_IDLE_BUSY percent of the CPUs are busy.
loadavg() {
    local busy waited=0
    busy="$(cpu_busy)"
    if [[ "${BENCH_WAIT_IDLE:-}" == 1 ]]; then
        while ((busy >= ${BENCH_IDLE_BUSY:-20} && waited < ${BENCH_IDLE_TIMEOUT:-900})); do
            sleep 8
            waited=$((waited + 10))
            busy="$(cpu_busy)"
        done
        ((waited == 0)) || printf 'waited %ss for the machine to calm down\n' "$waited"
    fi
    printf 'before: CPUs %s%% busy (2 s sample), load average %s\n' "$busy" "$(cut -d' ' -f1-3 /proc/loadavg)"
}

