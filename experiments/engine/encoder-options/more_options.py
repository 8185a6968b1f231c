"""More query-encoder options on this CPU (v5's traced query graph, one MedQuAD dev question shape of 32 tokens,
200 calls, 2 threads): the chosen bf16 traced + frozen graph against torch.compile (inductor, freezing and weight
prepacking; bf16 and fp32), bf16 Linear layers on oneDNN-prepacked weights (through a custom op, traced + frozen),
and, where onnxruntime is installed (not a dependency), the graph exported to ONNX in fp32 and with ORT's
dynamic int8 quantization. p50/p95 ms of the graph call alone, compile time, and the lowest / mean cosine of any
query vector with float32 eager.

    .venv/bin/pip install onnxruntime onnx    # optional, for the ONNX rows
    .venv/bin/python experiments/engine/encoder-options/more_options.py > experiments/engine/encoder-options/more_options.txt
"""
import copy
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from medcolbert import load_beir
from medcolbert.bench import cpu_model, percentiles, time_each
from medcolbert.modeling.encoder import ColBERT, _QueryGraph

warnings.simplefilter("ignore")
model = ColBERT.from_pretrained(None, device="cpu")
texts = list(load_beir("../shared/data/medquad/dev-retrieval", "dev").queries.values())[:200]
tok = model.tokenizer
batches = [tok.query_batch(tok.query_token_ids([t])) for t in texts]
batches = [b for b in batches if b.input_ids.shape[1] == 32][:50]   # one graph shape: the common one
with torch.no_grad():
    reference = [_QueryGraph(model, True).eval()(b.input_ids, b.attention_mask)[0][0] for b in batches]
print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {len(batches)} questions of 32 tokens")


def report(name: str, run, setup_s: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Time run(ids, mask) -> vectors [1, L, dim] once per question (200 calls), and compare with fp32 eager."""
    with torch.no_grad():
        cos = []
        for b, ref in zip(batches, reference):
            got = torch.as_tensor(run(b.input_ids, b.attention_mask)).float()[0][: ref.shape[0]]
            keep = ref.abs().sum(-1) > 0
            cos.append(torch.nn.functional.cosine_similarity(got[keep], ref[keep], dim=-1))
        calls = (batches * 4)[:200]
        ms = time_each(lambda b: run(b.input_ids, b.attention_mask), calls)
    c = torch.cat(cos)
    p = percentiles(ms, (50, 95))
    print(f"{name:52s} p50 {p['p50_ms']:.2f}  p95 {p['p95_ms']:.2f}  setup {setup_s:5.1f} s  "
          f"cosine min {float(c.min()):.4f} mean {float(c.mean()):.4f}")


def first(fn):  # type: ignore[no-untyped-def]
    """The graph's token vectors (its first output)."""
    return lambda ids, mask: fn(ids, mask)[0]


low = model._low_precision_copy(torch.bfloat16)
b0 = batches[0]
with torch.no_grad():
    t0 = time.perf_counter()
    frozen = torch.jit.freeze(torch.jit.trace(_QueryGraph(low, True).eval(), (b0.input_ids, b0.attention_mask),
                                              check_trace=False, strict=False).eval())
    report("bfloat16, traced + frozen (chosen here)", first(frozen), time.perf_counter() - t0)

import torch._inductor.config as inductor_config  # noqa: E402

inductor_config.freezing = True
inductor_config.cpp.weight_prepack = True
for label, source in (("bfloat16", low), ("float32", model)):
    compiled = torch.compile(_QueryGraph(source, True).eval(), dynamic=False)
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled(b0.input_ids, b0.attention_mask)
        setup = time.perf_counter() - t0
    report(f"{label}, torch.compile (inductor, freezing, prepack)", first(compiled), setup)


@torch.library.custom_op("medcolbert_bench::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    """A Linear on oneDNN-prepacked weights (mkldnn's own op has a list argument tracing cannot record)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class PackedLinear(nn.Module):
    """nn.Linear with its weight reordered once for oneDNN (32 rows: one query)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 32))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.medcolbert_bench.packed_linear(x, self.packed, self.bias)


def pack(module: nn.Module) -> nn.Module:
    """Every Linear of module replaced by a PackedLinear."""
    for name, child in list(module.named_children()):
        setattr(module, name, PackedLinear(child) if isinstance(child, nn.Linear) else pack(child))
    return module


packed = copy.deepcopy(low)
packed.backbone = pack(packed.backbone)
with torch.no_grad():
    t0 = time.perf_counter()
    graph = torch.jit.freeze(torch.jit.trace(_QueryGraph(packed, True).eval(), (b0.input_ids, b0.attention_mask),
                                             check_trace=False, strict=False).eval())
    report("bfloat16, oneDNN-prepacked Linear, traced + frozen", first(graph), time.perf_counter() - t0)

try:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
except ImportError:
    print("onnxruntime is not installed: no ONNX rows")
else:
    folder = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(_QueryGraph(model, True).eval(), (b0.input_ids, b0.attention_mask), folder / "q.onnx",
                          dynamo=False, input_names=["ids", "mask"], output_names=["vectors", "pooled"],
                          opset_version=17, dynamic_axes={"ids": {0: "b", 1: "l"}, "mask": {0: "b", 1: "l"}})
    export_s = time.perf_counter() - t0
    quantize_dynamic(folder / "q.onnx", folder / "q8.onnx", weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    for label, path in (("float32", "q.onnx"), ("int8 dynamic", "q8.onnx")):
        session = ort.InferenceSession(str(folder / path), options, providers=["CPUExecutionProvider"])
        report(f"{label}, ONNX Runtime {ort.__version__}",
               lambda ids, mask, s=session: s.run(["vectors"], {"ids": ids.numpy(), "mask": mask.numpy()})[0], export_s)
