"""Summarise a pytest-benchmark JSON file written by bench/test_kernels.py.

Usage: python bench/report.py RESULTS.json [--markdown]

One row per kernel and size: the median time of the cython backend, its speed-up over the
numpy backend and over PyTorch (numpy or torch median / cython median; "n/a" where a row is
missing), and, at the sizes whose group holds a ``copy`` entry, the fraction of the memory
bandwidth bound reached: (bytes / copy bandwidth) / cython time, with the copy bandwidth
``copy_bytes / copy time`` measured in the same run; once with ``bytes`` (the kernel's actual
passes over memory) and once with ``bytes_min`` (each array touched once). A "targets" section
follows. Standard library only.

The copy is one read stream and one write stream to fresh memory; on one core a kernel that
streams more arrays, or writes in place (Adam), can move bytes faster, so a fraction above 1 is
possible and is not an error.
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


def table(headers: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]
    # Left-align the first two columns (kernel, size), right-align the numbers.
    fmt = [str.ljust if i < 2 else str.rjust for i in range(len(headers))]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a file written by pytest --benchmark-json")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    try:
        data, rows = load(args.results)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {args.results}: {exc}")
    if not rows:
        parser.error(f"{args.results} holds no bench/test_kernels.py results")
    analyse(rows)

    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    torch = machine.get("torch", {}).get("version", "not installed")
    print(
        f"{data.get('datetime', '?')}  {machine.get('cpu', {}).get('brand_raw', '?')}  "
        f"commit {str(commit.get('id', '?'))[:10]}{' (dirty)' if commit.get('dirty') else ''}  "
        f"numpy {machine.get('numpy', '?')}  torch {torch}"
    )
    print(
        "Medians. vs numpy / vs torch: their time / cython's time. BW frac: (bytes / copy "
        "GB/s) / cython time.\n"
    )
    print(results_table(rows, args.markdown))
    text, met, measured = targets(rows, args.markdown)
    print(
        f"\nTargets (cython): >={VS_NUMPY:g}x numpy; >={VS_TORCH:g}x torch (>={VS_TORCH_ENDS:g}x "
        f"at the smallest and largest batchnorm and cross_entropy sizes; adam at the largest "
        f"size: time within {ADAM_LARGEST_VS_TORCH_TIME:g}x of torch's); bandwidth fraction "
        f"(bytes) >={BANDWIDTH_FRACTION:g} at the largest sizes.\n"
    )
    print(text)
    print(f"\n{met} of {measured} measured targets met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
