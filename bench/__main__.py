"""``python -m bench [--quick] [--only NAME ...] [--threads N] [--out DIR] [--public-dm PATH]``: run the
benchmark suite, write ``results/bench/<name>.json`` and print a table (see bench/README.md)."""
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
    args = ap.parse_args(argv)

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
    print()
    print(f"{'benchmark':<34} {'reference':>10} {'ddkit':>10} {'ratio':>7}  note")
    for name, ref, fast, ratio, note in table:
        f = (lambda v, w, p: f"{v:>{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}")
        print(f"{name:<34} {f(ref, 10, 3)} {f(fast, 10, 3)} {f(ratio, 7, 2)}  {note}")
    print(f"(seconds unless noted; ratio = reference / ddkit; total {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
