"""Check that colbert-ai 0.2.22 loads a medcolbert checkpoint and encodes exactly as medcolbert does.

Run with the project's Python: it saves a checkpoint, encodes a few texts, then runs colbert-ai on the
same checkpoint in its own virtual environment (scripts/colbert_ai_venv.sh) and compares the vectors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QUERIES = ["do statins cause muscle pain?", "metformin as first-line therapy for type 2 diabetes"]
DOCS = ["Statin therapy is associated with myopathy, muscle pain and, rarely, rhabdomyolysis.",
        "Metformin (a biguanide) lowers hepatic glucose output; it is first-line in type 2 diabetes."]

COLBERT_SIDE = r"""
import json, sys, numpy as np
from colbert.infra import ColBERTConfig
from colbert.modeling.checkpoint import Checkpoint
ckpt_dir, out_dir = sys.argv[1], sys.argv[2]
texts = json.load(open(out_dir + "/texts.json"))
ckpt = Checkpoint(ckpt_dir, colbert_config=ColBERTConfig(checkpoint=ckpt_dir, gpus=0))
Q = ckpt.queryFromText(texts["queries"], bsize=32).float().numpy()
D, lengths = ckpt.docFromText(texts["docs"], bsize=32, keep_dims="flatten")[:2]
np.save(out_dir + "/colbert_q.npy", Q)
np.save(out_dir + "/colbert_d.npy", D.float().numpy())
np.save(out_dir + "/colbert_len.npy", np.asarray(lengths))
ckpt.save(out_dir + "/saved-by-colbert-ai")  # the other direction: medcolbert must load this folder
print(json.dumps({"colbert_dim": ckpt.colbert_config.dim, "doc_maxlen": ckpt.colbert_config.doc_maxlen,
                  "query_maxlen": ckpt.colbert_config.query_maxlen}))
"""


def main() -> int:
    """Save, encode on both sides, compare; exit 1 on any difference above tolerance."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--colbert-python", default=None, help="python of a venv with colbert-ai (default: create one)")
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="experiments/compat/colbert-ai")
    args = p.parse_args()
    import torch

    from medcolbert import ColBERT

    python = args.colbert_python or subprocess.run(
        ["bash", "scripts/colbert_ai_venv.sh"], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    model = ColBERT.from_pretrained(args.model, device="cpu", doc_maxlen=180)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = model.save_pretrained(Path(tmp) / "ckpt")
        (Path(tmp) / "texts.json").write_text(json.dumps({"queries": QUERIES, "docs": DOCS}))
        res = subprocess.run([python, "-c", COLBERT_SIDE, str(ckpt), tmp], capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            return 1
        info = json.loads(res.stdout.strip().splitlines()[-1])
        cq = np.load(Path(tmp) / "colbert_q.npy")
        cd = np.load(Path(tmp) / "colbert_d.npy")
        clen = np.load(Path(tmp) / "colbert_len.npy").tolist()
        back = ColBERT.from_pretrained(Path(tmp) / "saved-by-colbert-ai", device="cpu")
        back_q = back.encode_queries(QUERIES).numpy()
        back_d = torch.cat(back.encode_documents(DOCS)).numpy()
        # What survives colbert-ai's own save of medcolbert's scoring keys (it rewrites artifact.metadata).
        back_scoring = {k: getattr(back.config, k) for k in ("query_augment_len", "dense_weight", "dense_length_power")}
    ours_q = model.encode_queries(QUERIES).numpy()
    ours_d = model.encode_documents(DOCS)
    ours_len = [int(d.shape[0]) for d in ours_d]
    # colbert-ai pads every query with [MASK] to query_maxlen (it ignores query_augment_len); [MASK] positions are
    # not attended to, so the rows both sides have are the same tokens at the same positions and must agree.
    common = min(ours_q.shape[1], cq.shape[1], back_q.shape[1])
    q_err = float(np.abs(ours_q[:, :common] - cq[:, :common]).max())
    d_err = float(np.abs(torch.cat(ours_d).numpy() - cd).max()) if ours_len == clen else float("inf")
    # Loaded back from the folder colbert-ai saved, the model must encode as colbert-ai did.
    back_err = max(float(np.abs(back_q[:, :common] - cq[:, :common]).max()),
                   float(np.abs(back_d - cd).max()) if back_d.shape == cd.shape else float("inf"))
    result = {"colbert_ai": info, "query_vectors_medcolbert": int(ours_q.shape[1]),
              "query_vectors_colbert_ai": int(cq.shape[1]), "query_rows_compared": common,
              "query_max_abs_diff": q_err, "doc_lengths_medcolbert": ours_len,
              "doc_lengths_colbert_ai": clen, "doc_max_abs_diff": d_err,
              "loaded_from_colbert_ai_save_max_abs_diff": back_err,
              "scoring_keys_after_colbert_ai_save": back_scoring,
              "ok": q_err < 1e-4 and d_err < 1e-4 and back_err < 1e-4}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
