"""The ``ddkit`` console script: ``ddkit sweep``, ``ddkit report`` and ``ddkit run``.

Examples::

    ddkit sweep params/demo.yaml --dry-run          # list the runs and their status
    ddkit sweep params/demo.yaml --workers 2        # run what is missing, 2 at a time
    ddkit sweep params/cpu --dry-run                # a folder: every params file in it
    ddkit sweep notebooks/00_quickstart.ipynb --set ipc=2   # a notebook with its defaults
    ddkit sweep params/paper/03_iid/dm_table1.yaml --scheduler tcp://10.0.0.5:8786
    ddkit sweep params/paper/03_iid/dm_table1.yaml --set iterations=100 --only ipc10 --results-dir /scratch/results
    ddkit sweep params/paper/03_iid/dm_table1.yaml --workers 2 --gpus 0,1   # one run per GPU
    ddkit report                                    # results/ -> results/report/
    ddkit report --results-dir results --out /tmp/report --formats md,csv --no-paper
    ddkit run --nproc 4 params/cpu/00_quickstart.yaml    # one run on 4 GPUs (torchrun, ddkit.batch.launch)

Exit status: 0 success, 1 some runs failed, 2 invalid grid file / arguments,
130 interrupted.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path

import yaml


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value = yaml.safe_load(v) if v != "" else ""
    except yaml.YAMLError:
        value = v
    return k.strip(), value


def _number(kind: type, what: str, low: float, exclusive: bool = False):
    """An argparse type: a ``kind`` number ``>= low`` (``> low`` when ``exclusive``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value < low or (exclusive and value == low):
            raise argparse.ArgumentTypeError(f"{what} must be {'>' if exclusive else '>='} {low}, got {text}")
        return value
    return parse


def _resources(text: str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, v = _kv(part)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise argparse.ArgumentTypeError(f"resource {k!r} needs a number, got {v!r}")
        out[k] = v
    return out


RESULTS_HELP = ("default: $DDKIT_RESULTS, else <repo>/results when run inside the repository, else ./results "
                "(ddkit.runs.results.resolve_results_dir)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddkit", description="ddkit: dataset distillation kit")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "sweep",
        help="run grid files with papermill (locally or on a Dask cluster)",
        description="Expand grid files into runs and execute the unfinished ones with papermill "
        "into <results-dir>/<notebook>/<run>/. Grid syntax: params/README.md.",
    )
    s.add_argument("grid", nargs="+", help="grid or params YAML file(s), folders of them, or notebooks (one run "
                   "with the notebook's defaults)")
    s.add_argument("-w", "--workers", type=_number(int, "--workers", 1), default=1,
                   help="local parallel runs (default 1)")
    s.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    s.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    s.add_argument("--notebooks-dir", default=None, help="default: <repo>/notebooks")
    s.add_argument("--set", dest="overrides", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="override a parameter in every run (YAML value), repeatable")
    s.add_argument("--resources", type=_resources, default=None, metavar="GPU=1",
                   help="Dask resources per run (overrides the files' 'resources:')")
    s.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="only runs whose <notebook>/<run> matches (glob or substring), repeatable")
    s.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    s.add_argument("--force", action="store_true", help="re-run finished runs too")
    s.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    s.add_argument("--timeout", type=_number(float, "--timeout", 0, exclusive=True), default=None,
                   help="per-cell timeout in seconds (> 0; default: none)")
    s.add_argument("--threads", type=_number(int, "--threads", 1), default=None,
                   help="OMP_NUM_THREADS per run (default cores // workers)")
    s.add_argument("--gpus", default=None, metavar="0,1",
                   help="local: pin worker i to GPU i mod len (CUDA_VISIBLE_DEVICES); use with --workers")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser(
        "report",
        help="collect results/**/result.json into tables and plots",
        description="Collect every result.json under --results-dir; write Table-1 style, "
        "cross-architecture and ablation tables (Markdown/LaTeX/CSV) and seaborn plots.",
    )
    r.add_argument("--results-dir", default=None, help=RESULTS_HELP + " (must exist when given)")
    r.add_argument("--out", default=None, help="output folder (default: <results-dir>/report)")
    r.add_argument("--formats", default="md,tex,csv",
                   help="comma list of md, tex, csv: the files written (report.md with md; runs.csv and "
                   "compare.csv with csv); default md,tex,csv")
    r.add_argument("--no-paper", action="store_true", help="leave out the published numbers")
    r.add_argument("--published", default=None,
                   help="CSV of published numbers, the columns of ddkit/reporting/published.csv (default: that file)")
    r.add_argument("--no-plots", action="store_true", help="tables only")
    r.add_argument("--eval-model", default=None,
                   help="evaluation model of the main table (default: ConvNet when some run used it, else the "
                   "most common)")
    r.add_argument("--include-test", action="store_true",
                   help="also show runs marked run_kind test/tiny (CI-sized configurations; left out by default)")
    u = sub.add_parser("run", help="run a params file's runs (or a script) on N processes under torchrun",
                       description="Data-parallel: every run of the params file executes on --nproc processes "
                       "(one per GPU; gloo on CPU); distill shards classes, evaluate_synset networks. See ddkit.batch.launch.")
    u.add_argument("target", help="params/grid YAML file or Python script")
    u.add_argument("--nproc", type=_number(int, "--nproc", 1), default=1,
                   help="processes (torchrun --nproc_per_node), default 1")
    u.add_argument("--set", dest="overrides", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="override a parameter in every run (YAML value), repeatable")
    u.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    u.add_argument("--force", action="store_true", help="re-run finished runs too")
    u.add_argument("args", nargs=argparse.REMAINDER, help="after --: the script's arguments")
    add_reproduce_parser(sub)
    add_evaluate_parser(sub)
    return p


def cmd_run(a: argparse.Namespace) -> int:
    from ddkit.batch.launch import run

    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    try:
        return run(a.target, a.nproc, args, overrides=dict(a.overrides), results_dir=a.results_dir, force=a.force)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ddkit run: error: {exc}", file=sys.stderr)
        return 2


def _match(label: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(label, pat) or pat in label for pat in patterns)


def cmd_sweep(a: argparse.Namespace) -> int:
    from ddkit.batch.sweep import sweep
    from ddkit.batch.sweep_grid import expand

    overrides = dict(a.overrides)
    try:
        runs = expand(a.grid, a.results_dir, a.notebooks_dir, overrides or None, a.resources)
    except ValueError as exc:
        print(f"ddkit sweep: error: {exc}", file=sys.stderr)
        return 2
    if a.only:
        runs = [r for r in runs if _match(r.label, a.only)]
        if not runs:
            print(f"ddkit sweep: no run matches --only {' '.join(a.only)}", file=sys.stderr)
            return 2
    try:
        summary = sweep(
            runs,
            workers=a.workers,
            scheduler=a.scheduler,
            dry_run=a.dry_run,
            force=a.force,
            kernel_name=a.kernel,
            timeout=a.timeout,
            threads=a.threads,
            gpus=[g.strip() for g in a.gpus.split(",") if g.strip()] if a.gpus else None,
            progress=not a.no_progress,
        )
    except KeyboardInterrupt:
        return 130
    return 0 if summary.ok else 1


def cmd_report(a: argparse.Namespace) -> int:
    from ddkit.reporting import report as rp

    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "tex", "csv")]
    if bad:
        print(f"ddkit report: unknown format(s) {', '.join(bad)} (md, tex, csv)", file=sys.stderr)
        return 2
    if a.results_dir and not Path(a.results_dir).is_dir():
        print(f"ddkit report: error: --results-dir {a.results_dir}: no such folder", file=sys.stderr)
        return 2
    published = None
    if a.published and not a.no_paper:
        try:
            published = rp.load_published(a.published)
        except (OSError, ValueError, KeyError) as exc:
            print(f"ddkit report: error: --published {a.published}: cannot read it as a published-numbers CSV "
                  f"({type(exc).__name__}: {exc}); the columns are those of ddkit/reporting/published.csv", file=sys.stderr)
            return 2
    rep = rp.build_report(
        results_dir=a.results_dir,
        out_dir=a.out,
        formats=formats,
        paper=not a.no_paper,
        published=published,
        plots=not a.no_plots,
        eval_model=a.eval_model,
        include_test=a.include_test,
    )
    print(rep.summary())
    return 0


def add_reproduce_parser(sub) -> None:
    """``ddkit reproduce``: the papers' main-table cells (ddkit.batch.reproduce)."""
    r = sub.add_parser("reproduce", help="reproduce a paper's table cell at the paper's budget (time-boxed)",
                       description="List the papers' main-table cells (--list) or run one, resumably: "
                       "ddkit reproduce dm-fmnist-ipc10 --minutes 10. See docs/reproduction.md.")
    r.add_argument("cell", nargs="?", help="cell id (ddkit reproduce --list)")
    r.add_argument("--list", action="store_true", help="list the cells with their published numbers")
    r.add_argument("--minutes", type=float, default=None, help="time box: checkpoint and stop after N minutes")
    r.add_argument("--seeds", type=int, default=1, help="distillation seeds 0..K-1 (default 1)")
    r.add_argument("--smoke", action="store_true", help="tiny CPU budget on mnist5k (tests; nothing shipped)")
    r.add_argument("--results-dir", default=None, help="cell folders (default: <repo>/results/reproduce)")
    r.add_argument("--docs-dir", default=None, help="where reproduction.md/json go (default: <repo>/docs)")
    r.add_argument("--distilled-dir", default=None, help="shipped sets (default: <repo>/distilled)")
    r.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")


def cmd_reproduce(a: argparse.Namespace) -> int:
    from ddkit.batch import reproduce as rp

    if a.list:
        print(rp.format_list(rp.list_rows()))
        return 0
    if not a.cell:
        print("ddkit reproduce: error: name a cell or pass --list", file=sys.stderr)
        return 2
    try:
        rec = rp.run_cell(a.cell, minutes=a.minutes, seeds=a.seeds, smoke=a.smoke, results_dir=a.results_dir,
                          docs_dir=a.docs_dir, distilled_dir=a.distilled_dir, kernel_name=a.kernel)
    except ValueError as exc:
        print(f"ddkit reproduce: error: {exc}", file=sys.stderr)
        return 2
    row = rec["row"]
    print(f"{row['cell']}: {row['status']}; paper {row['paper']}, ours {row.get('ours', '-')} ± "
          f"{row.get('ours_std', '-')} ({row['networks']} nets), iterations {row['iterations']}")
    return 0 if row["status"] in ("complete", "partial") else 1


def add_evaluate_parser(sub) -> None:
    """``ddkit evaluate``: re-evaluate a shipped set (ddkit.batch.reproduce_docs)."""
    e = sub.add_parser("evaluate", help="re-evaluate a shipped distilled set (distilled/MANIFEST.json)")
    e.add_argument("file", help="distilled/<paper>/<cell>_s<seed>.pt")
    e.add_argument("--protocol", default=None, help="standard or dsdm (default: the cell's)")
    e.add_argument("--model", default="ConvNet", help="evaluation architecture (default ConvNet)")
    e.add_argument("--epochs", type=int, default=None, help="default: the protocol's")
    e.add_argument("--num-eval", type=int, default=5, help="evaluation networks (default 5)")
    e.add_argument("--device", default=None, help="default: cuda when available")


def cmd_evaluate(a: argparse.Namespace) -> int:
    from ddkit.batch.reproduce_docs import evaluate_shipped

    try:
        res = evaluate_shipped(a.file, protocol=a.protocol, model=a.model, epochs=a.epochs, num_eval=a.num_eval,
                               device=a.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ddkit evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(f"{a.file}: {res.mean:.2f} ± {res.std:.2f} over {len(res.accs)} {a.model} networks ({res.settings})")
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line; ``ddkit run <params.yaml> --set k=v`` takes its options after the
    target too (a Python script keeps what follows it as its own arguments)."""
    args = build_parser().parse_args(argv)
    if args.command == "run" and args.args and args.args[0] != "--" and not args.target.endswith(".py"):
        at = len(argv) - len(args.args) - 1  # the target; what follows it are run options
        args = build_parser().parse_args([*argv[:at], *argv[at + 1:], args.target])
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    commands = {"sweep": cmd_sweep, "run": cmd_run, "reproduce": cmd_reproduce, "evaluate": cmd_evaluate}
    return commands.get(args.command, cmd_report)(args)


if __name__ == "__main__":  # python -m ddkit.cli
    sys.exit(main())
