"""medcolbert: late-interaction (ColBERT) retrieval and reranking for medical and clinical text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names resolve lazily so that `import medcolbert` (and `medcolbert --help`) stays instant:
# torch and transformers load only when a model or scorer is first used.
_EXPORTS = {
    "ColBERT": "medcolbert.modeling.encoder",
    "ModelConfig": "medcolbert.config",
    "maxsim": "medcolbert.scoring",
    "rerank": "medcolbert.search.rerank",
    "rerank_run": "medcolbert.search.rerank",
    "VectorCache": "medcolbert.vector_cache",
    "BM25": "medcolbert.baselines.bm25",
    "evaluate": "medcolbert.evaluation.metrics",
    "load_beir": "medcolbert.evaluation.datasets",
    "read_run": "medcolbert.evaluation.datasets",
    "write_run": "medcolbert.evaluation.datasets",
    "read_triplets": "medcolbert.training.data",
    "write_triplets": "medcolbert.training.data",
    "mine_negatives": "medcolbert.training.mining",
    "TrainConfig": "medcolbert.training.trainer",
    "train": "medcolbert.training.trainer",
    "BiEncoder": "medcolbert.baselines.dense",
    "DenseIndex": "medcolbert.baselines.dense",
    "Index": "medcolbert.indexing.index",
    "EncodedDocuments": "medcolbert.indexing.encoded",
    "Searcher": "medcolbert.search.plaid",
    "SearchConfig": "medcolbert.search.plaid",
    "ShardedSearcher": "medcolbert.search.sharded",
    "Retriever": "medcolbert.retrievers",
    "EncodedQueries": "medcolbert.retrievers",
    "Reranker": "medcolbert.retrievers",
    "Pipeline": "medcolbert.retrievers",
    "RRF": "medcolbert.retrievers",
    "BM25Retriever": "medcolbert.retrievers",
    "DenseRetriever": "medcolbert.retrievers",
    "PlaidRetriever": "medcolbert.retrievers",
    "MaxSimReranker": "medcolbert.retrievers",
    "CosineReranker": "medcolbert.retrievers",
    "score_candidates": "medcolbert.scoring",
    "DataError": "medcolbert.errors",
    "MedColbertError": "medcolbert.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .baselines.bm25 import BM25
    from .baselines.dense import BiEncoder, DenseIndex
    from .indexing.encoded import EncodedDocuments
    from .indexing.index import Index
    from .search.plaid import SearchConfig, Searcher
    from .search.sharded import ShardedSearcher
    from .training.mining import mine_negatives
    from .training.trainer import TrainConfig, train
    from .config import ModelConfig
    from .errors import DataError, MedColbertError
    from .evaluation.datasets import load_beir, read_run, write_run
    from .evaluation.metrics import evaluate
    from .modeling.encoder import ColBERT
    from .retrievers import (RRF, BM25Retriever, CosineReranker, DenseRetriever, EncodedQueries, MaxSimReranker,
                             Pipeline, PlaidRetriever, Reranker, Retriever)
    from .scoring import maxsim, score_candidates
    from .search.rerank import rerank, rerank_run
    from .training.data import read_triplets, write_triplets
    from .vector_cache import VectorCache


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medcolbert' has no attribute {name!r}")
