"""One library's side of the layout compatibility run: save a folder, or encode texts with a folder.

Runs under medcolbert's, PyLate's, Sentence Transformers 6's or colbert-ai's Python (each in its own venv),
importing only that library and numpy:

    python scripts/compat_side.py save LIBRARY BASE_FOLDER OUT_FOLDER
    python scripts/compat_side.py encode LIBRARY MODEL_FOLDER TEXTS.json OUT.npz

LIBRARY is medcolbert, sentence-transformers, pylate or colbert-ai. `encode` writes q0..qN and d0..dM, each
one text's vectors as that library returns them (queries with every row it gives, documents without skipped tokens).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def _save(library: str, base: str, out: str) -> None:
    if library == "sentence-transformers":
        from sentence_transformers import MultiVectorEncoder

        MultiVectorEncoder(base, device="cpu").save(out)
    elif library == "pylate":
        from pylate import models

        models.ColBERT(base, device="cpu").save(out)
    elif library == "colbert-ai":
        from colbert.infra import ColBERTConfig
        from colbert.modeling.checkpoint import Checkpoint

        config = ColBERTConfig(checkpoint=base, dim=128, doc_maxlen=180, query_maxlen=32, gpus=0)
        Checkpoint(base, colbert_config=config).save(out)
    else:
        raise SystemExit(f"compat_side: save: unknown library {library!r}")


def _encode(library: str, folder: str, texts: dict) -> tuple[list, list]:
    queries, docs = texts["queries"], texts["docs"]
    if library == "medcolbert":
        from medcolbert import ColBERT

        model = ColBERT.from_pretrained(folder, device="cpu", dtype="float32")
        q = model.encode_queries(queries, show_progress=False)
        # medcolbert pads a batch to its longest query with zero rows; a query's own rows are the non-zero ones
        # up to its vector count (augmentation length or its tokens).
        lengths = [model.tokenizer.query_length(s) for s in model.tokenizer.query_token_ids(queries)]
        return [q[i, :n].numpy() for i, n in enumerate(lengths)], [d.numpy() for d in
                                                                    model.encode_documents(docs, show_progress=False)]
    if library == "sentence-transformers":
        from sentence_transformers import MultiVectorEncoder

        model = MultiVectorEncoder(folder, device="cpu")
        return ([np.asarray(x, dtype=np.float32) for x in model.encode_query(queries, convert_to_numpy=True)],
                [np.asarray(x, dtype=np.float32) for x in model.encode_document(docs, convert_to_numpy=True)])
    if library == "pylate":
        from pylate import models

        model = models.ColBERT(folder, device="cpu")
        return ([np.asarray(x, dtype=np.float32) for x in model.encode(queries, is_query=True, show_progress_bar=False)],
                [np.asarray(x, dtype=np.float32) for x in model.encode(docs, is_query=False, show_progress_bar=False)])
    if library == "colbert-ai":
        from colbert.infra import ColBERTConfig
        from colbert.modeling.checkpoint import Checkpoint

        ckpt = Checkpoint(folder, colbert_config=ColBERTConfig(checkpoint=folder, gpus=0))
        q = ckpt.queryFromText(queries, bsize=64).float().numpy()
        flat, lengths = ckpt.docFromText(docs, bsize=64, keep_dims="flatten")[:2]
        flat = flat.float().numpy()
        offsets = np.cumsum([0, *lengths])
        return list(q), [flat[offsets[i]:offsets[i + 1]] for i in range(len(docs))]
    raise SystemExit(f"compat_side: encode: unknown library {library!r}")


def main() -> int:
    """Dispatch save / encode."""
    if len(sys.argv) < 5 or sys.argv[1] not in ("save", "encode"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "save":
        _save(sys.argv[2], sys.argv[3], sys.argv[4])
        return 0
    texts = json.loads(open(sys.argv[4], encoding="utf-8").read())
    q, d = _encode(sys.argv[2], sys.argv[3], texts)
    np.savez(sys.argv[5], **{f"q{i}": x for i, x in enumerate(q)}, **{f"d{i}": x for i, x in enumerate(d)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
