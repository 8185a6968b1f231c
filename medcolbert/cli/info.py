"""The info command: versions, devices, the CPU's features and the choices measured on it."""

from __future__ import annotations

import argparse



def _parser_info(sub: argparse._SubParsersAction) -> None:
    """The `info` command's options."""
    p = sub.add_parser("info", help="what this install can use: versions, devices, compiled search stages, default model")
    p.add_argument("--precision", action="store_true",
                   help="measure the query encoder's precision choice on this CPU now (fp32 vs bf16; a few seconds)")
    p.add_argument("--model", default=None, help="the model to measure (default: the default model)")
    p.add_argument("--index", default=None,
                   help="measure the PLAID exact stage's choice for this index on this CPU now (a second or less)")

def cmd_info(args: argparse.Namespace) -> int:
    """Print versions, devices, whether the compiled PLAID stages are built, and the default model."""
    import platform

    import torch

    from .. import __version__
    from ..modeling.checkpoint import BASE_MODEL_ID, release_model_path
    from ..machine import cpu_features, cpu_model
    from ..modeling.precision import choose_query_precision
    from ..search import cpu_kernel

    kernel = cpu_kernel.load()
    try:
        import faiss

        faiss_line = f"{faiss.__version__} ({'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU only'})"
    except ImportError:
        faiss_line = "not installed"
    default = release_model_path()
    lines = [
        ("medcolbert", __version__),
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} CPU threads, CPU capability "
                  f"{torch.backends.cpu.get_cpu_capability()}"),
        ("cuda", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
         if torch.cuda.is_available() else "not available"),
        ("faiss", faiss_line),
        ("compiled PLAID stages", kernel.path if kernel is not None else
         "not in use (not built at install, or MEDCOLBERT_PLAID_KERNEL=torch): search runs the torch engine"),
        ("default model", str(default) if default is not None else f"{BASE_MODEL_ID} (no released checkpoint here)"),
        ("cpu", cpu_model()),
        ("cpu features", ", ".join(cpu_features()) or "not read"),
        ("PLAID loops", "none (torch engine)" if kernel is None else
         f"{kernel.isa} (this CPU runs: {', '.join(kernel.isas())}; MEDCOLBERT_PLAID_ISA caps it)" + (
             "; hand-written lookup and decompression loops" if kernel.isa != "portable" else
             "; compiler-vectorised C")),
    ]
    lines.append(("query encoder", _query_encoder_line(default, cpu_features())))
    if args.precision:
        from ..modeling.encoder import ColBERT

        model = ColBERT.from_pretrained(args.model, device="cpu")
        model.trace_queries = True
        got = choose_query_precision(model, remeasure=True)
        times = ", ".join(f"{k} {v} ms" for k, v in got.get("p50_ms", {}).items())
        cos = ", ".join(f"{k} {v}" for k, v in got.get("min_cosine", {}).items())
        lines.append(("query precision", f"{got['chosen']} for {model.name} on this CPU ({got['reason']}; one "
                                         f"query p50: {times}; min cosine to fp32: {cos})"))
    else:
        lines.append(("query precision", "chosen when a search starts; --precision measures it now"))
    lines += _exact_stage_lines(args.index, kernel is not None)
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0

def _exact_stage_lines(index_path: str | None, compiled: bool) -> list[tuple[str, str]]:
    """`info`'s lines on the PLAID exact stage: measured now for an index, else what this CPU has remembered."""
    import os

    from ..machine import cpu_id, stored
    from ..search.engine import choose_exact_stage

    def describe(entry: dict) -> str:
        times = ", ".join(f"{k} {v} ms" for k, v in entry.get("best_ms", {}).items())
        return f"{entry['chosen']} ({entry.get('reason', 'measured')}" + (f"; best of 21 calls over {entry['vectors']} vectors: {times})"
                                                                         if times else ")")

    if not compiled:
        return [("exact stage", "torch engine (the compiled stages are not in use)")]
    if index_path is not None:
        from ..indexing.index import Index
        from ..search.engine import PlaidEngine

        engine = PlaidEngine(Index.open(index_path), "cpu")
        return [("exact stage", describe(choose_exact_stage(engine, remeasure=True)))]
    forced = os.environ.get("MEDCOLBERT_EXACT_STAGE", "auto")
    if forced != "auto":
        return [("exact stage", f"{forced} (forced by MEDCOLBERT_EXACT_STAGE)")]
    mine = {k: v for k, v in stored("exact-stage").items() if k.startswith(cpu_id() + "|") and isinstance(v, dict)}
    if not mine:
        return [("exact stage", "chosen when an index is first searched on this CPU; --index PATH measures it now")]
    return [(f"exact stage ({key.rsplit('|', 2)[-2]}, {key.rsplit('|', 1)[-1]})", describe(entry))
            for key, entry in sorted(mine.items())]

def _query_encoder_line(model_folder, features: tuple[str, ...]) -> str:  # type: ignore[no-untyped-def]
    """Whether the default model has a distilled query encoder, and whether this CPU is one it is meant for."""
    import json

    from ..modeling.query_encoder import CONFIG_FILE, FOLDER

    stored = model_folder / FOLDER / CONFIG_FILE if model_folder is not None else None
    if stored is None or not stored.is_file():
        return "full (the default model has no distilled query encoder)"
    info = json.loads(stored.read_text())
    full = json.loads((model_folder / "config.json").read_text()).get("num_hidden_layers", "?")
    # bfloat16 matrix units make the full encoder fast (AMX, AVX512-BF16); without them float32 encoding is
    # most of a search's time, and the distilled one does about half the work.
    fast_here = bool({"amx_bf16", "avx512_bf16"} & set(features))
    advice = ("this CPU has bfloat16 units: the full one is fast here" if fast_here else
              "this CPU has no bfloat16 units: the distilled one is the faster choice")
    return (f"full by default ({full} layers); distilled available ({info.get('num_hidden_layers')} layers, "
            f"--query-encoder distilled); {advice}")
