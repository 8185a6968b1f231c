"""Why a document matched: late interaction's token-level evidence, in words and character spans.

For each query token MaxSim keeps the document token it is most similar to; this module shows that match in the
text. Query word pieces are joined back into the words the user typed, the [MASK] expansion tokens are one group,
and each group carries the document tokens it matched (their character spans in the document's stored text), the
similarities, and its share of the score. A model with a pooled head adds its single-vector term, reported as its
own share; a lexical (BM25) hit reports the query terms the document holds.

The evidence is computed from a fresh encoding of the query and of the stored text (the document's passage for a
split document): the index scores compressed vectors, so `maxsim` here can differ from the search's score in the
third decimal; both are given. Only a call that asks pays for it: searching never computes an explanation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .modeling.encoder import encode_documents_pooled, encode_queries_pooled, has_pooled_head


def _words(text: str, spans: Sequence[tuple[int, int] | None]) -> list[int | None]:
    """For each token span, the index of the whitespace-separated word of `text` it lies in (None: no span)."""
    starts = [i for i, ch in enumerate(text) if not ch.isspace() and (i == 0 or text[i - 1].isspace())]
    out: list[int | None] = []
    for span in spans:
        if span is None:
            out.append(None)
            continue
        # the last word starting at or before the token's first character
        lo, hi = 0, len(starts) - 1
        w = 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if starts[mid] <= span[0]:
                w, lo = mid, mid + 1
            else:
                hi = mid - 1
        out.append(w)
    return out


def explain_text(model: Any, query: str, text: str, score: float | None = None,
                 lexical: bool = False) -> dict[str, Any]:
    """The explanation of one (query, document text) pair (see the module's docstring for what it holds)."""
    return explain_texts(model, query, [text], [score], lexical)[0]


def explain_texts(model: Any, query: str, texts: Sequence[str], scores: Sequence[float | None] | None = None,
                  lexical: bool = False) -> list[dict[str, Any]]:
    """explain_text for several documents of one query: the query encoded once, the documents in one batch."""
    tok = model.tokenizer
    q_ids, q_spans = tok.offsets(query, is_query=True)
    Q, q_pooled = encode_queries_pooled(model, [query], show_progress=False)
    got = encode_documents_pooled(model, list(texts), show_progress=False)
    vectors, pooled = (got[0], got[1]) if isinstance(got, tuple) else (got, None)
    scores = list(scores) if scores is not None else [None] * len(texts)
    return [_explain(model, query, q_ids, q_spans, Q[0].float(), None if q_pooled is None else q_pooled[0], text,
                     vectors[i], None if pooled is None else pooled[i], scores[i], lexical)
            for i, text in enumerate(texts)]


def _explain(model: Any, query: str, q_ids: list[int], q_spans: list, q: torch.Tensor, q_pooled: Any, text: str,
             D: torch.Tensor, d_pooled: Any, score: float | None, lexical: bool) -> dict[str, Any]:
    """One document's explanation from the encoded query and document."""
    tok = model.tokenizer
    d_ids, d_spans = tok.offsets(text, is_query=False)
    skip = set(tok.skiplist_ids.tolist())
    kept = [p for p, i in enumerate(d_ids) if i not in skip]
    if len(kept) != D.shape[0]:   # the tokenizations disagree (should not happen): say so rather than misalign
        raise ValueError(f"the document's {D.shape[0]} vectors do not line up with its {len(kept)} kept tokens")
    live = q.abs().sum(-1) > 0
    sim = q @ D.float().T if D.shape[0] else torch.zeros((q.shape[0], 0))
    best, at = (sim.max(dim=1) if D.shape[0] else (torch.zeros(q.shape[0]), torch.zeros(q.shape[0], dtype=torch.long)))
    best = torch.where(live, best, torch.zeros_like(best))
    maxsim = float(best.sum())
    pooled_term = 0.0
    pooled: dict[str, float] | None = None
    if has_pooled_head(model) and q_pooled is not None and d_pooled is not None:
        cosine = float(d_pooled.float() @ q_pooled.float())
        count = int(live.sum())
        weight = model.config.pooled_weight(count)
        pooled_term = weight * count * cosine
        pooled = {"cosine": round(cosine, 4), "term": round(pooled_term, 4)}
    total = maxsim + pooled_term
    vocab = tok.tokenizer
    word_of = _words(query, q_spans)
    groups: dict[Any, dict[str, Any]] = {}
    weights: dict[tuple[int, int], float] = {}
    for j in range(q.shape[0]):
        if not bool(live[j]):
            continue
        qid = q_ids[j] if j < len(q_ids) else tok.mask_token_id
        if j >= len(q_ids) or qid == tok.mask_token_id:
            key, kind, label = "expansion", "expansion", "[MASK] expansion"
        elif q_spans[j] is None:
            key, kind, label = f"special{j}", "special", vocab.convert_ids_to_tokens(int(qid))
        else:
            key, kind, label = f"word{word_of[j]}", "word", None
        group = groups.setdefault(key, {"kind": kind, "text": label, "span": None, "contribution": 0.0,
                                        "matches": []})
        if kind == "word":
            a, b = q_spans[j]  # type: ignore[misc]
            group["span"] = [a, b] if group["span"] is None else [min(group["span"][0], a), max(group["span"][1], b)]
            group["text"] = query[group["span"][0]:group["span"][1]]
        pos = kept[int(at[j])] if D.shape[0] else None
        span = d_spans[pos] if pos is not None else None
        value = float(best[j])
        group["contribution"] += value
        group["matches"].append({"query_token": vocab.convert_ids_to_tokens(int(qid)),
                                 "document_token": text[span[0]:span[1]] if span else
                                 (vocab.convert_ids_to_tokens(int(d_ids[pos])) if pos is not None else None),
                                 "span": list(span) if span else None, "similarity": round(value, 4)})
        if span and kind == "word":   # the shading shows what the user's words matched
            weights[span] = weights.get(span, 0.0) + value
    out_groups = []
    for g in groups.values():
        g["share"] = round(g["contribution"] / total, 4) if total else 0.0
        g["contribution"] = round(g["contribution"], 4)
        out_groups.append(g)
    # Query words first in their order, then the expansion, then the special tokens.
    rank = {"word": 0, "expansion": 1, "special": 2}
    out_groups.sort(key=lambda g: (rank[g["kind"]], g["span"][0] if g["span"] else 0))
    # Word pieces of one document word (adjacent spans) are one highlight, weighted by their summed contribution.
    merged: list[list[float]] = []
    for (a, b), w in sorted(weights.items()):
        if merged and a == merged[-1][1]:
            merged[-1][1], merged[-1][2] = b, merged[-1][2] + w
        else:
            merged.append([a, b, w])
    top = max((m[2] for m in merged), default=0.0) or 1.0
    highlights = [{"start": int(a), "end": int(b), "weight": round(w / top, 4)} for a, b, w in merged]
    result: dict[str, Any] = {"query": query, "score": score, "maxsim": round(maxsim, 4), "pooled": pooled,
                              "groups": out_groups, "highlights": highlights,
                              # text past doc_maxlen has no vectors, so nothing there can match
                              "truncated": tok.untruncated_document_lengths([text])[0] > model.config.doc_maxlen}
    if lexical:
        result["lexical_terms"] = lexical_terms(query, text)
    return result


def explain_document(index: Any, model: Any, query: str, doc_id: str, score: float | None = None,
                     lexical: bool = False) -> dict[str, Any]:
    """explain_text for a document of an index, by id: its stored text, or a split document's best passage."""
    from .errors import MedColbertError
    from .validation import is_blank

    if not isinstance(query, str) or is_blank(query):
        raise ValueError("the query is empty (nothing but whitespace, control or format characters)")
    if not index.has_documents:
        raise MedColbertError(f"{index.path} stores no document texts to explain matches in")
    units = [u for u in index.passages_of(doc_id) if not index.deleted[u]]
    if not units:
        raise KeyError(f"document id {doc_id!r} is not in the index")
    stored = [index.doc_ids[u] for u in units]
    notes = explain_texts(model, query, [index.document(u)["text"] for u in stored], [score] * len(stored), lexical)
    # A split document: its best passage, as search ranks it.
    total = [n["maxsim"] + (n["pooled"]["term"] if n["pooled"] else 0.0) for n in notes]
    best = max(range(len(notes)), key=lambda i: total[i])
    out = {**notes[best], "id": doc_id}
    if stored[best] != doc_id:
        out["passage"] = stored[best]
    return out


def lexical_terms(query: str, text: str) -> list[dict[str, Any]]:
    """The query's BM25 terms (stemmed, stopwords out, as the index's postings) that the text holds, with counts."""
    from .lexical import tokenize

    q_terms, d_terms = tokenize([query, text])
    counts: dict[str, int] = {}
    for t in d_terms:
        counts[t] = counts.get(t, 0) + 1
    seen, out = set(), []
    for t in q_terms:
        if t in counts and t not in seen:
            seen.add(t)
            out.append({"term": t, "count": counts[t]})
    return out


def render(explanation: dict[str, Any], text: str, color: bool, width: int = 160) -> list[str]:
    """Terminal lines of an explanation: the stretch of the text with the most matched weight, matched words
    marked (ANSI shading by contribution where color, else [[word]]), then the query words' matches and shares."""
    marks = explanation["highlights"]
    lines = []
    if marks and text:
        # the window of `width` characters holding the most highlight weight
        best, start = -1.0, 0
        for m in marks:
            lo = max(0, m["start"] - width // 4)
            got = sum(x["weight"] for x in marks if lo <= x["start"] and x["end"] <= lo + width)
            if got > best:
                best, start = got, lo
        end = min(len(text), start + width)
        pieces, at = [], start
        for m in marks:
            if m["start"] < start or m["end"] > end or m["start"] < at:
                continue
            pieces.append(text[at:m["start"]])
            word = text[m["start"]:m["end"]]
            if color:
                shade = 226 if m["weight"] > 0.66 else 229 if m["weight"] > 0.33 else 230
                pieces.append(f"\x1b[1;48;5;{shade};30m{word}\x1b[0m")
            else:
                pieces.append(f"[[{word}]]")
            at = m["end"]
        pieces.append(text[at:end])
        snippet = " ".join("".join(pieces).split())
        lines.append(("..." if start > 0 else "") + snippet + ("..." if end < len(text) else ""))
    words = [g for g in explanation["groups"] if g["kind"] != "special"]
    for g in sorted(words, key=lambda g: -g["contribution"])[:8]:
        matched = ", ".join(dict.fromkeys(m["document_token"] or "-" for m in g["matches"]))
        lines.append(f"  {g['text']!s:<22} {100 * g['share']:5.1f}%  <- {matched[:80]}")
    if explanation.get("pooled"):
        p = explanation["pooled"]
        total = explanation["maxsim"] + p["term"]
        lines.append(f"  {'(pooled single vector)':<22} {100 * p['term'] / total if total else 0:5.1f}%  cosine {p['cosine']}")
    if explanation.get("lexical_terms"):
        lines.append("  BM25 terms: " + ", ".join(f"{t['term']} x{t['count']}" for t in explanation["lexical_terms"]))
    return lines
