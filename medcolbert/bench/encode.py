"""Encoding throughput of the ColBERT document encoder: passages/s and tokens/s, fp32 vs bf16, in one run."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from medcolbert import ColBERT, load_beir
from medcolbert.bench import cpu_model


def _has_flag(flag: str) -> bool:
    """Whether /proc/cpuinfo lists a CPU flag (AMX and AVX-512 BF16 decide whether bfloat16 pays)."""
    try:
        return f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Encode the same passages at each precision, alternating rounds, and record the raw timings."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="../shared/data/scifact")
    p.add_argument("--model", default=None, help="checkpoint (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--passages", type=int, default=256)
    p.add_argument("--doc-maxlen", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="experiments/engine/encoding-throughput")
    args = p.parse_args(argv)

    data = load_beir(args.data, "test")
    texts = [doc.full_text for doc in list(data.corpus.values())[: args.passages]]
    model = ColBERT.from_pretrained(args.model, device="cpu", doc_maxlen=args.doc_maxlen)
    tokens = sum(model.tokenizer.document_lengths(texts))
    model.encode_documents(texts[: args.batch_size], batch_size=args.batch_size, show_progress=False)  # warm-up

    timings: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):  # alternate so that machine noise hits both precisions alike
        for dtype in timings:
            model.to_device("cpu", dtype=dtype)
            t0 = time.perf_counter()
            model.encode_documents(texts, batch_size=args.batch_size, show_progress=False)
            timings[dtype].append(time.perf_counter() - t0)

    best = {k: min(v) for k, v in timings.items()}
    result = {
        "model": model.name, "passages": len(texts), "tokens": tokens, "doc_maxlen": args.doc_maxlen,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu": cpu_model(), "machine": platform.machine(), "amx_bf16": _has_flag("amx_bf16"),
        "avx512_bf16": _has_flag("avx512_bf16"), "seconds": timings,
        "passages_per_s": {k: len(texts) / s for k, s in best.items()},
        "tokens_per_s": {k: tokens / s for k, s in best.items()},
        "bf16_speedup": best["float32"] / best["bfloat16"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    for k in timings:
        print(f"{k:9s} {result['passages_per_s'][k]:6.1f} passages/s  {result['tokens_per_s'][k]:7.0f} tokens/s")
    print(f"bf16 / fp32 speed ratio: {result['bf16_speedup']:.2f}  ({len(texts)} passages, {tokens} tokens, "
          f"doc_maxlen {args.doc_maxlen})")


if __name__ == "__main__":
    main()
