"""Summarise the tuning benchmark (bench/test_tune.py) from a pytest-benchmark JSON file.

Usage: python bench/tune_report.py RESULTS.json [--markdown]

Three tables, each with its goal from the issue and whether it holds:

* trials to reach the best validation accuracy of 60 random trials, per strategy: the median
  over the repetitions and each repetition's count ("100*": not reached within the cap of 100
  trials, counted as 100); goal: bayes median <= 25;
* trials per minute with 1 and 2 workers on the same study, and the speed-up (ratio of the
  two median wall times); goal: >= 1.7x;
* the search's overhead per trial with an instant objective (random and bayes, SQLite file
  and ":memory:"), split into the strategy's proposals, the storage and the rest; the issue
  sets no goal for it, so it is reported only.

Standard library only. ``print_tune(data, markdown)`` prints the same from the loaded JSON
(for bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

NA = "n/a"
STRATEGY_ORDER = ("bayes", "coarse_to_fine", "random")
BAYES_GOAL = 25  # defaults; a run's extra_info["goal"] wins
WORKERS_GOAL = 1.7
CONTENTION = 1.25  # pool trials this much slower than inline ones: the cores were busy


def _entries(data: dict, kind: str) -> list[dict]:
    """(extra_info + median time) of the benchmarks of one kind, e.g. "tune_race"."""
    out = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        stats = bench.get("stats") or {}
        if info.get("bench") == kind:
            out.append({**info, "time": stats.get("median")})
    return out


def table(headers: list[str], body: list[list[str]], markdown: bool, left: int = 1) -> str:
    """A plain-text table (first ``left`` columns left-aligned) or a Markdown one."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]
    align = [str.ljust if i < left else str.rjust for i in range(len(headers))]

    def line(cells):
        return "  ".join(f(c, w) for f, c, w in zip(align, cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in body])


def _num(value, fmt: str) -> str:
    return NA if value is None else format(value, fmt)


def _verdict(ok: bool | None) -> str:
    return NA if ok is None else ("hold" if ok else "MISS")


def _title(text: str, markdown: bool) -> str:
    return f"{'## ' if markdown else ''}{text}\n"


# ------------------------------------------------------------------------------------------
# The three sections
# ------------------------------------------------------------------------------------------

def _count_text(count: int, reached: bool) -> str:
    return str(count) if reached else f"{count}*"


def race_section(entries: list[dict], markdown: bool) -> tuple[str, int, int]:
    """Trials to reach the target, per strategy; (text, goals met, goals measured)."""
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    entries = sorted(entries, key=lambda e: (order.get(e["strategy"], len(order)),
                                             e["strategy"]))
    first = entries[0]
    cap = first["cap"]
    seeds = ", ".join(str(s) for s in first["seeds"])
    body, met, measured = [], 0, 0
    for e in entries:
        counts, reached = e["counts"], e["reached"]
        median = statistics.median(counts)
        # The median of an odd number of counts is one of them: flag it if it is a cap.
        median_reached = not (median == e["cap"] and sorted(
            zip(counts, reached, strict=True))[len(counts) // 2][1] is False)
        median_text = f"{median:g}" if median_reached else f"{median:g}*"
        goal = e.get("goal")
        ok = None if goal is None else (median_reached and median <= goal)
        if ok is not None:
            measured += 1
            met += ok
        body.append([
            e["strategy"], median_text,
            ", ".join(_count_text(c, r) for c, r in zip(counts, reached, strict=True)),
            f"{sum(reached)}/{len(reached)}", _num(e.get("time"), ".1f"),
            NA if goal is None else f"median <= {goal}", _verdict(ok),
        ])
    headers = ["strategy", "median", f"trials per seed ({seeds})", "reached", "wall s",
               "goal", "verdict"]
    targets = ", ".join(f"{t:.4f}" for t in first["targets"])
    text = "\n".join([
        _title(f"Trials to reach the best validation accuracy of {first['target_trials']} "
               f"random trials (digits, {first['epochs']} epochs, validation split "
               f"{first['validation_split']:g}, median over {len(first['seeds'])} seeds)",
               markdown),
        table(headers, body, markdown),
        "",
        f"* not reached within the cap of {cap} trials (counted as {cap}). Targets per seed: "
        f"{targets}. Each seed: target from a random search with study seed 1000+seed, the "
        "strategies with study seed 2000+seed; trials trained with a fixed seed per repetition "
        "(a value depends on the params only). wall s: the strategy's searches, training "
        "included.",
    ])
    return text, met, measured


def workers_section(entries: list[dict], markdown: bool) -> tuple[str, int, int]:
    """Trials per minute with 1 and 2 workers; (text, goals met, goals measured)."""
    by_jobs = {e["n_jobs"]: e for e in entries}
    base = by_jobs.get(1)
    body, met, measured = [], 0, 0
    for n_jobs in sorted(by_jobs):
        e = by_jobs[n_jobs]
        wall = e.get("time") or e.get("wall_s")
        speedup = None
        if base is not None and wall:
            base_wall = base.get("time") or base.get("wall_s")
            speedup = base_wall / wall if base_wall else None
        goal = e.get("goal", WORKERS_GOAL)
        ok = None
        if n_jobs > 1 and speedup is not None:
            ok = speedup >= goal
            measured += 1
            met += ok
        body.append([
            str(n_jobs), str(e["n_trials"]), _num(wall, ".2f"),
            _num(None if not wall else e["n_trials"] / wall * 60.0, ".0f"),
            _num(e.get("mean_trial_s"), ".3f"), _num(e.get("busy"), ".2f"),
            _num(speedup, ".2f"), f">= {goal:g}x" if n_jobs > 1 else "-", _verdict(ok)
            if n_jobs > 1 else "-",
        ])
    headers = ["workers", "trials", "wall s", "trials/min", "mean trial s", "busy",
               "speed-up", "goal", "verdict"]
    first = entries[0]
    contention = ""
    pool = by_jobs.get(max(by_jobs))
    if base is not None and pool is not base and base.get("mean_trial_s") \
            and pool.get("mean_trial_s"):
        slower = pool["mean_trial_s"] / base["mean_trial_s"]
        if slower > CONTENTION:
            contention = (f" CAUTION: a trial took {slower:.2f}x as long in the pool as inline: "
                          "the cores were not free for the workers during the run (other "
                          "load); rerun on a quiet machine.")
    identical = any(e.get("identical_to") for e in entries)
    loads = ", ".join(f"{by_jobs[j].get('loadavg_1min', float('nan')):.2f}"
                      for j in sorted(by_jobs))
    text = "\n".join([
        _title(f"Trials per minute, 1 vs 2 workers (digits, {first['epochs']} epochs per trial, "
               f"{first['strategy']} search, same study seed)", markdown),
        table(headers, body, markdown),
        "",
        "1 worker: inline in the coordinator; 2: the runner's process pool (spawn, one BLAS "
        "thread each), its start included. busy: summed trial durations / (workers x wall). "
        "Both runs' params and seeds equal the study's reference; values identical in both "
        f"runs: {'yes' if identical else 'not compared (one run missing)'}. "
        f"1-min load average after each run: {loads}.{contention}",
    ])
    return text, met, measured


def overhead_section(entries: list[dict], markdown: bool) -> str:
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    entries = sorted(entries, key=lambda e: (order.get(e["strategy"], len(order)),
                                             e["storage"] != "file"))
    body = [[e["strategy"], "SQLite file" if e["storage"] == "file" else ":memory:",
             str(e["n_trials"]), _num(e["ms_per_trial"], ".3f"),
             _num(e["propose_ms_per_trial"], ".3f"), _num(e["storage_ms_per_trial"], ".3f"),
             _num(e["other_ms_per_trial"], ".3f")] for e in entries]
    headers = ["strategy", "storage", "trials", "ms/trial", "propose ms", "storage ms",
               "other ms"]
    return "\n".join([
        _title("Search overhead per trial (an objective that returns at once, inline)",
               markdown),
        table(headers, body, markdown, left=2),
        "",
        "ms/trial: the search's wall time (study creation included) / trials, median round. "
        "propose: inside strategy.propose; storage: inside the study's SQLite storage "
        "methods; other: the rest of the coordinator (history, dispatch, bookkeeping). No goal "
        "in the issue: reported only.",
    ])


def print_tune(data: dict, markdown: bool) -> None:
    """Print the tuning benchmark's tables (those present in ``data``, a loaded
    --benchmark-json file) with their goals and verdicts."""
    race = _entries(data, "tune_race")
    workers = _entries(data, "tune_workers")
    overhead = _entries(data, "tune_overhead")
    if any(e.get("quick") for e in race + workers + overhead):
        print("NOTE: small configuration (run with --benchmark-disable): not the benchmark's "
              "figures.\n")
    met = measured = 0
    sections = []
    if race:
        text, m, n = race_section(race, markdown)
        sections.append(text)
        met, measured = met + m, measured + n
    if workers:
        text, m, n = workers_section(workers, markdown)
        sections.append(text)
        met, measured = met + m, measured + n
    if overhead:
        sections.append(overhead_section(overhead, markdown))
    print("\n\n".join(sections))
    print(f"\n{met} of {measured} measured tuning goals hold.")


def has_tune(data: dict) -> bool:
    return any(b.get("extra_info", {}).get("bench", "").startswith("tune_")
               for b in data.get("benchmarks", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a file written by pytest --benchmark-json")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {args.results}: {exc}")
    if not has_tune(data):
        parser.error(f"{args.results} holds no bench/test_tune.py results")
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    print(f"{data.get('datetime', '?')}  {machine.get('cpu', {}).get('brand_raw', '?')}  "
          f"commit {str(commit.get('id', '?'))[:10]}{' (dirty)' if commit.get('dirty') else ''}"
          f"  numpy {machine.get('numpy', '?')}\n")
    print_tune(data, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
