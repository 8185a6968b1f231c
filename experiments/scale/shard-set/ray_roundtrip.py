"""Ray's own round trip to 1, 2 and 4 actors whose method does nothing but return 10 hits (a [32, 128] float32 query
sent), p50 over 300 calls, all actors called at once and waited for together or one by one: what the hop costs before
any search. Local cluster on this machine.

    .venv/bin/python experiments/scale/shard-set/ray_roundtrip.py > experiments/scale/shard-set/ray_roundtrip.txt
"""
import time, numpy as np, ray
ray.init(include_dashboard=False, log_to_driver=False)
@ray.remote(num_cpus=0)
class A:
    def f(self, x, k): return [("d", 1.0, "d")] * k
acts = [A.remote() for _ in range(4)]
ray.get([a.f.remote(None, 1) for a in acts])
q = np.zeros((32, 128), np.float32)
for n in (1, 2, 4):
    ts = []
    for i in range(300):
        t0 = time.perf_counter()
        refs = [a.f.remote(q, 10) for a in acts[:n]]
        ray.get(refs)
        ts.append((time.perf_counter() - t0) * 1000)
    ts2 = []
    for i in range(300):
        t0 = time.perf_counter()
        refs = [a.f.remote(q, 10) for a in acts[:n]]
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready)
        ts2.append((time.perf_counter() - t0) * 1000)
    print(n, "get-all p50 %.2f ms" % np.median(ts), "wait-one-by-one p50 %.2f ms" % np.median(ts2))
from medcolbert.machine import cpu_id
print(f"CPU: {cpu_id()}")
