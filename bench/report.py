"""Summarise a pytest-benchmark JSON file written by bench/test_kernels.py and/or
bench/test_train_step.py.

Usage: python bench/report.py RESULTS.json [--markdown]

Kernels (bench/test_kernels.py): one row per kernel and size: the median time of the cython
backend, its speed-up over the numpy backend and over PyTorch (numpy or torch median / cython
median; "n/a" where a row is missing), and, at the sizes whose group holds a ``copy`` entry,
the fraction of the memory bandwidth bound reached: (bytes / copy bandwidth) / cython time,
with the copy bandwidth ``copy_bytes / copy time`` measured in the same run; once with
``bytes`` (the kernel's actual passes over memory) and once with ``bytes_min`` (each array
touched once). A "targets" section follows. Standard library only.

The copy is one read stream and one write stream to fresh memory; on one core a kernel that
streams more arrays, or writes in place (Adam), can move bytes faster, so a fraction above 1 is
possible and is not an error.

Training step (bench/test_train_step.py): one row per case (tiny 64-32-10, mlp
784-256-256-10), batch size and thread count: the median time of one planned fastnn step
(``fastnn``); the step's limit, gemm-floor + adam-pass medians of the same group (its matrix
products alone, plus one copy moving Adam's 28 B per parameter); fastnn's time over the limit;
the per-layer path's (``fastnn-layers``), the numpy backend's, torch's and sklearn
MLPClassifier's times over fastnn's ("n/a" where an entry is missing); and, on rows of more
than one thread, the speed-up over the same case's 1-thread fastnn step. Then the training-step
targets, each "hold" or "MISS": fastnn <= STEP_VS_LIMIT x the limit (mlp, batches 64 and 256, 1
thread); the tiny step <= TINY_STEP_MAX seconds (1 thread); the 2-thread speed-up >=
TWO_THREAD_SPEEDUP at mlp batch 256. The last column is the share of the CPUs other processes
used while the row was timed (Linux); above DISTURBED the row and its targets are flagged
"disturbed", to be rerun. Files from before the cases and threads (impl
``fastnn-cython``, no ``case``) read as mlp, 1 thread. The file may hold any of the sets of
results.
"""

from __future__ import annotations

import argparse
import json
import sys

KERNEL_ORDER = ("batchnorm", "cross_entropy", "adam")
NA = "n/a"

# Targets for the cython backend.
VS_NUMPY = 3.0  # speed-up over the numpy backend, every row
VS_TORCH = 1.5  # speed-up over torch, every row but the exceptions below
VS_TORCH_ENDS = 3.0  # ... at the smallest and largest sizes of these kernels:
TORCH_ENDS_KERNELS = ("batchnorm", "cross_entropy")
ADAM_LARGEST_VS_TORCH_TIME = 1.1  # Adam at its largest size: time within 1.1x torch's
BANDWIDTH_FRACTION = 0.70  # fraction of the copy bound at the largest sizes

# Training step targets (the planned fastnn step).
STEP_VS_LIMIT = 1.25  # time within this factor of gemm-floor + adam-pass ...
STEP_LIMIT_ROWS = (("mlp", 64), ("mlp", 256))  # ... at these (case, batch), 1 thread
TINY_STEP_MAX = 30e-6  # seconds, tiny case, 1 thread
TWO_THREAD_SPEEDUP = 1.6  # 1-thread time / 2-thread time, at ...
SPEEDUP_ROW = ("mlp", 256)
# A row is flagged "disturbed" when other processes used more than this share of the CPUs
# while its entries were timed (extra_info others_cpu_s / (timed_wall_s * cpus), summed).
DISTURBED = 0.10
STEP_CASE_ORDER = ("tiny", "mlp")
STEP_OTHERS = ("fastnn-layers", "fastnn-numpy", "torch", "mlpclassifier")
STEP_TITLE = "training step (BN MLP, Adam, float32)"


def load(path: str) -> tuple[dict, list[dict]]:
    """The JSON's machine/commit info and one dict per (kernel, size) with each impl's entry."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    rows: dict[tuple[str, str], dict] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        stats = bench.get("stats") or {}
        if not {"kernel", "size", "impl"} <= info.keys() or "median" not in stats:
            continue  # not one of ours
        row = rows.setdefault((info["kernel"], info["size"]), {"impls": {}})
        row.update(kernel=info["kernel"], size=info["size"])
        if info["impl"] != "copy":
            row["elements"] = info.get("elements", 0)
        row["impls"][info["impl"]] = {"time": stats["median"], **info}  # last one wins
    order = {k: i for i, k in enumerate(KERNEL_ORDER)}
    ordered = sorted(
        rows.values(),
        key=lambda r: (order.get(r["kernel"], len(order)), r["kernel"], r.get("elements", 0)),
    )
    return data, ordered


def load_train_steps(data: dict) -> list[dict]:
    """One dict per (case, batch, threads) with each train-step impl's entry
    (bench/test_train_step.py)."""
    rows: dict[tuple, dict] = {}
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        stats = bench.get("stats") or {}
        if (
            info.get("bench") != "train_step"
            or not {"batch", "impl"} <= info.keys()
            or "median" not in stats
        ):
            continue
        case, threads = info.get("case", "mlp"), info.get("threads", 1)  # older files: mlp, 1
        impl = "fastnn" if info["impl"] == "fastnn-cython" else info["impl"]
        key = (case, info["batch"], threads)
        row = rows.setdefault(
            key, {"case": case, "batch": info["batch"], "threads": threads, "impls": {}}
        )
        if "layers" in info:
            row["layers"] = info["layers"]
        row["impls"][impl] = {"time": stats["median"], **info}  # last one wins
    order = {c: i for i, c in enumerate(STEP_CASE_ORDER)}
    return [
        rows[k] for k in sorted(rows, key=lambda k: (order.get(k[0], len(order)), k[0], *k[1:]))
    ]


def analyse_train_steps(rows: list[dict]) -> None:
    """Add the limit, the ratios and the thread speed-up to each row (None where an entry is
    missing)."""
    one_thread = {(r["case"], r["batch"]): r for r in rows if r["threads"] == 1}
    for row in rows:
        impls = row["impls"]
        times = {impl: entry["time"] for impl, entry in impls.items()}
        fastnn, gemm, adam = (times.get(k) for k in ("fastnn", "gemm-floor", "adam-pass"))
        row["fastnn"], row["gemm"], row["adam"] = fastnn, gemm, adam
        row["limit"] = gemm + adam if gemm is not None and adam is not None else None
        row["vs_limit"] = fastnn / row["limit"] if fastnn and row["limit"] else None
        for impl in STEP_OTHERS:
            other = times.get(impl)
            row[f"{impl}/fastnn"] = other / fastnn if other is not None and fastnn else None
        fit = impls.get("mlpclassifier", {}).get("fit_per_batch")
        row["mlpclassifier-fit/fastnn"] = fit / fastnn if fit is not None and fastnn else None
        row["adam_kernel"] = impls.get("adam-pass", {}).get("adam_kernel")
        timed = [e for e in impls.values() if {"others_cpu_s", "timed_wall_s", "cpus"} <= e.keys()]
        capacity = sum(e["timed_wall_s"] * e["cpus"] for e in timed)
        row["others"] = sum(e["others_cpu_s"] for e in timed) / capacity if capacity else None
        row["disturbed"] = row["others"] is not None and row["others"] > DISTURBED
        base = one_thread.get((row["case"], row["batch"]), {}).get("impls", {}).get("fastnn")
        row["speedup"] = (
            base["time"] / fastnn if row["threads"] != 1 and base is not None and fastnn else None
        )


def analyse(rows: list[dict]) -> None:
    """Add the speed-ups and bandwidth fractions to each row (None where not measurable)."""
    for row in rows:
        impls = row["impls"]
        cy = impls.get("cython")
        row["cython_time"] = cy["time"] if cy else None
        for other in ("numpy", "torch"):
            entry = impls.get(other)
            row[f"vs_{other}"] = entry["time"] / cy["time"] if cy and entry else None
        copy = impls.get("copy")
        row["copy_bw"] = copy["copy_bytes"] / copy["time"] if copy else None
        for key in ("bytes", "bytes_min"):
            frac = None
            if cy and copy and cy.get(key):
                frac = (cy[key] / row["copy_bw"]) / cy["time"]
            row[f"bw_{key}"] = frac
    # Smallest and largest size of each kernel in this file (the targets single them out).
    by_kernel: dict[str, list[dict]] = {}
    for row in rows:
        by_kernel.setdefault(row["kernel"], []).append(row)
    for group in by_kernel.values():
        sizes = [r.get("elements", 0) for r in group]
        for r in group:
            r["smallest"] = r.get("elements", 0) == min(sizes)
            r["largest"] = r.get("elements", 0) == max(sizes)


def _num(value, fmt: str) -> str:
    return NA if value is None else format(value, fmt)


def table(headers: list[str], body: list[list[str]], markdown: bool, left: int = 2) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]
    # Left-align the first `left` columns (kernel, size), right-align the numbers.
    fmt = [str.ljust if i < left else str.rjust for i in range(len(headers))]

    def line(cells):
        return "  ".join(f(c, w) for f, c, w in zip(fmt, cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(c) for c in body])


def results_table(rows: list[dict], markdown: bool) -> str:
    headers = [
        "kernel",
        "size",
        "cython µs",
        "vs numpy",
        "vs torch",
        "copy GB/s",
        "BW frac",
        "BW frac (bytes_min)",
    ]
    body = []
    for r in rows:
        t = r["cython_time"]
        body.append(
            [
                r["kernel"],
                r["size"],
                _num(None if t is None else t * 1e6, ",.1f"),
                _num(r["vs_numpy"], ".2f"),
                _num(r["vs_torch"], ".2f"),
                _num(None if r["copy_bw"] is None else r["copy_bw"] / 1e9, ".1f"),
                _num(r["bw_bytes"], ".2f"),
                _num(r["bw_bytes_min"], ".2f"),
            ]
        )
    return table(headers, body, markdown)


def _check(value, threshold: float, label: str, at_most: bool = False):
    """A target's cell text and whether it is met (None: not measured)."""
    if value is None:
        return NA, None
    ok = value <= threshold if at_most else value >= threshold
    return f"{label}: {'yes' if ok else 'NO'} ({value:.2f})", ok


def targets(rows: list[dict], markdown: bool) -> tuple[str, int, int]:
    """The targets table, and how many of the measured targets are met."""
    headers = ["kernel", "size", "vs numpy", "vs torch", "bandwidth fraction"]
    body, met, measured = [], 0, 0
    for r in rows:
        checks = [_check(r["vs_numpy"], VS_NUMPY, f">={VS_NUMPY:g}x")]
        if r["kernel"] == "adam" and r["largest"]:
            # Both are bound by memory bandwidth here: the target is parity, as a time ratio.
            ratio = None if r["vs_torch"] is None else 1.0 / r["vs_torch"]
            limit = ADAM_LARGEST_VS_TORCH_TIME
            checks.append(_check(ratio, limit, f"time <={limit:g}x torch", at_most=True))
        else:
            ends = r["kernel"] in TORCH_ENDS_KERNELS and (r["smallest"] or r["largest"])
            need = VS_TORCH_ENDS if ends else VS_TORCH
            checks.append(_check(r["vs_torch"], need, f">={need:g}x"))
        if r["largest"] or r["copy_bw"] is not None:
            checks.append(_check(r["bw_bytes"], BANDWIDTH_FRACTION, f">={BANDWIDTH_FRACTION:g}"))
        else:
            checks.append(("-", None))
        body.append([r["kernel"], r["size"], *(text for text, _ in checks)])
        results = [ok for _, ok in checks if ok is not None]
        measured += len(results)
        met += sum(results)
    return table(headers, body, markdown), met, measured


def _ms(seconds) -> str:
    return _num(None if seconds is None else seconds * 1e3, ".2f")


def _us(seconds) -> str:
    return _num(None if seconds is None else seconds * 1e6, ",.1f")


def train_step_table(rows: list[dict], markdown: bool) -> str:
    """The training-step table: one row per case, batch and thread count."""
    headers = [
        "case",
        "batch",
        "threads",
        "fastnn µs",
        "limit µs",
        "gemm + adam µs",
        "fastnn/limit",
        "layers/fastnn",
        "numpy/fastnn",
        "torch/fastnn",
        "mlpclassifier/fastnn",
        "vs 1 thread",
        "others' CPU",
    ]
    body = []
    for r in rows:
        parts = NA if r["limit"] is None else f"{_us(r['gemm'])} + {_us(r['adam'])}"
        sk = _num(r["mlpclassifier/fastnn"], ".2f")
        if r["mlpclassifier-fit/fastnn"] is not None:
            sk += f" (fit {r['mlpclassifier-fit/fastnn']:.2f})"
        body.append(
            [
                r["case"],
                str(r["batch"]),
                str(r["threads"]),
                _us(r["fastnn"]),
                _us(r["limit"]),
                parts,
                _num(r["vs_limit"], ".2f"),
                _num(r["fastnn-layers/fastnn"], ".2f"),
                _num(r["fastnn-numpy/fastnn"], ".2f"),
                _num(r["torch/fastnn"], ".2f"),
                sk,
                "-" if r["threads"] == 1 else _num(r["speedup"], ".2f"),
                _num(None if r["others"] is None else 100 * r["others"], ".0f")
                + ("%" if r["others"] is not None else "")
                + (" disturbed" if r["disturbed"] else ""),
            ]
        )
    return table(headers, body, markdown, left=1)


def train_step_targets(rows: list[dict]) -> list[tuple[str, bool | None, str, bool]]:
    """(target, met or None if not measured, the measured value, disturbed) for each
    training-step target."""
    by_key = {(r["case"], r["batch"], r["threads"]): r for r in rows}
    out = []
    for case, batch in STEP_LIMIT_ROWS:
        r = by_key.get((case, batch, 1), {})
        value = r.get("vs_limit")
        out.append(
            (
                f"{case} batch {batch}, 1 thread: fastnn <= {STEP_VS_LIMIT:g}x limit",
                None if value is None else value <= STEP_VS_LIMIT,
                _num(value, ".2f") + ("x" if value is not None else ""),
                r.get("disturbed", False),
            )
        )
    tiny = [r for r in rows if r["case"] == "tiny" and r["threads"] == 1]
    for r in tiny or [{"batch": 32, "fastnn": None}]:
        value = r.get("fastnn")
        out.append(
            (
                f"tiny batch {r['batch']}, 1 thread: fastnn <= {TINY_STEP_MAX * 1e6:g} µs",
                None if value is None else value <= TINY_STEP_MAX,
                _us(value) + (" µs" if value is not None else ""),
                r.get("disturbed", False),
            )
        )
    case, batch = SPEEDUP_ROW
    multi = [r for r in rows if (r["case"], r["batch"]) == SPEEDUP_ROW and r["threads"] != 1]
    for r in multi or [{"threads": 2, "speedup": None}]:
        value = r.get("speedup")
        one = by_key.get((case, batch, 1), {})
        out.append(
            (
                f"{case} batch {batch}, {r['threads']} threads: speed-up over 1 thread >= "
                f"{TWO_THREAD_SPEEDUP:g}x",
                None if value is None else value >= TWO_THREAD_SPEEDUP,
                _num(value, ".2f") + ("x" if value is not None else ""),
                r.get("disturbed", False) or one.get("disturbed", False),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a file written by pytest --benchmark-json")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    try:
        data, rows = load(args.results)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {args.results}: {exc}")
    steps = load_train_steps(data)
    known = {"sklearn-digits"}
    if not rows and not steps and not any(
            b.get("extra_info", {}).get("kernel") in known
            or str(b.get("extra_info", {}).get("bench", "")).startswith(
                ("import", "tune", "inference"))
            for b in data.get("benchmarks", [])):
        parser.error(f"{args.results} holds no fastnn benchmark results")
    analyse(rows)
    analyse_train_steps(steps)

    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    torch = machine.get("torch", {}).get("version", "not installed")
    print(
        f"{data.get('datetime', '?')}  {machine.get('cpu', {}).get('brand_raw', '?')}  "
        f"commit {str(commit.get('id', '?'))[:10]}{' (dirty)' if commit.get('dirty') else ''}  "
        f"numpy {machine.get('numpy', '?')}  torch {torch}"
    )
    if rows:
        print_kernels(rows, args.markdown)
    if steps:
        print_train_steps(steps, args.markdown, leading_blank=bool(rows))
    print_sklearn(data, args.markdown)
    print_import(data, args.markdown)
    from tune_report import print_tune  # bench/tune_report.py, beside this file

    print_tune(data, args.markdown)
    from inference_report import print_inference  # bench/inference_report.py

    print_inference(data, args.markdown)
    return 0


def print_import(data: dict, markdown: bool) -> None:
    """``import fastnn`` and ``import numpy`` above a bare interpreter (bench/test_import.py)."""
    runs = {b["extra_info"]["impl"]: b["stats"] for b in data.get("benchmarks", [])
            if b.get("extra_info", {}).get("bench") == "import"}
    if not {"python", "numpy", "fastnn"} <= runs.keys():
        return
    base = runs["python"]["median"]
    fastnn, numpy = runs["fastnn"]["median"] - base, runs["numpy"]["median"] - base
    print(f"\n{'## ' if markdown else ''}Import time (median of fresh interpreters, minus "
          f"`python -c pass` = {base * 1e3:.0f} ms)\n")
    body = [["import numpy", f"{numpy * 1e3:.0f}"], ["import fastnn", f"{fastnn * 1e3:.0f}"],
            ["fastnn's own share", f"{(fastnn - numpy) * 1e3:.0f}"]]
    print(table(["what", "ms"], body, markdown))
    verdict = "hold" if fastnn <= 0.2 else "MISS"
    print(f"\n- import fastnn <= 0.2 s: {verdict} ({fastnn:.3f} s)")


def print_sklearn(data: dict, markdown: bool) -> None:
    """FastNNClassifier vs MLPClassifier on digits (bench/test_sklearn.py), if present."""
    fits = {b["extra_info"]["impl"]: b for b in data.get("benchmarks", [])
            if b.get("extra_info", {}).get("kernel") == "sklearn-digits"}
    if not fits:
        return
    print(f"\n{'## ' if markdown else ''}FastNNClassifier vs MLPClassifier, digits, same "
          "hidden sizes, batch, Adam rate and epochs\n")
    base = fits.get("fastnn")
    body = []
    for impl, bench in sorted(fits.items()):
        info = bench["extra_info"]
        median = bench["stats"]["median"]
        ratio = "1.00" if base is None or impl == "fastnn" else \
            f"{median / base['stats']['median']:.2f}"
        body.append([impl, _ms(median / info["epochs"]), f"{info['accuracy']:.4f}", ratio])
    print(table(["estimator", "ms per epoch", "test accuracy", "time / fastnn's"], body,
                markdown))


def print_kernels(rows: list[dict], markdown: bool) -> None:
    print(
        "Medians. vs numpy / vs torch: their time / cython's time. BW frac: (bytes / copy "
        "GB/s) / cython time.\n"
    )
    print(results_table(rows, markdown))
    text, met, measured = targets(rows, markdown)
    print(
        f"\nTargets (cython): >={VS_NUMPY:g}x numpy; >={VS_TORCH:g}x torch (>={VS_TORCH_ENDS:g}x "
        f"at the smallest and largest batchnorm and cross_entropy sizes; adam at the largest "
        f"size: time within {ADAM_LARGEST_VS_TORCH_TIME:g}x of torch's); bandwidth fraction "
        f"(bytes) >={BANDWIDTH_FRACTION:g} at the largest sizes.\n"
    )
    print(text)
    print(f"\n{met} of {measured} measured targets met.")


def print_train_steps(rows: list[dict], markdown: bool, leading_blank: bool) -> None:
    if leading_blank:
        print()
    print(f"{'## ' if markdown else ''}{STEP_TITLE}\n")
    archs = {r["case"]: "-".join(map(str, r["layers"])) for r in rows if "layers" in r}
    print(
        "Medians. "
        + "".join(f"{case}: {layers}. " for case, layers in archs.items())
        + "fastnn: the planned step (TrainPlan.step + optimizer.step), cython. limit = "
        "gemm-floor (the step's matrix products, np.matmul) + adam-pass (np.copyto moving 28 B "
        "per parameter), same threads. X/fastnn: X's time / fastnn's. layers: cython, "
        "per-layer path (plan_steps False); numpy: numpy backend. mlpclassifier: sklearn "
        "partial_fit (with its per-call input validation), the same MLP without BatchNorm; "
        "(fit X): its per-batch time inside one fit epoch. vs 1 thread: the 1-thread fastnn "
        "time / this row's. others' CPU: the share of the CPUs other processes used while the "
        f"row was timed (disturbed above {DISTURBED:.0%}).\n"
    )
    print(train_step_table(rows, markdown))
    print(f"\n{'### ' if markdown else ''}Training-step targets\n")
    results = train_step_targets(rows)
    for label, ok, value, disturbed in results:
        verdict = NA if ok is None else ("hold" if ok else "MISS")
        flag = " - disturbed by other processes: rerun" if disturbed else ""
        print(f"- {label}: {verdict} ({value}){flag}")
    measured = [ok for _, ok, _, _ in results if ok is not None]
    unsure = sum(1 for _, ok, _, disturbed in results if ok is not None and disturbed)
    print(
        f"\n{sum(measured)} of {len(measured)} measured training-step targets hold"
        + (f" ({unsure} measured while disturbed)." if unsure else ".")
    )


if __name__ == "__main__":
    sys.exit(main())
