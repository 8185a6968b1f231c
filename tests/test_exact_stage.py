"""The exact stage's variants: scoring from the compressed codes (lookups) against rebuilding vectors, and the
per-machine choice between them."""

import json

import numpy as np
import pytest
import torch

from medcolbert.indexing.codec import ResidualCodec, dequantize
from medcolbert.search import cpu_kernel
from medcolbert.search.cpu_kernel import ISAS

pytestmark = pytest.mark.skipif(cpu_kernel.load() is None, reason="compiled PLAID stages not built")


@pytest.mark.parametrize("nbits,dim,lq", [(1, 32, 32), (2, 128, 32), (2, 128, 7), (2, 24, 32), (4, 32, 32), (4, 64, 13),
                                          (2, 128, 33), (2, 128, 48), (2, 128, 65), (1, 64, 128), (2, 128, 129),
                                          (2, 128, 1), (2, 128, 8), (2, 128, 100)])
@pytest.mark.parametrize("isa", ISAS)
def test_lookup_scores_equal_decompress_then_maxsim(nbits, dim, lq, isa):
    # AVX-512: Lq 32 takes its own loop, other Lq up to 128 the blocked one (a zero-padded lookup table, a masked
    # last block of centroid scores); AVX2 the blocked loop of 8-float blocks for Lq up to 128; longer queries the
    # generic loop compiled for the set. Each set the CPU runs is forced in turn.
    kernel = cpu_kernel.load()
    if isa not in kernel.isas():
        pytest.skip(f"this CPU runs the kernel's {kernel.widest} loops at most, not {isa}")
    with kernel.using(isa):
        _lookup_scores_equal_decompress_then_maxsim(kernel, nbits, dim, lq, isa)


def _lookup_scores_equal_decompress_then_maxsim(kernel, nbits, dim, lq, isa):  # type: ignore[no-untyped-def]
    torch.manual_seed(dim + nbits + lq)
    vecs = torch.nn.functional.normalize(torch.randn(1200, dim), dim=-1)
    codec = ResidualCodec.fit(torch.nn.functional.normalize(vecs[:40] + 0.01, dim=-1).numpy(), vecs[600:].numpy(), nbits)
    codes, packed = codec.compress(vecs[:600])
    q = torch.nn.functional.normalize(torch.randn(lq, dim), dim=-1)
    full = dequantize(torch.from_numpy(codes), torch.from_numpy(packed), codec.centroids_f32, codec._byte_table,
                      codec._row_base)
    unit = full / full.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lens = np.array([5, 1, 40, 0, 17, 100], dtype=np.int64)
    starts = np.array([0, 7, 20, 60, 300, 450], dtype=np.int64)
    want = [float((unit[s:s + n] @ q.T).max(dim=0).values.sum()) if n else -np.inf for s, n in zip(starts, lens)]
    table = (codec.centroids_f32 @ q.T).numpy()
    per_byte = 8 // nbits
    bt = codec._byte_table.numpy().reshape(-1, 256, per_byte)
    width = kernel.lut_width(lq)
    lanes = {"avx512": 16, "avx2": 8, "portable": 1}[isa]
    assert width == (lq if lq > 128 else lanes * -(-lq // lanes))
    padded = np.zeros((width, dim), dtype=np.float32)
    padded[:lq] = q.numpy()
    lut = np.ascontiguousarray(np.matmul(bt, padded.T.reshape(-1, per_byte, width)), dtype=np.float32)
    norms = full.norm(dim=-1).clamp_min(1e-12).numpy()
    got = kernel.exact_lut(np.ascontiguousarray(table), lut, codes.astype(np.int32), packed, norms, starts, lens)
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(IndexError):
        cpu_kernel.load().exact_lut(np.ascontiguousarray(table), lut, codes.astype(np.int32), packed, norms,
                                    starts + 600, lens)
    with pytest.raises(ValueError, match="do not fit"):
        cpu_kernel.load().exact_lut(np.ascontiguousarray(table), lut[:-1], codes.astype(np.int32), packed, norms,
                                    starts, lens)
    if width != lq:
        with pytest.raises(ValueError, match="do not fit"):   # a table of Lq columns where the loop reads `width`
            kernel.exact_lut(np.ascontiguousarray(table), np.ascontiguousarray(lut[:, :, :lq]), codes.astype(np.int32),
                             packed, norms, starts, lens)


def test_the_choice_is_measured_once_remembered_and_can_be_forced(tmp_path, monkeypatch, tiny_model):
    from medcolbert.indexing.index import Index
    from medcolbert.search.engine import EXACT_STAGES, PlaidEngine
    from tests.test_index import make_corpus

    monkeypatch.setenv("MEDCOLBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDCOLBERT_EXACT_STAGE", raising=False)
    index = Index.build(tmp_path / "idx", tiny_model, make_corpus(40), nbits=2)
    engine = PlaidEngine(index, "cpu")
    choice = engine.exact_choice
    assert choice["reason"] == "measured" and set(choice["p50_ms"]) == set(choice["best_ms"]) == set(EXACT_STAGES)
    assert choice["chosen"] == min(choice["best_ms"], key=choice["best_ms"].get) == engine.exact_stage
    # Every variant agreed with decompress-then-multiply on the probe before it was timed.
    assert max(choice["max_abs_diff"].values()) < 1e-4
    stored = json.loads((tmp_path / "cache" / "exact-stage.json").read_text())
    (key, entry), = stored.items()
    assert entry["chosen"] == choice["chosen"] and key.endswith(f"|dim 16|nbits 2|kernel r{engine.kernel.revision} {engine.kernel.isa}")
    # The remembered entry is used as it is: a different stored choice is taken without measuring again.
    other = next(s for s in EXACT_STAGES if s != choice["chosen"])
    (tmp_path / "cache" / "exact-stage.json").write_text(json.dumps({key: {**entry, "chosen": other}}))
    assert PlaidEngine(index, "cpu").exact_stage == other
    monkeypatch.setenv("MEDCOLBERT_EXACT_STAGE", "torch")
    assert PlaidEngine(index, "cpu").exact_choice == {"chosen": "torch", "reason": "forced"}
    monkeypatch.setenv("MEDCOLBERT_EXACT_STAGE", "gpu")
    with pytest.raises(ValueError, match="MEDCOLBERT_EXACT_STAGE must be auto or one of lut"):
        PlaidEngine(index, "cpu")


def test_the_instruction_set_can_be_capped_but_not_widened(monkeypatch):
    kernel = cpu_kernel.load()
    assert kernel.isa == kernel.widest and kernel.isas()[-1] == kernel.widest and kernel.isas()[0] == "portable"
    with kernel.using("portable"):
        assert kernel.isa == "portable" and kernel.lut_width(20) == 20
    assert kernel.isa == kernel.widest
    with pytest.raises(ValueError, match="one of portable, avx2, avx512"):
        kernel.set_isa("sse9")
    if kernel.widest != "avx512":
        with pytest.raises(ValueError, match="at most"):
            kernel.set_isa("avx512")
    # The environment variable caps the loops of a fresh process.
    import subprocess
    import sys
    code = "from medcolbert.search import cpu_kernel; print(cpu_kernel.load().isa)"
    got = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "MEDCOLBERT_PLAID_ISA": "portable"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert got == "portable"


SOURCE = __import__("pathlib").Path(cpu_kernel.__file__).with_name("_plaid_cpu.c")
# Loops of the portable build that a compiler must vectorise (the exact stage's lookup adds and running max, the
# candidate stages' centroid pass and row max, decompression's widening multiply): a line of each in the source.
MUST_VECTORISE = ("s[j] += t[j]", "float x = s[j] / nr;", "acc[j] = row[j] > acc[j] ? row[j] : acc[j]",
                  "m = row[j] > m ? row[j] : m;", "v[i] = (float)cen[i] * scale")


@pytest.mark.parametrize("compiler", ["cc", "clang", "aarch64-linux-gnu-gcc"])
def test_the_loops_compile_without_march_and_for_other_architectures(compiler, tmp_path):
    # Without -march (the wheel's build) on x86, and with a cross-compiler for 64-bit ARM where one is installed
    # (apt-get install gcc-aarch64-linux-gnu): there the portable loops are all there is, and they must vectorise.
    import shutil
    import subprocess
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    cmd = [compiler, "-DMC_KERNEL_ONLY", "-O3", "-std=c11", "-ffp-contract=off", "-fopenmp-simd", "-Werror=implicit",
           "-c", str(SOURCE), "-o", str(tmp_path / "k.o")]
    gcc = "clang" not in compiler
    done = subprocess.run(cmd + (["-fopt-info-vec-optimized"] if gcc else []), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "k.o").stat().st_size > 0
    if gcc and compiler.startswith("aarch64"):
        vectorised = {int(line.split(":")[1]) for line in done.stderr.splitlines() if "loop vectorized" in line}
        lines = SOURCE.read_text().splitlines()
        for marker in MUST_VECTORISE:
            at = next(i + 1 for i, line in enumerate(lines) if marker in line)
            # gcc names the loop's `for` (or its omp simd pragma) line: the marker's line or up to two above.
            assert vectorised & {at, at - 1, at - 2}, f"the loop of {marker!r} (line {at}) is not vectorised for ARM"


@pytest.mark.parametrize("target", ["native", "aarch64"])
def test_the_widest_lookup_loop_matches_the_portable_one_in_c(target, tmp_path):
    # tests/c/lookup_check.c runs the exact stage's lookup at the widest level against the portable loop for query
    # lengths 1-128: natively (AVX-512 or AVX2 here), and built for 64-bit ARM and run under qemu-aarch64, which is
    # the only way this machine runs the NEON loop (apt-get install gcc-aarch64-linux-gnu qemu-user).
    import shutil
    import subprocess
    from pathlib import Path
    compiler, runner = ("cc", []) if target == "native" else ("aarch64-linux-gnu-gcc", ["qemu-aarch64"])
    missing = [tool for tool in [compiler, *runner] if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed")
    source = Path(__file__).with_name("c") / "lookup_check.c"
    built = subprocess.run([compiler, "-O3", "-std=c11", "-ffp-contract=off", "-fopenmp-simd",
                            *([] if target == "native" else ["-static"]), str(source), "-o", str(tmp_path / "check"),
                            "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    ran = subprocess.run([*runner, str(tmp_path / "check")], capture_output=True, text=True, timeout=120)
    lines = ran.stdout.splitlines()
    assert ran.returncode == 0 and len(lines) == 28, ran.stdout[-3000:] + ran.stderr[-1000:]
    assert all(line.startswith("ok") for line in lines)
    if target == "aarch64":
        assert all(" level 1 " in line for line in lines)   # the NEON level, not the portable fallback
