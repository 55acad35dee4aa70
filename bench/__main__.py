"""``python -m bench [--quick] [--only NAME ...] [--threads N] [--out DIR] [--public-dm PATH] [--table]``: run the
benchmark suite, write ``results/bench/<name>.json`` and print a table (see bench/README.md). ``--table``
runs nothing: it prints the table of the JSON files already in ``--out`` (benchmarks run one by one)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback


def main(argv=None) -> int:
    from bench import BENCHMARKS, OUT_DIR, machine_info, write_result

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short run (fewer repeats / epochs)")
    ap.add_argument("--only", nargs="*", default=None, choices=BENCHMARKS, help="run only these benchmarks")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--out", default=str(OUT_DIR), help="output directory for the JSON files")
    ap.add_argument("--public-dm", default=None, metavar="PATH",
                    help="a checkout of VICO-UoE/DatasetCondensation: time its DM iteration and evaluate_synset "
                         "against ddkit's (bench/public_dm.py); without it that comparison is skipped")
    ap.add_argument("--table", action="store_true", help="print the table of the results already in --out; run nothing")
    args = ap.parse_args(argv)
    if args.table:
        return print_saved_table(args.out, args.only or BENCHMARKS)

    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(f"ddkit bench: {machine_info()}", flush=True)
    if not args.public_dm:
        print("ddkit bench: no --public-dm PATH: the comparison with the public DM code is skipped", flush=True)
    table, t_all = [], time.perf_counter()
    for name in args.only or BENCHMARKS:
        t0 = time.perf_counter()
        print(f"-- {name} ...", flush=True)
        try:
            mod = importlib.import_module(f"bench.{name}")
            result = mod.run(quick=args.quick, **({"public_dm": args.public_dm} if name == "public_dm" else {}))
        except Exception as e:  # a broken benchmark must not hide the others
            traceback.print_exc()
            result = {"error": f"{type(e).__name__}: {e}"}
        result["quick"] = args.quick
        result["bench_seconds"] = time.perf_counter() - t0
        path = write_result(name, result, args.out)
        if "error" in result or "skipped" in result:
            table.append((name, None, None, None, result.get("error") or result.get("skipped")))
        else:
            try:
                table.extend(mod.rows(result))
            except Exception as e:  # the JSON is written; a table bug must not stop the suite
                table.append((name, None, None, None, f"(table row failed: {e})"))
        print(f"   {path} ({result['bench_seconds']:.0f} s)", flush=True)
    print_table(table, f"total {time.perf_counter() - t_all:.0f} s")
    return 0


def print_table(table: list, footer: str) -> None:
    print()
    print(f"{'benchmark':<40} {'reference':>10} {'ddkit':>10} {'ratio':>7}  note")
    for name, ref, fast, ratio, note in table:
        f = (lambda v, w, p: f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}")
        print(f"{name:<40} {f(ref, 10, 3)} {f(fast, 10, 3)} {f(ratio, 7, 2)}  {note}")
    print(f"(seconds unless noted; ratio = reference / ddkit; {footer})")


def print_saved_table(out_dir: str, names) -> int:
    """The table of ``<out_dir>/<name>.json`` for each benchmark that has one, with each file's date and load."""
    import json
    from pathlib import Path

    table = []
    for name in names:
        path = Path(out_dir) / f"{name}.json"
        if not path.is_file():
            table.append((name, None, None, None, f"(no {path})"))
            continue
        result = json.loads(path.read_text())
        load = (result.get("machine") or {}).get("loadavg")
        when = f"{result.get('date', 'undated')}, load {load[0]:.2f}" if load else result.get("date", "undated")
        if "error" in result or "skipped" in result:
            table.append((name, None, None, None, result.get("error") or result.get("skipped")))
            continue
        mod = importlib.import_module(f"bench.{name}")
        table.extend((n, ref, fast, ratio, f"{note} [{when}]") for n, ref, fast, ratio, note in mod.rows(result))
    print_table(table, f"saved results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
