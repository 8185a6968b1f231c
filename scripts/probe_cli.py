"""Probe the command line with bad input: every case must exit 2 with one error line, never a traceback or exit 0.

Builds a tiny corpus, checkpoint and index in a temporary folder, then runs each case in-process (main()),
recording the exit code, whether a traceback escaped, and the error line. Writes OUT/cli-probe.json and
prints a summary. Cases marked ok=0 are the valid controls (they must exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medcolbert.cli import main  # noqa: E402
from medcolbert.indexing.index import Index  # noqa: E402
from tests.conftest import make_tiny_model, write_beir  # noqa: E402
from tests.test_index import make_corpus  # noqa: E402


def run(args: list[str]) -> dict:
    """One invocation: exit code, traceback or not, last stderr line."""
    err, out = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - the probe counts escapes
            code, tb = -1, traceback.format_exc().splitlines()[-1]
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return {"args": args, "exit": code, "traceback": tb, "error": lines[-1] if lines else ""}


def main_probe() -> None:
    """Build the fixtures, run the cases, write the record."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="probe-"))
    texts = make_corpus(40, seed=2)
    data = write_beir(tmp / "data", docs={d: ("", t) for d, t in texts.items()},
                      queries={"q1": texts["doc1"][:30], "q2": texts["doc2"][:30]}, qrels={"q1": {"doc1": 1}, "q2": {"doc2": 1}})
    model = make_tiny_model(seed=3)
    ckpt = model.save_pretrained(tmp / "ckpt")
    from medcolbert import ColBERT

    Index.build(tmp / "index", ColBERT.from_pretrained(ckpt, device="cpu"), texts, num_centroids=8, show_progress=False)
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "nan.trec").write_text("q1 Q0 doc1 1 nan x\n")
    (bad / "latin1.jsonl").write_bytes(b'{"_id": "x", "text": "caf\xe9"}\n')
    (bad / "ids.txt").write_text("doc1\n")
    (bad / "empty.txt").write_text("\n")
    (bad / "add-clash.jsonl").write_text('{"_id": "doc2", "text": "x y"}\n')
    (bad / "cfg.yaml").write_text("train:\n  output_dir: x\n  train_files: [y]\n  unknown_key: 1\n")
    (bad / "notyaml.yaml").write_text("train: [\n")
    broken = tmp / "broken-ckpt"
    broken.mkdir()
    for f in ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    D, I, C = str(data), str(tmp / "index"), str(ckpt)
    cases = [
        ["bm25", "--data", D, "--k", "0"], ["bm25", "--data", D, "--k", "-5"], ["bm25", "--data", D, "--split", "nope"],
        ["bm25", "--data", str(tmp / "missing")], ["bm25", "--data", D, "--output", str(bad)],
        ["bm25", "--data", D, "--metrics", "ndcg@ten"],
        ["search", "--index", I, "--data", D, "--k", "0"], ["search", "--index", I, "--data", D, "--split", "nope"],
        ["search", "--index", I, "--data", D, "--threshold", "nan"], ["search", "--index", I, "--data", D, "--ncells", "0"],
        ["search", "--index", str(bad / "ids.txt"), "--data", D], ["search", "--index", str(tmp / "nothing"), "--data", D],
        ["search", "--index", I, "--data", D, "--model", str(broken)],
        ["rerank", "--data", D, "--depth", "0"], ["rerank", "--data", D, "--model", str(broken), "--no-cache"],
        ["rerank", "--data", D, "--run", str(bad / "nan.trec"), "--model", C, "--no-cache"],
        ["rerank", "--data", D, "--batch-size", "0"],
        ["index", "--data", D, "--index", str(tmp / "i2"), "--chunk-size", "0", "--model", C],
        ["index", "--data", D, "--index", I, "--model", C],
        ["index", "--data", str(bad / "latin1.jsonl"), "--index", str(tmp / "i3"), "--model", C],
        ["index", "--data", D, "--index", str(bad / "ids.txt"), "--model", C],
        ["update", "--index", I, "--delete", str(bad / "missing.txt")], ["update", "--index", I, "--delete", str(bad / "empty.txt")],
        ["update", "--index", I, "--delete", str(bad / "ids.txt"), "--add", str(bad / "add-clash.jsonl"), "--model", C],
        ["update", "--index", I], ["check", "--index", str(tmp / "nothing")],
        ["evaluate", str(bad / "nan.trec"), "--data", D], ["evaluate", str(bad / "missing.trec"), "--data", D],
        ["evaluate", str(bad / "latin1.jsonl"), "--data", D],
        ["train", "--config", str(bad / "cfg.yaml")], ["train", "--config", str(bad / "notyaml.yaml")],
        ["train", "--config", str(bad / "missing.yaml")], ["train", "--config", str(bad / "cfg.yaml"), "--max-steps", "0"],
        ["serve", "--index", I, "--port", "70000"], ["serve", "--index", I, "--api-key-file", str(bad / "missing")],
        ["serve", "--index", str(tmp / "nothing")],
        ["mine", "--data", D, "--output", str(tmp / "m.jsonl"), "--window", "5,1"],
        ["mine", "--data", D, "--output", str(tmp / "m.jsonl"), "--negatives", "-1"],
        ["interpolate", "--model", C, "--alpha", "1.5", "--output", str(tmp / "w")],
        ["experiment", str(bad / "cfg.yaml")],
    ]
    controls = [["bm25", "--data", D, "--k", "5"], ["check", "--index", I],
                ["search", "--index", I, "--data", D, "--k", "5"]]
    results = [{**run(c), "ok": 2} for c in cases] + [{**run(c), "ok": 0} for c in controls]
    tracebacks = [r for r in results if r["traceback"]]
    wrong = [r for r in results if r["exit"] != r["ok"] and not r["traceback"]]
    summary = {"cases": len(cases), "controls": len(controls), "tracebacks": len(tracebacks),
               "wrong_exit": len(wrong), "results": [{**r, "args": [x.replace(str(tmp), "TMP") for x in r["args"]],
                                                      "error": r["error"].replace(str(tmp), "TMP")} for r in results]}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli-probe.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(cases)} bad-input cases, {len(controls)} controls: {len(tracebacks)} tracebacks, {len(wrong)} wrong exit codes")
    for r in tracebacks + wrong:
        print("  ", r["exit"], r["args"][:4], r["traceback"] or r["error"])


if __name__ == "__main__":
    main_probe()
