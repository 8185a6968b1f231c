"""Layout compatibility run (make compat): every library reads every layout, side by side, on SciFact test.

Load direction: folders written by Sentence Transformers 6, PyLate 1.6 and colbert-ai 0.2.22 from the packaged
all-MiniLM-L6-v2 (each in its own venv, scripts/compat_side.py save); medcolbert must encode as the library that
wrote the folder does. Save direction: a medcolbert release written by medcolbert in each layout; every library
must encode as medcolbert does. For each (folder, reader) pair it records the largest absolute difference of
query and document vectors against the reference, and the agreement of exact-MaxSim top 10s over a SciFact
subset (the test claims' judged abstracts first, then others up to --docs).

    python scripts/compat.py --out experiments/compat [--docs 1000] [--release medcolbert-minilm-v5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIDE = ROOT / "scripts" / "compat_side.py"


def _pythons(work: Path) -> dict[str, str]:
    """Each library's interpreter (the peers' venvs are made on first use)."""
    run = lambda script: subprocess.run(["bash", str(ROOT / "scripts" / script)], check=True, capture_output=True,  # noqa: E731
                                        text=True, cwd=ROOT).stdout.strip().splitlines()[-1]
    return {"medcolbert": sys.executable, "sentence-transformers": sys.executable,
            "pylate": str(ROOT / run("pylate_venv.sh")), "colbert-ai": str(ROOT / run("colbert_ai_venv.sh"))}


def _side(python: str, *args: str, fatal: bool = True) -> str | None:
    """Run one library's side; its last error line when it fails (fatal: stop the run)."""
    res = subprocess.run([python, str(SIDE), *args], capture_output=True, text=True, cwd=ROOT)
    if res.returncode == 0:
        return None
    if fatal:
        raise SystemExit(f"compat: {' '.join(args[:3])} failed:\n{res.stderr[-2500:]}")
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit {res.returncode}"


def _texts(data: Path, docs: int) -> dict:
    from medcolbert.evaluation.datasets import load_beir

    ds = load_beir(data, "test")
    qids = sorted(ds.queries)
    judged = sorted({d for q in qids for d in ds.qrels.get(q, {})})
    rest = [d for d in ds.corpus if d not in set(judged)]
    ids = (judged + rest)[:docs]
    return {"qids": qids, "queries": [ds.queries[q] for q in qids], "doc_ids": ids,
            "docs": ds.texts(ids)}


def _load(path: Path, nq: int, nd: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    z = np.load(path)
    return [z[f"q{i}"] for i in range(nq)], [z[f"d{i}"] for i in range(nd)]


def _top10(q: list[np.ndarray], d: list[np.ndarray]) -> np.ndarray:
    """Exact MaxSim top 10 of every query over the documents (positions)."""
    lens = [len(x) for x in d]
    flat = torch.from_numpy(np.concatenate(d)).float()
    owner = torch.repeat_interleave(torch.arange(len(d)), torch.tensor(lens))
    out = []
    for x in q:
        sims = torch.from_numpy(x).float() @ flat.T                          # [Lq, N tokens]
        best = torch.full((sims.shape[0], len(d)), -1e9).scatter_reduce(1, owner.expand_as(sims), sims, "amax")
        out.append(torch.topk(best.sum(0), 10).indices.numpy())
    return np.stack(out)


def _compare(ref: tuple, got: tuple) -> dict:
    (rq, rd), (gq, gd) = ref, got
    same_q = [i for i in range(len(rq)) if rq[i].shape == gq[i].shape]
    same_d = [i for i in range(len(rd)) if rd[i].shape == gd[i].shape]
    q_err = max((float(np.abs(rq[i] - gq[i]).max()) for i in same_q), default=float("nan"))
    d_err = max((float(np.abs(rd[i] - gd[i]).max()) for i in same_d), default=float("nan"))
    a, b = _top10(rq, rd), _top10(gq, gd)
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))
    identical = float(np.mean([list(x) == list(y) for x, y in zip(a, b)]))
    return {"queries_same_shape": len(same_q), "queries": len(rq), "docs_same_shape": len(same_d), "docs": len(rd),
            "max_abs_diff_queries": q_err, "max_abs_diff_docs": d_err, "top10_overlap": overlap,
            "top10_identical": identical}


def main() -> int:
    """Write the folders, encode with every reader, compare, record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--release", default="medcolbert-minilm-v5")
    p.add_argument("--work", default=str(ROOT / ".cache" / "compat"))
    p.add_argument("--out", default=str(ROOT / "experiments" / "compat" / "matrix" / "results.json"))
    args = p.parse_args()
    from medcolbert import ColBERT
    from medcolbert.bench import cpu_model, write_results
    from medcolbert.modeling.checkpoint import default_model_path

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    py = _pythons(work)
    texts = _texts(Path(args.data), args.docs)
    (work / "texts.json").write_text(json.dumps(texts))
    base = str(default_model_path())
    folders: dict[str, tuple[str, str]] = {}   # name -> (path, the library whose encoding is the reference)
    for writer in ("sentence-transformers", "pylate", "colbert-ai"):
        out = work / f"{writer}-minilm"
        if not (out / "config.json").is_file():
            _side(py[writer], "save", writer, base, str(out))
        folders[f"written by {writer} (MiniLM)"] = (str(out), writer)
    release = ColBERT.from_pretrained(args.release, device="cpu")
    for fmt in ("colbert-ai", "pylate", "sentence-transformers"):
        out = release.save_pretrained(work / f"{args.release}-{fmt}", format=fmt)
        folders[f"{args.release} saved by medcolbert as {fmt}"] = (str(out), "medcolbert")
    readers = ("medcolbert", "sentence-transformers", "pylate", "colbert-ai")
    rows: list[dict] = []
    nq, nd = len(texts["queries"]), len(texts["docs"])
    original = work / "release-original.npz"
    _side(py["medcolbert"], "encode", "medcolbert", args.release, str(work / "texts.json"), str(original))
    for name, (folder, reference) in folders.items():
        encoded = {}
        for reader in readers:
            if reader == "colbert-ai" and "pylate" in folder.rsplit("/", 1)[-1] or (
                    reader == "colbert-ai" and "sentence-transformers" in folder.rsplit("/", 1)[-1]):
                continue  # colbert-ai reads only its own layout
            target = work / f"{Path(folder).name}--{reader}.npz"
            error = _side(py[reader], "encode", reader, folder, str(work / "texts.json"), str(target), fatal=False)
            if error is not None:  # recorded as a cell of the matrix: this library cannot read this layout
                rows.append({"folder": name, "reader": reader, "error": error})
                print(json.dumps(rows[-1]), flush=True)
                continue
            encoded[reader] = _load(target, nq, nd)
        ref = _load(original, nq, nd) if reference == "medcolbert" else encoded[reference]
        for reader, got in encoded.items():
            if reader == reference:
                continue
            row = {"folder": name, "reader": reader, "reference": reference if reference != "medcolbert"
                   else f"medcolbert on {args.release}", **_compare(ref, got)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = ["| folder | read by | reference | max abs diff q / d | queries same shape | top-10 overlap | identical top 10 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            table.append(f"| {r['folder']} | {r['reader']} | - | cannot load it: {r['error']} | - | - | - |")
            continue
        table.append(f"| {r['folder']} | {r['reader']} | {r['reference']} | {r['max_abs_diff_queries']:.2e} / "
                     f"{r['max_abs_diff_docs']:.2e} | {r['queries_same_shape']}/{r['queries']} | {r['top10_overlap']:.4f} "
                     f"| {r['top10_identical']:.4f} |")
    write_results(Path(args.out), {"rows": rows, "docs": nd, "queries": nq, "release": args.release,
                                   "cpu": cpu_model()}, "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
