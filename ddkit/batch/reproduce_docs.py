"""The records of ``ddkit reproduce``: ``docs/reproduction.md`` and the shipped sets of ``distilled/``.

- :func:`cell_row`: a cell's row from its cell folder (the accuracies of every network of every seed,
  read from each run's ``result.json`` under the cell's protocol and selection).
- :func:`record_row` / :func:`render_markdown`: ``docs/reproduction.json`` keeps the recorded rows;
  ``docs/reproduction.md`` is regenerated from it with every cell of ``params/paper/cells.csv``
  ("not run" where none is recorded).
- :func:`ship_sets`: a complete cell's synthetic sets (images + labels, or the generator of 01/02) under
  ``distilled/<paper>/`` with a line in ``distilled/MANIFEST.json``; :func:`verify_manifest` checks
  every file's sha256 and :func:`evaluate_shipped` re-evaluates one (``ddkit evaluate``).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

from ..core.utils import atomic_torch_save, atomic_write_bytes, atomic_write_json

ROWS_JSON = "reproduction.json"
ROWS_MD = "reproduction.md"
MANIFEST = "MANIFEST.json"
#: Two-sided 95% t quantiles by degrees of freedom (seeds - 1); 1.96 beyond.
T95 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _entry_accs(rec: dict, cell) -> list:
    """The accuracies of ``rec`` (a ``result.json``) under the cell's protocol: the headline method's
    entry on the run's evaluation model whose protocol name and selection match the cell's (any
    protocol when the paper states none); the headline ``accs`` when no entry matches."""
    from ..reporting.report_collect import canonical_method

    em = (rec.get("params") or {}).get("eval_model")
    for e in rec.get("evaluations") or []:
        proto = e.get("protocol") or {}
        if (canonical_method(e.get("method")) == canonical_method(rec.get("method")) and not e.get("variant")
                and (em is None or e.get("eval_model") == em)
                and (cell.protocol == "unstated" or (proto.get("name") == cell.protocol
                                                    and proto.get("selection", "last") == cell.selection))):
            return [float(a) for a in e.get("accs") or []]
    return [float(a) for a in rec.get("accs") or []]


def _mean_std(xs: list) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def verdict(cell, accs_by_seed: dict) -> str:
    """Within the paper's reported spread (mean ± std; fewer than 3 seeds) or, with >= 3 seeds, whether the
    paper's mean lies in the 95% t interval of our seed means."""
    seed_means = [sum(a) / len(a) for a in accs_by_seed.values() if a]
    if len(seed_means) >= 3:
        m, s = _mean_std(seed_means)
        n = len(seed_means)
        half = T95.get(n - 1, 1.96) * s * math.sqrt(n / (n - 1)) / math.sqrt(n)
        return f"{'yes' if abs(cell.mean - m) <= half else 'no'} (95% interval ±{half:.2f}, {n} seeds)"
    pooled = [a for accs in accs_by_seed.values() for a in accs]
    if cell.std is None or not pooled:
        return "n/a (no spread published)"
    return f"{'yes' if abs(sum(pooled) / len(pooled) - cell.mean) <= cell.std else 'no'} (paper ±{cell.std:.1f})"


def cell_row(cell, cell_dir: Path, rec: dict) -> dict:
    """A cell's row: status (complete / partial / failed / not run), ours mean ± std over all networks of
    all finished seeds with the count, difference, verdict, iterations done / the paper's, GPU, minutes,
    commit, date."""
    seeds = rec.get("seeds") or {}
    accs = {}
    for s, st in seeds.items():
        res = Path(cell_dir) / st.get("run_dir", "") / "result.json"
        if st.get("status") == "complete" and res.is_file():
            accs[s] = _entry_accs(json.loads(res.read_text()), cell)
    pooled = [a for xs in accs.values() for a in xs]
    statuses = {st.get("status") for st in seeds.values()}
    status = ("complete" if seeds and statuses == {"complete"} else
              "failed" if "failed" in statuses else "partial" if seeds else "not run")
    row = {"cell": cell.cell, "status": status, "paper": cell.mean, "paper_std": cell.std,
           "protocol": f"{cell.protocol}/{cell.selection}", "seeds": len(accs), "networks": len(pooled),
           "iterations": " ".join(f"{st.get('iterations_done') or 0}/{st.get('iterations') or '?'}"
                                  for st in seeds.values()),
           "minutes": round(sum(st.get("minutes", 0.0) for st in seeds.values()), 1), "gpu": rec.get("gpu", ""),
           "commit": rec.get("commit", ""), "date": rec.get("date", ""), "smoke": bool(rec.get("smoke"))}
    if pooled:
        m, s = _mean_std(pooled)
        row.update(ours=round(m, 2), ours_std=round(s, 2), diff=round(m - cell.mean, 2), within=verdict(cell, accs))
    return row


def record_row(docs_dir: Path, row: dict, cells: list) -> Path:
    """Store ``row`` in ``docs_dir/reproduction.json`` and regenerate ``reproduction.md`` (one line per
    cell of ``cells``, :func:`ddkit.batch.reproduce.load_cells`); returns its path."""
    docs_dir = Path(docs_dir)
    path = docs_dir / ROWS_JSON
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[row["cell"]] = row
    atomic_write_json(path, dict(sorted(rows.items())))
    md = docs_dir / ROWS_MD
    atomic_write_bytes(md, render_markdown(rows, cells).encode())
    return md


def _ours(r: dict | None) -> tuple[str, str, str]:
    if not r or "ours" not in r:
        return "", "", ""
    ours = f"{r['ours']:.2f} ± {r['ours_std']:.2f} ({r['networks']} nets / {r['seeds']} seeds)"
    return ours, f"{r['diff']:+.2f}", r["within"]


def render_markdown(rows: dict, cells: list) -> str:
    """``docs/reproduction.md``: every cell of ``cells`` (the rows of ``cells.csv``), recorded or "not run"."""
    head = ("# Reproduction of the papers' main tables\n\n"
            "Generated by `ddkit reproduce` from `docs/reproduction.json` (do not edit by hand). One row per table\n"
            "cell that `params/paper` covers (`ddkit reproduce --list`). *Ours*: mean ± std over every evaluation\n"
            "network of every seed (count shown) under the cell's protocol and selection; *within*: our mean inside\n"
            "the paper's mean ± std (fewer than 3 seeds) or the paper's mean inside our 95% interval (>= 3 seeds).\n"
            "*Iterations*: done / the paper's, per seed; a cell is complete only at the paper's budget.\n\n"
            "Run a cell with `ddkit reproduce <cell> --minutes N [--seeds K]`: when the minutes run out the loop saves\n"
            "its state in `results/reproduce/<cell>/` and stops; the same command resumes it (copy that folder to\n"
            "resume on another machine). A complete cell's sets go to `distilled/` (`ddkit evaluate distilled/<file>`).\n\n"
            "| cell | paper | table | paper number | ours | diff | within | protocol/selection | status | "
            "iterations | GPU | minutes | commit | date |\n|" + "---|" * 14 + "\n")
    lines = []
    for c in cells:
        r = rows.get(c.cell)
        ours, diff, within = _ours(r)
        pub = f"{c.mean:.1f}" + (f" ± {c.std:.1f}" if c.std is not None else "")
        r = r or {}
        lines.append(f"| {c.cell} | {c.paper} | {c.table} | {pub} | {ours} | {diff} | {within} | "
                     f"{c.protocol}/{c.selection} | {r.get('status', 'not run')} | {r.get('iterations', '')} | "
                     f"{r.get('gpu', '')} | {r.get('minutes', '')} | {r.get('commit', '')} | {r.get('date', '')} |")
    return head + "\n".join(lines) + "\n"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shipped_file(run_dir: Path) -> tuple[Path, str] | None:
    """The set a run leaves: ``synset.pt`` (images + labels) or ``generator.pt`` (01/02)."""
    for name, kind in (("synset.pt", "synset"), ("generator.pt", "generator")):
        if (run_dir / name).is_file():
            return run_dir / name, kind
    return None


def ship_sets(cell, cell_dir: Path, rec: dict, distilled_dir: Path, row: dict) -> list:
    """Copy each seed's set to ``distilled_dir/<paper>/<cell>_s<seed>.pt`` and write its manifest line
    (sha256, shape, dataset, IPC, method, command, commit, the paper's number and ours)."""
    import torch

    out, lines = Path(distilled_dir), []
    manifest = load_manifest(out)
    for seed, st in sorted(rec["seeds"].items()):
        found = _shipped_file(Path(cell_dir) / st["run_dir"])
        if found is None:
            continue
        src, kind = found
        dst = out / cell.paper / f"{cell.cell}_s{seed}.pt"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if kind == "generator":  # the generator's weights only (no discriminator, no optimizer states)
            full = torch.load(src, map_location="cpu", weights_only=False)
            atomic_torch_save({k: full[k] for k in ("meta", "params", "G")}, dst)
        else:
            shutil.copyfile(src, dst)
        obj = torch.load(dst, map_location="cpu", weights_only=False)
        shape = list(obj["x"].shape) if kind == "synset" else []
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        line = {"file": str(dst.relative_to(out)), "sha256": sha256(dst), "kind": kind, "shape": shape,
                "dataset": meta.get("dataset") or cell.dataset, "ipc": cell.ipc, "method": cell.method, "cell": cell.cell, "seed": int(seed),
                "protocol": f"{cell.protocol}/{cell.selection}",
                "command": f"ddkit reproduce {cell.cell} --seeds {len(rec['seeds'])}", "commit": rec.get("commit"),
                "paper": cell.mean, "ours": row.get("ours"), "bytes": dst.stat().st_size}
        manifest = [m for m in manifest if m["file"] != line["file"]] + [line]
        lines.append(line)
    atomic_write_json(out / MANIFEST, manifest)
    return lines


def load_manifest(distilled_dir) -> list:
    """The lines of ``distilled_dir/MANIFEST.json`` ([] when absent)."""
    path = Path(distilled_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else []


def verify_manifest(distilled_dir) -> list:
    """The manifest lines whose file is missing or whose sha256 differs (``[]``: all verified)."""
    bad = []
    for line in load_manifest(distilled_dir):
        path = Path(distilled_dir) / line["file"]
        if not path.is_file() or sha256(path) != line["sha256"]:
            bad.append(line)
    return bad


def manifest_line(path) -> dict | None:
    """The manifest line of a shipped file (looked up in the MANIFEST.json of its ``distilled`` folder)."""
    path = Path(path).resolve()
    for parent in path.parents:
        for line in load_manifest(parent):
            if (parent / line["file"]).resolve() == path:
                return line
    return None


def load_generator(path, dataset, device=None):
    """The generator of a shipped generator file (:func:`ship_sets` keeps ``meta``, ``params`` and ``G``),
    checked against ``dataset`` (``ddkit.methods.gan_checkpoint.checkpoint_meta``; ``ValueError`` naming a mismatch)."""
    import torch

    from ..methods.gan_checkpoint import build_gan, checkpoint_meta

    obj = torch.load(path, map_location="cpu", weights_only=False)
    m = obj["meta"]
    for key, want in checkpoint_meta(dataset).items():
        have = list(m.get(key)) if isinstance(m.get(key), (list, tuple)) else m.get(key)
        if have != want:
            raise ValueError(f"{path}: generator made for {key}={have!r}, not {want!r} ({dataset.name})")
    state = build_gan(dataset, z_dim=m["z_dim"], gen_width=m["gen_width"], disc_width=m["disc_width"],
                      gan_loss=m["gan_loss"], device=device, gen_arch=m.get("gen_arch", "compact"),
                      gen_conditioning=m.get("gen_conditioning", "concat"))
    state.G.load_state_dict(obj["G"])
    return state.G


def evaluate_shipped(path, *, protocol: str | None = None, model: str = "ConvNet", epochs: int | None = None,
                     num_eval: int = 5, dataset=None, device=None, seed: int = 0):
    """Re-evaluate a shipped set (``ddkit evaluate``): images + labels trained on ``num_eval`` fresh
    ``model`` networks under ``protocol`` (default: the cell's, "standard" when unstated or "dim", whose
    fresh generated batches the file of images cannot give) for ``epochs`` (default: the protocol's); a
    generator file is sampled once to ``ipc`` images per class. ``dataset``: a loaded dataset (default:
    the manifest's, by name). Returns the ``EvalResult``."""
    import torch

    from ..data import load_dataset
    from ..evaluate import PROTOCOLS, evaluate_synset
    from ..runs.results import load_synset

    line = manifest_line(path) or {}
    name = protocol or line.get("protocol", "standard").split("/")[0]
    name = name if name in PROTOCOLS else "standard"
    ds = dataset if dataset is not None else load_dataset(line.get("dataset") or "mnist5k")
    if line.get("kind") == "generator":
        x, y = load_generator(path, ds, device).sample(int(line["ipc"]), seed=seed)
    else:
        x, y, _ = load_synset(path)
    settings = {k: v for k, v in PROTOCOLS[name].items() if k != "epochs"}
    return evaluate_synset(torch.as_tensor(x), torch.as_tensor(y), ds, model=model, num_models=num_eval,
                           epochs=epochs or PROTOCOLS[name]["epochs"], seed=seed, device=device, **settings)
