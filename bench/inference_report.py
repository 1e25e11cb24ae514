"""Summarise the inference benchmark (bench/test_inference.py) from a pytest-benchmark JSON file.

Usage: python bench/inference_report.py RESULTS.json [--markdown]

One row per batch size (1, 32, 1024): the median time of onnxruntime on the exported file,
then each entry's median over onnxruntime's (fastnn's predict_proba, PyTorch eager, the bare
NumPy forward; "n/a" where an entry is missing), fastnn's ratio of the fastest calls (min
over min: less sensitive to other load on the machine), and the share of the CPUs other
processes used while the row was timed (above DISTURBED the row, and its targets, are
flagged "disturbed": rerun). Then the issue's targets, each "hold" or "MISS": fastnn <=
BATCH1_VS_ORT x onnxruntime at batch 1, <= BATCH1024_VS_ORT x at batch 1024.

Standard library only. ``print_inference(data, markdown)`` prints the same from the loaded
JSON (for bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import sys

NA = "n/a"
BASE = "onnxruntime"
OTHERS = ("fastnn", "torch", "numpy")
BATCH1_VS_ORT = 1.1  # fastnn's predict_proba latency at batch 1, over onnxruntime's
BATCH1024_VS_ORT = 1.0  # ... at batch 1024
DISTURBED = 0.10  # share of the CPUs other processes used while a row was timed


def rows(data: dict) -> list[dict]:
    """One dict per batch size: {"batch", "layers", "impls": {impl: {"median", "min", ...}}}."""
    by_batch: dict[int, dict] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        stats = bench.get("stats") or {}
        if info.get("bench") != "inference" or "median" not in stats:
            continue
        row = by_batch.setdefault(info["batch"], {"batch": info["batch"], "impls": {}})
        row["layers"] = info.get("layers")
        row["impls"][info["impl"]] = {"median": stats["median"], "min": stats["min"], **info}
    return [by_batch[b] for b in sorted(by_batch)]


def analyse(row: dict) -> None:
    """Add the ratios over onnxruntime and the others' CPU share to ``row``."""
    impls = row["impls"]
    base = impls.get(BASE)
    for impl in OTHERS:
        entry = impls.get(impl)
        row[impl] = None if entry is None or base is None else entry["median"] / base["median"]
    fastnn = impls.get("fastnn")
    row["fastnn_min"] = None if fastnn is None or base is None else fastnn["min"] / base["min"]
    timed = [e for e in impls.values() if {"others_cpu_s", "timed_wall_s", "cpus"} <= e.keys()]
    capacity = sum(e["timed_wall_s"] * e["cpus"] for e in timed)
    row["others"] = sum(e["others_cpu_s"] for e in timed) / capacity if capacity else None
    row["disturbed"] = row["others"] is not None and row["others"] > DISTURBED


def _num(value, fmt: str) -> str:
    return NA if value is None else format(value, fmt)


def _time(seconds) -> str:
    if seconds is None:
        return NA
    return f"{seconds * 1e6:,.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:,.2f} ms"


def table(headers: list[str], body: list[list[str]], markdown: bool) -> str:
    """A plain-text table (numbers right-aligned) or a Markdown one."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]

    def line(cells):
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in body])


def targets(found: list[dict]) -> list[tuple[str, bool | None, str, bool]]:
    """(target, met or None if not measured, the measured ratio, disturbed) per target."""
    by_batch = {r["batch"]: r for r in found}
    out = []
    for batch, limit in ((1, BATCH1_VS_ORT), (1024, BATCH1024_VS_ORT)):
        row = by_batch.get(batch, {})
        value = row.get("fastnn")
        out.append((f"batch {batch}: fastnn predict_proba <= {limit:g}x onnxruntime",
                    None if value is None else value <= limit,
                    _num(value, ".2f") + ("x" if value is not None else ""),
                    row.get("disturbed", False)))
    return out


def print_inference(data: dict, markdown: bool) -> None:
    found = rows(data)
    if not found:
        return
    for row in found:
        analyse(row)
    layers = next((r["layers"] for r in found if r.get("layers")), None)
    arch = "-".join(map(str, layers)) if layers else "?"
    print(f"\n{'## ' if markdown else ''}Inference (MLP {arch} with BatchNorm, float32, "
          f"1 thread)\n")
    print("Medians. X/ort: X's median time / onnxruntime's (on the exported file). fastnn: "
          "predict_proba; torch: PyTorch eager, inference_mode; numpy: a bare NumPy forward, "
          "BatchNorm folded. (min): the fastest calls' ratio. others' CPU: the share of the "
          f"CPUs other processes used while the row was timed (disturbed above "
          f"{DISTURBED:.0%}).\n")
    headers = ["batch", "onnxruntime", "fastnn/ort", "fastnn/ort (min)", "torch/ort",
               "numpy/ort", "others' CPU"]
    body = []
    for r in found:
        others = (NA if r["others"] is None else f"{100 * r['others']:.0f}%"
                  + (" disturbed" if r["disturbed"] else ""))
        body.append([str(r["batch"]), _time(r["impls"].get(BASE, {}).get("median")),
                     _num(r["fastnn"], ".2f"), _num(r["fastnn_min"], ".2f"),
                     _num(r["torch"], ".2f"), _num(r["numpy"], ".2f"), others])
    print(table(headers, body, markdown))
    print(f"\n{'### ' if markdown else ''}Inference targets\n")
    for label, ok, value, disturbed in targets(found):
        verdict = NA if ok is None else ("hold" if ok else "MISS")
        flag = " - disturbed by other processes: rerun" if disturbed else ""
        print(f"- {label}: {verdict} ({value}){flag}")


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
    if not rows(data):
        parser.error(f"{args.results} holds no inference benchmark results")
    print_inference(data, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
