"""CPU time and memory of a process and its children from /proc (Linux): all threads, user +
system."""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``parley serve --workers N``: the control process and its
    media workers), from each thread's ``children`` list."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 1000:
        current = todo.pop()
        out.append(current)
        try:
            for tid in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of every thread of ``pid`` and of its child processes so far
    ((0, 0) once it is gone; a child that exited meanwhile no longer counts)."""
    user = system = 0.0
    for p in tree(pid):
        u, s = _own_cpu_times(p)
        user, system = user + u, system + s
    return user, system


def run_times(pid: int) -> dict[int, int]:
    """Nanoseconds each thread of ``pid`` and of its child processes has run so far, by thread
    id (the scheduler's ``sum_exec_runtime`` in ``/proc/<pid>/task/<tid>/schedstat``): exact,
    where ``utime`` and ``stime`` come in clock ticks (10 ms: ±1 tick of a 10 s window is ±20 %
    of a server that uses 0.5 % of a core). Empty where schedstat is not available."""
    out: dict[int, int] = {}
    for p in tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    out[int(tid)] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return out


def run_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds between two :func:`run_times` of the same process tree: every thread alive at
    the end, from its start if it began meanwhile (a thread that ended meanwhile is missed)."""
    return sum(ns - before.get(tid, 0) for tid, ns in after.items()) / 1e9


def machine_ticks() -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU so far, from ``/proc/stat``: on a virtual machine
    ``steal`` is the time the hypervisor ran someone else while a CPU here wanted to run, the
    one disturbance that no process list on this machine shows ((0, 0) where unreadable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are in user
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The share of all CPU time stolen between two :func:`machine_ticks` (None: unknown)."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else None


def _own_cpu_times(pid: int) -> tuple[float, float]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0.0, 0.0
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far (0.0 once it is gone)."""
    return sum(cpu_times(pid))


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its child processes."""
    return sum(_own_rss_bytes(p) for p in tree(pid))


def _own_rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
