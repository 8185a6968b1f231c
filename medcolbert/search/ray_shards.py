"""A shard set served by Ray: each shard held by one or more Ray actors (replicas) placed where its files are,
searched in parallel from a front that encodes each query once and merges the shards' top k.

    searcher = RayShardedSearcher("sets/pubmed", replicas=2)          # starts (or joins) a Ray cluster
    searcher.search("statin muscle pain", k=10)                        # as Searcher.search
    hits, missing = searcher.search_hits_partial(q, 10, q_pooled)      # which shards did not answer
    searcher.add({"pmid:1": "..."}); searcher.delete(["pmid:2"])      # routed to the owning shard, committed there

Faults. An actor is restarted by Ray when it dies (max_restarts=-1) and reopens its shard from disk. A search asks
each shard's replicas in turn until one answers; a shard none of whose replicas answers within the timeout is
missing: `search_hits_partial` names it, and `search` / `search_hits` either raise ShardsUnavailable (on_missing
="fail", the default) or return the merged hits of the others and record them in `last_missing` (on_missing=
"partial"). A write is acknowledged only once the owning shard's actor has committed it (the index's own atomic
commit); writes are idempotent (an id already present is not added twice, an absent id is not deleted), so a write
whose acknowledgement was lost can be sent again.

Replicas of a shard open the same folder (they share a machine or a shared filesystem); writes go to the first
replica that answers, and every replica reopens its shard when the manifest on disk changes, so the next search
sees the write.

An actor may hold several shards (`shards_per_actor`): it searches them in turn and merges, so the front makes one
call per actor, and they share one copy of the model and of torch's runtime.

Placement: `resources` maps a shard to the Ray resources its actors ask for (for example {"node:10.0.0.7": 0.01},
or a custom resource a node was started with, "shard-3": 1), so each shard's actors run on the node that holds its
files. Each actor asks for `num_cpus` (default 0: shards share the node's cores, as threads do in one process).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MedColbertError
from ..indexing.shards import read_set, route, shard_of
from ..passages import parent_of
from ..validation import is_blank
from .sharded import merge_top_k, search_all_encoded, union_kinds


class ShardsUnavailable(MedColbertError):
    """No replica of some shards answered: the answer would be short."""

    def __init__(self, missing: Sequence[int]) -> None:
        self.missing = list(missing)
        super().__init__(f"shards {', '.join(map(str, self.missing))} did not answer (no live replica)")


class ShardServer:
    """What one shard's actor holds: its index, opened from disk, a Searcher over it, and the model for writes."""

    def __init__(self, path: str, model_source: str | None = None, threads: int = 1,
                 config: dict | None = None, model: Any = None) -> None:
        """path: the shard's index folder; model_source: the model (default: the one the index names); model: one
        loaded already (shards held by one actor share it)."""
        torch.set_num_threads(max(1, threads))
        self.path, self.model_source, self.config = Path(path), model_source, config
        self.model: Any = model
        self._open()

    def _open(self) -> None:
        from ..indexing.index import Index
        from .plaid import SearchConfig, Searcher

        self.stat = _stat(self.path)
        self.index = Index.open(self.path)
        if self.model is None:
            self.model = self.index.load_model(self.model_source, device="cpu")
        # Queries arrive encoded: no query graph to trace or precision to measure here.
        self.searcher = Searcher(self.index, self.model, SearchConfig(**self.config) if self.config else None,
                                 trace_queries=False)

    def _fresh(self) -> None:
        """Reopen the shard when its manifest changed on disk (another replica's commit, a compaction)."""
        if _stat(self.path) != self.stat:
            self._open()

    def search(self, q: np.ndarray, k: int, q_pooled: np.ndarray | None, where: Any, knobs: dict,
               kinds: dict | None = None) -> list:
        """This shard's top k for an encoded query, as (document id, score, stored id); a filter is checked
        against `kinds` (the whole set's fields) where given."""
        self._fresh()
        allowed = self.index.matching(where, kinds) if where is not None else None
        return self.searcher.search_hits(torch.from_numpy(q), k, None if q_pooled is None else
                                         torch.from_numpy(q_pooled), allowed, **knobs)

    def field_kinds(self) -> dict:
        """This shard's metadata fields and the kinds each holds."""
        self._fresh()
        return self.index.field_kinds()

    def documents(self, hits: list) -> list[dict]:
        """Hits with their stored text and metadata."""
        self._fresh()
        return self.searcher.documents(hits)

    def add(self, documents: dict[str, str], metadata: dict[str, dict] | None = None) -> dict:
        """Encode and add the documents this shard does not hold yet, in one commit; {added, present}."""
        from ..indexing.encoded import EncodedDocuments

        self._fresh()
        present = [d for d in documents if self.index.passages_of(d)]
        new = {d: t for d, t in documents.items() if d not in set(present)}
        added = 0
        if new:
            meta = {d: m for d, m in (metadata or {}).items() if d in new}
            # The Index object is updated in place; its Searcher rebuilds its engine at the new generation.
            added = self.index.add(EncodedDocuments.encode(self.model, new, meta, index=self.index))
            self.stat = _stat(self.path)
        return {"added": added, "present": len(present)}

    def delete(self, doc_ids: list[str]) -> dict:
        """Delete the ids this shard holds, in one commit; {deleted, absent}."""
        self._fresh()
        held = [d for d in doc_ids if self.index.passages_of(d)]
        deleted = self.index.delete(held) if held else 0
        self.stat = _stat(self.path)
        return {"deleted": deleted, "absent": len(doc_ids) - len(held)}

    def health(self) -> dict:
        """The shard's state: documents, generation, this process and its resident memory."""
        self._fresh()
        return {"path_name": self.path.name, "documents": len(self.index),
                "generation": self.index.manifest.get("generation"), "pid": os.getpid(), "rss_mb": _rss_mb()}


class ShardGroup:
    """One actor's shards (one or several of a set): their ShardServers sharing one model, searched in turn and
    merged here, so the front makes one call per actor rather than per shard."""

    def __init__(self, paths: dict[int, str], model_source: str | None = None, threads: int = 1,
                 config: dict | None = None) -> None:
        """paths: {shard number: its index folder}."""
        self.members: dict[int, ShardServer] = {}
        model = None
        for shard, path in sorted(paths.items()):
            member = ShardServer(path, model_source, threads, config, model)
            model = member.model
            self.members[shard] = member

    def search(self, q: np.ndarray, k: int, q_pooled: np.ndarray | None, where: Any, knobs: dict,
               kinds: dict | None = None) -> list:
        """The merged top k of this actor's shards."""
        return merge_top_k([m.search(q, k, q_pooled, where, knobs, kinds) for _, m in sorted(self.members.items())], k)

    def field_kinds(self) -> dict:
        """The metadata fields and kinds of this actor's shards, together."""
        return union_kinds(m.field_kinds() for m in self.members.values())

    def documents(self, by_shard: dict[int, list]) -> dict[int, list[dict]]:
        """{shard: hits} -> {shard: the hits' stored documents}."""
        return {s: self.members[s].documents(hits) for s, hits in by_shard.items()}

    def add(self, by_shard: dict[int, tuple[dict, dict]]) -> dict:
        """{shard: (documents, metadata)} added shard by shard (each its own commit); {added, present} summed."""
        got = [self.members[s].add(docs, meta) for s, (docs, meta) in sorted(by_shard.items())]
        return {"added": sum(g["added"] for g in got), "present": sum(g["present"] for g in got)}

    def delete(self, by_shard: dict[int, list[str]]) -> dict:
        """{shard: ids} deleted shard by shard; {deleted, absent} summed."""
        got = [self.members[s].delete(ids) for s, ids in sorted(by_shard.items())]
        return {"deleted": sum(g["deleted"] for g in got), "absent": sum(g["absent"] for g in got)}

    def health(self) -> list[dict]:
        """Each of this actor's shards' state."""
        return [{"shard": s, **m.health()} for s, m in sorted(self.members.items())]


def _stat(path: Path) -> tuple[int, int, int]:
    st = (path / "manifest.json").stat()
    return st.st_mtime_ns, st.st_ino, st.st_size


def _rss_mb() -> float:
    """This process's resident memory (MB), from /proc (0 where unreadable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class RayShardedSearcher:
    """A shard set's shards on Ray actors, searched and written as one index (the Searcher calls a front needs)."""

    def __init__(self, path: str | Path, model: Any = None, replicas: int = 1, address: str | None = None,
                 timeout_s: float = 30.0, on_missing: str = "fail", num_cpus: float = 0.0, threads: int | None = None,
                 resources: Callable[[int], dict] | Mapping[int, dict] | None = None,
                 config: dict | None = None, shards_per_actor: int = 1) -> None:
        """path: a shard set (indexing/shards.py), on a filesystem every node that holds a shard can read; model:
        the front's query encoder (default: the set's); replicas: actors per shard; address: a running cluster
        (default: $RAY_ADDRESS, else a local one started here); on_missing: "fail" or "partial"; config: SearchConfig
        fields for every shard; threads: torch threads per actor (default: this machine's cores shared among the
        actors, at least one each: a lone shard's actor searches on every core, as the in-process search does);
        shards_per_actor: consecutive shards held by one actor (its replicas alike), searched there in turn and
        merged, so that the front's fan-out is one call per actor (a node holding several shards; `resources`
        is then asked for by the group's first shard)."""
        import ray

        if on_missing not in ("fail", "partial"):
            raise ValueError(f"on_missing must be fail or partial, got {on_missing!r}")
        if not isinstance(replicas, int) or not 1 <= replicas <= 16:
            raise ValueError(f"replicas must be an integer from 1 to 16, got {replicas!r}")
        if not isinstance(shards_per_actor, int) or shards_per_actor < 1:
            raise ValueError(f"shards_per_actor must be a positive integer, got {shards_per_actor!r}")
        self.path = Path(path).resolve()
        self.manifest = read_set(self.path)
        self.count = int(self.manifest["count"])
        self.on_missing, self.timeout_s = on_missing, float(timeout_s)
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        from ..indexing.index import Index

        first = Index.open(self.path / self.manifest["shards"][0]["name"])
        self.model = model if model is not None else first.load_model()
        source = getattr(self.model, "source", None)
        remote = ray.remote(max_restarts=-1, max_task_retries=0)(ShardGroup)
        # Units: the shards each actor holds (one each by default); self.actors[u] are unit u's replicas.
        self.units = [list(range(u, min(u + shards_per_actor, self.count)))
                      for u in range(0, self.count, shards_per_actor)]
        self.unit_of = {s: u for u, shards in enumerate(self.units) for s in shards}
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // (len(self.units) * replicas))
        self.actors: list[list[Any]] = []
        for shards in self.units:
            extra = (resources(shards[0]) if callable(resources) else resources.get(shards[0], {})) if resources else {}
            options = {"num_cpus": num_cpus, **({"resources": extra} if extra else {})}
            paths = {s: str(self.path / self.manifest["shards"][s]["name"]) for s in shards}
            self.actors.append([remote.options(**options).remote(paths, None if source is None else str(source),
                                                                  threads, config) for _ in range(replicas)])
        self._next = [0] * len(self.units)
        self.last_missing: list[int] = []
        self.missing_seen: set[int] = set()   # every shard that failed to answer a search since this was made
        self._kinds: dict[str, set[str]] | None = None
        self.health()   # waits until every shard has opened (or says which cannot)

    # ------------------------------------------------------------------ calls with failover
    def _call_all(self, method: str, args_of: Callable[[int], tuple], shards: Sequence[int],
                   rotate: bool = True) -> tuple[dict[int, Any], list[int]]:
        """method(*args_of(u)) on one replica of each unit (an actor's shards) in parallel, the next replica tried
        where one fails; returns ({unit: result}, units none of whose replicas answered within the timeout)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        unavailable: tuple[type[BaseException], ...] = (RayActorError,)
        try:
            from ray.exceptions import ActorUnavailableError

            unavailable += (ActorUnavailableError,)
        except ImportError:   # older Ray
            pass
        deadline = time.monotonic() + self.timeout_s
        tried = {s: 0 for s in shards}
        first = {s: self._next[s] for s in shards}
        pending: dict[Any, int] = {}

        def submit(s: int) -> None:
            replicas = self.actors[s]
            r = (first[s] + tried[s]) % len(replicas)
            tried[s] += 1
            pending[getattr(replicas[r], method).remote(*args_of(s))] = s

        for s in shards:
            submit(s)
            if rotate:   # spread reads over the replicas
                self._next[s] = (self._next[s] + 1) % len(self.actors[s])
        results: dict[int, Any] = {}
        missing: list[int] = []
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                missing += list(pending.values())
                for ref in pending:
                    ray.cancel(ref, force=False)
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            for ref in ready:
                s = pending.pop(ref)
                try:
                    results[s] = ray.get(ref)
                except unavailable:
                    if tried[s] < len(self.actors[s]):
                        submit(s)
                    else:
                        missing.append(s)
                except GetTimeoutError:
                    missing.append(s)
        return results, sorted(missing)

    def _finish(self, missing: list[int]) -> None:
        self.last_missing = missing
        self.missing_seen.update(missing)
        if missing and self.on_missing == "fail":
            raise ShardsUnavailable(missing)

    def field_kinds(self) -> dict[str, set[str]]:
        """The metadata fields of every shard and the kinds each holds, together (read once, again after a write)."""
        if self._kinds is None:
            results, missing = self._call_all("field_kinds", lambda u: (), range(len(self.units)))
            if missing:
                raise ShardsUnavailable(self._shards(missing))
            self._kinds = union_kinds(results.values())
        return self._kinds

    # ------------------------------------------------------------------ search
    def search_hits_partial(self, q: torch.Tensor, k: int = 10, q_pooled: torch.Tensor | None = None,
                            where: Any = None, **knobs: object) -> tuple[list[tuple[str, float, str]], list[int]]:
        """The merged top k of every shard that answered, and the shards that did not."""
        if isinstance(where, np.ndarray):
            raise ValueError("a sharded search takes a filter expression or mapping, not one index's mask")
        qn = np.ascontiguousarray(q.detach().cpu().numpy(), dtype=np.float32)
        pn = None if q_pooled is None else np.ascontiguousarray(q_pooled.detach().cpu().numpy(), dtype=np.float32)
        kinds = None
        if where is not None:
            from ..filters import check_fields, parse_where

            parsed = parse_where(where)   # the caller's mistake is raised here, before any shard is asked
            kinds = self.field_kinds()
            if parsed is not None:
                check_fields(parsed, kinds)
        results, missing = self._call_all("search", lambda u: (qn, k, pn, where, dict(knobs), kinds),
                                          range(len(self.units)))
        return merge_top_k([results[u] for u in sorted(results)], k), self._shards(missing)

    def _shards(self, units: Sequence[int]) -> list[int]:
        """The shard numbers of some units."""
        return sorted(s for u in units for s in self.units[u])

    def search_hits(self, q: torch.Tensor, k: int = 10, q_pooled: torch.Tensor | None = None, where: Any = None,
                    **knobs: object) -> list[tuple[str, float, str]]:
        """`Searcher.search_hits` over every shard (ShardsUnavailable, or a short answer named in last_missing,
        where some shards did not answer)."""
        hits, missing = self.search_hits_partial(q, k, q_pooled, where, **knobs)
        self._finish(missing)
        return hits

    def search_encoded(self, q: torch.Tensor, k: int = 10, return_documents: bool = False,
                       q_pooled: torch.Tensor | None = None, **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """`search` for a query encoded already."""
        where = knobs.pop("where", None)
        hits = self.search_hits(q, k, q_pooled, where, **knobs)
        return self.documents(hits) if return_documents else [(d, x) for d, x, _ in hits]

    def search(self, query: str, k: int = 10, return_documents: bool = False,
               **knobs: object) -> list[tuple[str, float]] | list[dict]:
        """The top k of the whole set for one query: encoded once here, searched on every shard in parallel."""
        from ..modeling.encoder import encode_queries_pooled

        if not isinstance(query, str) or is_blank(query):
            raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
        q, q_pooled = encode_queries_pooled(self.model, [query], show_progress=False)
        return self.search_encoded(q[0], k, return_documents, None if q_pooled is None else q_pooled[0], **knobs)

    def search_all(self, queries: Mapping[str, str] | Sequence[str], k: int = 10, show_progress: bool | None = None,
                   where: Any = None, mode: str = "plaid", **knobs: object) -> dict[str, dict[str, float]]:
        """Top-k for many queries, as a run {query id: {doc id: score}}."""
        return search_all_encoded(self, queries, k, show_progress, where, mode, **knobs)

    def documents(self, hits: Sequence[tuple]) -> list[dict]:
        """Hits with their stored text and metadata, each read from the shard that owns it."""
        by_shard: dict[int, list[int]] = {}
        for i, hit in enumerate(hits):
            by_shard.setdefault(shard_of(parent_of(hit[0]), self.count), []).append(i)
        by_unit = self._by_unit({s: [tuple(hits[i]) for i in rows] for s, rows in by_shard.items()})
        results, missing = self._call_all("documents", lambda u: (by_unit[u],), sorted(by_unit))
        if missing:
            raise ShardsUnavailable(self._shards(missing))
        out: list[dict] = [{}] * len(hits)
        for s, rows in by_shard.items():
            for i, doc in zip(rows, results[self.unit_of[s]][s]):
                out[i] = doc
        return out

    def _by_unit(self, by_shard: Mapping[int, Any]) -> dict[int, dict[int, Any]]:
        """{shard: x} regrouped as {unit: {shard: x}}."""
        out: dict[int, dict[int, Any]] = {}
        for s, x in by_shard.items():
            out.setdefault(self.unit_of[s], {})[s] = x
        return out

    # ------------------------------------------------------------------ writes
    def add(self, documents: Mapping[str, str], metadata: Mapping[str, dict] | None = None) -> dict:
        """Encode on the owning shards and add {id: text}; returns {added, present}. Acknowledged (returned) only
        when every owning shard committed. A shard whose actors are down (restarting) is asked again until the
        timeout; then ShardsUnavailable, nothing is acknowledged, and the call may be repeated (ids that did land
        are then reported present)."""
        groups = route(documents, self.count)
        self._kinds = None   # new documents may bring new fields
        by_unit = self._by_unit({s: ({d: documents[d] for d in ids},
                                     {d: metadata[d] for d in ids if metadata and d in metadata})
                                 for s, ids in groups.items()})
        results = self._write("add", lambda u: (by_unit[u],), sorted(by_unit))
        return {"added": sum(r["added"] for r in results.values()), "present": sum(r["present"] for r in results.values())}

    def delete(self, doc_ids: Sequence[str]) -> dict:
        """Delete ids on their owning shards; returns {deleted, absent} (retried and repeatable, as add)."""
        by_unit = self._by_unit(route(doc_ids, self.count))
        results = self._write("delete", lambda u: (by_unit[u],), sorted(by_unit))
        return {"deleted": sum(r["deleted"] for r in results.values()),
                "absent": sum(r["absent"] for r in results.values())}

    def _write(self, method: str, args_of: Callable[[int], tuple], units: list[int]) -> dict[int, Any]:
        """A write on its units, those that did not answer asked again (writes are idempotent) until the timeout:
        an actor Ray is restarting answers once it has reopened its shards."""
        deadline = time.monotonic() + self.timeout_s
        results: dict[int, Any] = {}
        todo = units
        while True:
            got, todo = self._call_all(method, args_of, todo, rotate=False)
            results.update(got)
            if not todo:
                return results
            if time.monotonic() >= deadline:
                raise ShardsUnavailable(self._shards(todo))
            time.sleep(0.2)

    # ------------------------------------------------------------------ state
    def health(self) -> list[dict]:
        """Every shard's state on every replica ({shard, replica, ok, ...}); a replica that does not answer is
        ok: False for each of its shards."""
        import ray

        out = []
        refs = [(u, r, a.health.remote()) for u, group in enumerate(self.actors) for r, a in enumerate(group)]
        for u, r, ref in refs:
            try:
                out += [{"replica": r, "ok": True, **h} for h in ray.get(ref, timeout=self.timeout_s)]
            except Exception as exc:   # a dead or unreachable replica is reported, not raised
                out += [{"shard": s, "replica": r, "ok": False, "error": type(exc).__name__} for s in self.units[u]]
        return sorted(out, key=lambda h: (h["shard"], h["replica"]))

    def __len__(self) -> int:
        return sum(h["documents"] for h in self.health() if h["ok"] and h["replica"] == 0)

    def close(self) -> None:
        """Stop the actors (the cluster stays up)."""
        import ray

        for group in self.actors:
            for actor in group:
                ray.kill(actor, no_restart=True)
        self.actors = []
