"""Print one markdown table of medians with flowjobs/anchor ratios from harness TSV files.

usage: compare.py RAW.tsv [RAW.tsv ...]      (several files are pooled)

Input: the `rep contestant case metric value` TSV that the anchor harness's run_all.sh
writes (bench/run keeps them in bench/.cache/raw/<stamp>/). One row per flowjobs case and
metric; flowjobs' `.sync` and `.runworker` variants are compared with the anchors' case of
the same name without the suffix. The rq and celery columns show that contestant's best variant of the
same workload (W2.simple, W4.solo, ...). Ratios always read "how much better flowjobs is":
flowjobs/anchor for throughput (jobs/s), anchor/flowjobs for seconds and milliseconds,
printed as "N× faster" or "N× slower". For W6 a second table lists every contestant's
setup (Celery's pools with and without connection reuse, RQ, django-tasks-db) against
flowjobs' W6 case.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import defaultdict

ME = "flowjobs"
RATIO_ANCHORS = ("bullmq-node", "bullmq-py")
BEST_OF_ANCHORS = ("rq", "celery")
CASE_ORDER = (
    "W1.add",
    "W1.bulk",
    "W2.c1",
    "W2.c50",
    "W3.flow",
    "W4.latency",
    "W5.flows",
    "W6.orm",
)
LABELS = {
    ("W1.add", "jobs_per_s"): "W1 add {BENCH_N} one by one",
    ("W1.bulk", "jobs_per_s"): "W1 add {BENCH_N} in bulk chunks of {BENCH_BULK_CHUNK}",
    ("W2.c1", "jobs_per_s"): "W2 process {BENCH_N}, concurrency 1",
    ("W2.c50", "jobs_per_s"): "W2 process {BENCH_N}, concurrency 50",
    ("W2.c50.p2", "jobs_per_s"): "W2 process {BENCH_N}, 2 worker processes at concurrency 50",
    ("W6.orm", "jobs_per_s"): "W6 {BENCH_W6_N} jobs of one ORM insert (PostgreSQL)",
    ("W2.cpu.p1", "jobs_per_s"): "W2 {BENCH_N} jobs of 0.5 ms CPU, 1 worker process",
    ("W2.cpu.p2", "jobs_per_s"): "W2 {BENCH_N} jobs of 0.5 ms CPU, 2 worker processes",
    ("W3.flow", "create_s"): "W3 flow 1+{BENCH_FLOW_CHILDREN}: create",
    ("W3.flow", "done_s"): "W3 flow 1+{BENCH_FLOW_CHILDREN}: until the parent is done",
    ("W4.latency", "p50_ms"): "W4 add-to-start p50 ({BENCH_LAT_SAMPLES} samples)",
    ("W4.latency", "p99_ms"): "W4 add-to-start p99 ({BENCH_LAT_SAMPLES} samples)",
    ("W5.flows", "create_s"): "W5 {BENCH_W5_FLOWS} flows of {BENCH_W5_CHILDREN}: add",
    ("W5.flows", "done_s"): "W5 {BENCH_W5_FLOWS} flows of {BENCH_W5_CHILDREN}, "
    "{BENCH_W5_WORKERS} worker procs: done",
}
SIZES = {
    "BENCH_N": "20000",
    "BENCH_BULK_CHUNK": "1000",
    "BENCH_FLOW_CHILDREN": "1000",
    "BENCH_LAT_SAMPLES": "500",
    "BENCH_W5_FLOWS": "200",
    "BENCH_W5_CHILDREN": "10",
    "BENCH_W5_WORKERS": "2",
    "BENCH_W6_N": "5000",
}


def higher_is_better(metric: str) -> bool:
    return metric.endswith(("_per_s", "_rps"))


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


# (contestant, case, metric) -> {(file, round): value}: per-round ratios pair the rounds
BY_ROUND: dict[tuple[str, str, str], dict[tuple[str, str], float]] = defaultdict(dict)


def round_ratio_text(mine: tuple[str, str, str], theirs: tuple[str, str, str]) -> str:
    """The median of the per-round ratios of two cases (the harness runs a round's
    contestants back to back, so a round's pair shares the machine's state), with their
    range; "-" when no round has both."""
    metric = mine[2]
    ratios = []
    for round_id, value in BY_ROUND.get(mine, {}).items():
        other = BY_ROUND.get(theirs, {}).get(round_id)
        if value and other:
            ratios.append(value / other if higher_is_better(metric) else other / value)
    if not ratios:
        return "-"
    mid = statistics.median(ratios)
    text = f"{mid:.2f}× faster" if mid >= 1 else f"{1 / mid:.2f}× slower"
    if len(ratios) > 1:
        text += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    return text


def load(paths: list[str]) -> tuple[dict, dict, list[tuple[str, str]]]:
    """Values, statuses and version lines of TSV files; sizes from their headers go to SIZES."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    statuses: dict[tuple[str, str], list[str]] = defaultdict(list)
    info: list[tuple[str, str]] = []
    for path in paths:
        with open(path) as fh:
            for line in fh:
                if line.startswith("# REPEATS="):
                    for field in line[2:].split():
                        name, _, value = field.partition("=")
                        if name in SIZES:
                            SIZES[name] = value
                if line.startswith("#") or not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 5:
                    continue
                rep, contestant, case, metric, value = parts
                if case == "info":
                    if (contestant, value) not in info:
                        info.append((contestant, value))
                elif metric == "status":
                    statuses[(contestant, case)].append(value)
                else:
                    try:
                        values[(contestant, case, metric)].append(float(value))
                        BY_ROUND[(contestant, case, metric)][(path, rep)] = float(value)
                    except ValueError:
                        statuses[(contestant, case)].append(value)
    return values, statuses, info


VARIANT_NOTES = {
    ".sync": " (sync processor)",
    ".runworker": " (manage.py runworker, default settings, sync processor)",
    ".enqueue": " (flowjobs.enqueue)",
    ".tasks": " (django.tasks Task.enqueue)",
    ".taskjob": " (Queue.add of the job Task.enqueue makes)",
}
FLOWJOBS_ONLY_SUFFIXES = tuple(VARIANT_NOTES)


def base_case(case: str) -> str:
    """The anchors' case a flowjobs-only variant is compared with: `W2.c50.sync` and
    `W2.c50.runworker` with `W2.c50` (the anchors have neither sync processors nor
    a Django command)."""
    for suffix in FLOWJOBS_ONLY_SUFFIXES:
        case = case.removesuffix(suffix)
    return case


def case_rank(case: str) -> tuple[int, str]:
    base = base_case(case)
    if base not in CASE_ORDER:  # flowjobs-only variants sit with their workload
        base = next((c for c in CASE_ORDER if base.startswith(c.split(".")[0] + ".")), base)
    return (CASE_ORDER.index(base) if base in CASE_ORDER else len(CASE_ORDER), case)


def best_variant(values: dict, contestant: str, case: str, metric: str) -> str:
    """The contestant's median for case, else its best over its variants of case's workload
    (rq's W2.fork / W2.simple for W2.c1, ...)."""
    exact = values.get((contestant, base_case(case), metric))
    if exact:
        return fmt(statistics.median(exact))
    if base_case(case) not in CASE_ORDER:
        return "-"  # a flowjobs-only case (W2.cpu.p2, ...): no anchor runs that workload
    workload = case.split(".")[0]
    found = []
    for (c, cs, m), vals in values.items():
        if c == contestant and m == metric and cs.split(".")[0] == workload:
            found.append((statistics.median(vals), cs))
    if not found:
        return "-"
    pick = max(found) if higher_is_better(metric) else min(found)
    variant = pick[1].split(".", 1)[1] if "." in pick[1] else pick[1]
    return f"{fmt(pick[0])} ({variant})"


def spread_text(vals: list[float]) -> str:
    """(max-min)/median of a case's rounds, and how many rounds."""
    mid = statistics.median(vals)
    spread = (max(vals) - min(vals)) / mid * 100 if mid else 0.0
    return f"{spread:.0f}% (n={len(vals)})"


# Workloads whose anchors run several setups worth a row each (W6: Celery with and without
# connection reuse, its pools, RQ, django-tasks-db): one more table, every contestant's case.
EVERY_SETUP_TABLES = {
    "W6": "W6: {BENCH_W6_N} jobs of one ORM insert (PostgreSQL), every setup",
}


def print_every_setup_table(values: dict, workload: str, title: str) -> None:
    """flowjobs' case(s) of the workload first, then every other contestant's case of it,
    fastest first, each with the ratio to flowjobs' (first) case."""
    rows = [(c, cs, m) for (c, cs, m) in values if cs.split(".")[0] == workload]
    mine = sorted(r for r in rows if r[0] == ME)
    if not mine:
        return
    metric = mine[0][2]
    others = sorted(
        (r for r in rows if r[0] != ME and r[2] == metric),
        key=lambda r: statistics.median(values[r]),
        reverse=higher_is_better(metric),
    )
    sizes = {k: f"{int(v):,}" if v.isdigit() else v for k, v in SIZES.items()}
    print()
    print(title.format(**sizes))
    print()
    head = ["contestant", "case", metric, "spread", f"{ME} {mine[0][1]} vs it"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in mine + others:
        vals = values[row]
        ratio = round_ratio_text(mine[0], row) if row != mine[0] else ""
        cells = [row[0], row[1], fmt(statistics.median(vals)), spread_text(vals), ratio]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str]) -> int:
    paths = [a for a in argv[1:] if not a.startswith("--")]
    if not paths:
        raise SystemExit(__doc__)
    for name, default in SIZES.items():
        SIZES[name] = os.environ.get(name, default)
    values, statuses, info = load(paths)
    rows = sorted(
        {(cs, m) for (c, cs, m) in values if c in (ME, *RATIO_ANCHORS)},
        key=lambda r: (case_rank(r[0]), r[1]),
    )
    for contestant, version in info:
        print(f"- {contestant}: {version}")
    print()
    head = ["workload", "case", "metric", "better", ME, "spread"]
    for a in RATIO_ANCHORS:
        head += [a, f"{ME} vs {a}"]
    head += list(BEST_OF_ANCHORS)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case, metric in rows:
        mine_vals = values.get((ME, case, metric))
        mine = statistics.median(mine_vals) if mine_vals else None
        sizes = {k: f"{int(v):,}" if v.isdigit() else v for k, v in SIZES.items()}
        label = LABELS.get((base_case(case), metric), case).format(**sizes)
        for suffix, note in VARIANT_NOTES.items():
            if case.endswith(suffix):
                label += note
        cells = [label, case, metric, "higher" if higher_is_better(metric) else "lower"]
        if mine_vals:
            cells += [fmt(mine), spread_text(mine_vals)]
        else:
            cells += [" ".join(sorted(set(statuses.get((ME, case), ["-"])))), ""]
        for a in RATIO_ANCHORS:
            theirs_vals = values.get((a, base_case(case), metric))
            if theirs_vals:
                theirs = statistics.median(theirs_vals)
                cells += [
                    fmt(theirs),
                    round_ratio_text((ME, case, metric), (a, base_case(case), metric))
                    if mine
                    else "-",
                ]
            else:
                cells += [
                    " ".join(sorted(set(statuses.get((a, base_case(case)), ["-"])))),
                    "-",
                ]
        for a in BEST_OF_ANCHORS:
            cells.append(best_variant(values, a, case, metric))
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        f"Medians over rounds. '{ME} vs X': the median of the per-round ratios (a round "
        f"runs both back to back), how many times better {ME} is than X (jobs/s: "
        f"{ME}/X; seconds and ms: X/{ME}), with their range; 'slower' means X is better. spread = "
        f"(max-min)/median of {ME}'s rounds. rq/celery: their best variant of the workload."
    )
    for workload, title in EVERY_SETUP_TABLES.items():
        print_every_setup_table(values, workload, title)
    failed = {k: v for k, v in statuses.items() if v}
    if failed:
        print()
        print("Not measured (status per round):")
        for (contestant, case), vals in sorted(failed.items()):
            print(f"- {contestant} {case}: {', '.join(vals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
