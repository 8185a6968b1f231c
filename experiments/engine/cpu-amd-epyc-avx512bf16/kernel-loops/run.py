"""The compiled kernel's loops per instruction set on this CPU (issue 42): exact-stage lookups (Lq 32 and 64) and nbits-2
decompression over 9,216 random codes of 128 dimensions, best of 30 calls each, every set the CPU runs forced in turn.

    .venv/bin/python experiments/engine/cpu-amd-epyc-avx512bf16/kernel-loops/run.py > experiments/engine/cpu-amd-epyc-avx512bf16/kernel-loops/result.txt
"""
import time, numpy as np, torch
from medcolbert.search import cpu_kernel
k = cpu_kernel.load()
rng = np.random.default_rng(0)
n, nbytes, C, dim = 9216, 32, 4096, 128
codes = rng.integers(0, C, n, dtype=np.int32); packed = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
norms = rng.random(n, dtype=np.float32) + 0.5
starts = np.arange(0, n, 96, dtype=np.int64); lens = np.full(len(starts), 96, dtype=np.int64)
cent = rng.integers(-127, 128, (C, dim), dtype=np.int8); scales = rng.random(C, dtype=np.float32)
bt = rng.standard_normal((nbytes * 256, 4), dtype=np.float32)
for lq in (32, 64):
    table = rng.standard_normal((C, lq), dtype=np.float32)
    for isa in k.isas():
        with k.using(isa):
            w = k.lut_width(lq); lut = rng.standard_normal((nbytes, 256, w), dtype=np.float32)
            ts = []
            for i in range(30):
                t0 = time.perf_counter(); k.exact_lut(table, lut, codes, packed, norms, starts, lens); ts.append(time.perf_counter() - t0)
            td = []
            for i in range(30):
                t0 = time.perf_counter(); k.decompress(codes, packed, cent, scales, bt); td.append(time.perf_counter() - t0)
            print(f"Lq {lq} {isa:9s} exact_lut {min(ts)*1000:.3f} ms  decompress {min(td)*1000:.3f} ms")
from medcolbert.machine import cpu_id
print(f"CPU: {cpu_id()}")
