"""Distil a model's query encoder into fewer layers: the student learns the teacher's query vectors.

The student (modeling.query_encoder.make_student) starts from some of the teacher's own layers and is trained
to give, for each query position, the teacher's unit vector (1 - cosine, averaged over the positions that get
a vector, [MASK] augmentation included) and the teacher's pooled vector (1 - cosine), and optionally each of its
layers' states those of the teacher's layer at the same relative depth. Its embeddings and the projection are the
teacher's and stay frozen, so documents, indexes and caches are untouched. No labels are needed: any
question-like text teaches it; `question_texts` gathers the training splits' questions.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import MedColbertError
from ..fsutil import atomic_write_text
from ..modeling.encoder import ColBERT
from ..modeling.query_encoder import CONFIG_FILE, WEIGHTS_FILE, make_student, save_query_encoder, student_state
from ..modeling.tokenization import TokenBatch

STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"
# Layer subsets tried as the student's start when none is given; the one the teacher's vectors are
# closest to before training (on the first texts of the training pool) is taken.
CANDIDATES = {2: [(0, 5), (0, 3), (1, 5)], 3: [(0, 2, 4), (0, 2, 5), (1, 3, 5), (0, 1, 2), (0, 3, 5)],
              4: [(0, 1, 3, 5), (0, 2, 4, 5), (1, 2, 4, 5)]}


@dataclass
class DistillConfig:
    """What a distillation run does; written to the run folder and into the student's query_encoder.json."""
    model: str
    out: str
    num_layers: int = 3
    layers: list[int] | None = None   # None: the best of CANDIDATES[num_layers] at the start
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: int = 100
    pooled_weight: float = 1.0
    layer_weight: float = 0.0         # > 0: also match each student layer's states to the teacher's layer there
    init: str | None = None           # start from this query_encoder/ folder's weights (a fresh run only)
    validation: int = 256             # texts held apart to report the student's fidelity
    save_every: int = 100
    seed: int = 42
    sources: dict = field(default_factory=dict)


def question_texts(data_root: str | Path, seed: int = 42, snippets: int = 3000) -> tuple[list[str], dict[str, int]]:
    """Question-like training texts from ../shared/data's training splits (no evaluation questions).

    MedQuAD train questions, Medical Question Pairs (all three columns), consumer-health train questions, MeQSum
    questions and summaries (its rows near evaluation questions were dropped at the source), SciFact train
    claims, and `snippets` openings of MedQuAD train answers cut at 8-120 words (long messages, for the pooled head).
    """
    root = Path(data_root)
    counts: dict[str, int] = {}
    texts: list[str] = []

    def add(name: str, items: Sequence[str]) -> None:
        items = [t.strip() for t in items if isinstance(t, str) and t.strip()]
        counts[name] = len(items)
        texts.extend(items)

    def rows(path: Path) -> list[dict]:
        if not path.is_file():
            raise MedColbertError(f"{path}: not found (distill-query reads the training splits under --data)")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    medquad = rows(root / "medquad" / "train_pairs.jsonl")
    add("medquad-train-questions", [r["query"] for r in medquad])
    pairs = rows(root / "medical_question_pairs" / "triplets.jsonl")
    add("medical-question-pairs", [t for r in pairs for t in [r["query"], *r.get("pos", []), *r.get("neg", [])]])
    add("consumer-health-train", [r["query"] for r in rows(root / "consumer-health" / "train_pairs.jsonl")])
    meqsum = rows(root / "meqsum" / "questions.jsonl")
    add("meqsum-questions-and-summaries", [t for r in meqsum for t in (r["question"], r["summary"])])
    claims = {r["_id"]: r["text"] for r in rows(root / "scifact" / "queries.jsonl")}
    train_ids = {line.split("\t")[0] for line in (root / "scifact" / "qrels" / "train.tsv").read_text().splitlines()[1:]}
    add("scifact-train-claims", [claims[i] for i in sorted(train_ids) if i in claims])
    rng = random.Random(seed)
    answers = [p for r in medquad for p in r.get("pos", [])]
    cut = []
    for text in rng.sample(answers, min(snippets, len(answers))):
        words = text.split()
        cut.append(" ".join(words[:rng.randint(8, 120)]))
    add("medquad-train-answer-openings", cut)
    # Unsupervised or not, training on an evaluation question's own text would flatter the student there:
    # any text that matches one (case and spacing aside, or in its first 60 characters) is dropped.
    held = evaluation_questions(root)
    unique = sorted({t for t in texts if _norm(t) not in held and _norm(t)[:60] not in held})
    counts["dropped_as_evaluation_questions"] = len(set(texts)) - len(unique)
    rng.shuffle(unique)
    counts["unique"] = len(unique)
    return unique, counts


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def evaluation_questions(root: Path) -> set[str]:
    """Every evaluation split's questions under `root` (normalised, and their first 60 characters)."""
    held: set[str] = set()
    files = [("consumer-health/dev-retrieval/queries.jsonl", None), ("mediqa-qa/queries.jsonl", None),
             ("medquad/dev-retrieval/queries.jsonl", None), ("scifact/queries.jsonl", "scifact/qrels/test.tsv")]
    for name, qrels in files:
        path = root / name
        if not path.is_file():
            continue
        keep = None
        if qrels is not None and (root / qrels).is_file():
            keep = {line.split("\t")[0] for line in (root / qrels).read_text().splitlines()[1:]}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if keep is None or row["_id"] in keep:
                    held.add(_norm(row["text"]))
                    held.add(_norm(row["text"])[:60])
    return held


def _states(backbone: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, ...]:
    """Every layer's output states (the embeddings' first)."""
    return backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True).hidden_states


def _compare(model: ColBERT, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student against teacher from one pass of each: per-position cosine of the unit vectors [B, L], the mask of
    positions with a vector, per-query cosine of the pooled vectors [B], and the layer loss.

    The layer loss (1 - cosine over the text's positions) pairs the student's j-th of k layers with the teacher's
    layer j * n / k (of n): TinyBERT's intermediate matching, which gives the shallow student a target at every depth.
    """
    with torch.no_grad():
        teacher = _states(model.backbone, batch)
    student = _states(model.query_backbone, batch)
    keep = model.tokenizer.query_keep_mask(batch)
    t_vec = nn.functional.normalize(model.linear(teacher[-1]).float(), p=2, dim=-1)
    s_vec = nn.functional.normalize(model.linear(student[-1]).float(), p=2, dim=-1)
    pooled = (model._pool(student[-1], batch) * model._pool(teacher[-1], batch)).sum(-1)
    k, n = len(student) - 1, len(teacher) - 1
    real = batch.attention_mask.bool()
    layer = sum(((1 - nn.functional.cosine_similarity(student[j], teacher[round(j * n / k)], dim=-1)) * real).sum()
                / real.sum() for j in range(1, k + 1)) / k
    return (s_vec * t_vec).sum(-1), keep, pooled, layer


def _batches(model: ColBERT, texts: list[str], size: int) -> list[list[list[int]]]:
    """Token id lists in batches of similar length (little padding), in order of length."""
    seqs = model.tokenizer.query_token_ids(texts)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [[seqs[i] for i in order[s:s + size]] for s in range(0, len(order), size)]


def evaluate(model: ColBERT, batches: list[list[list[int]]]) -> dict[str, float]:
    """Mean token cosine (over positions with a vector), its 1st percentile, and mean / min pooled cosine."""
    tok, pool = [], []
    with torch.no_grad():
        for seqs in batches:
            cos, keep, pcos, _ = _compare(model, model.tokenizer.query_batch(seqs))
            tok.append(cos[keep])
            pool.append(pcos)
    t, p = torch.cat(tok), torch.cat(pool)
    return {"token_cosine": round(float(t.mean()), 5), "token_cosine_p1": round(float(t.quantile(0.01)), 5),
            "pooled_cosine": round(float(p.mean()), 5), "pooled_cosine_min": round(float(p.min()), 5)}


def _pick_layers(model: ColBERT, n: int, batches: list[list[list[int]]]) -> tuple[list[int], dict[str, dict]]:
    """The candidate start whose untrained student is closest to the teacher."""
    if n not in CANDIDATES:
        raise MedColbertError(f"--num-layers {n}: choose the layers with --layers (candidates exist for "
                              f"{', '.join(map(str, CANDIDATES))})")
    tried = {}
    for keep in CANDIDATES[n]:
        model.query_backbone = make_student(model, list(keep))
        tried[",".join(map(str, keep))] = evaluate(model, batches)
    best = max(tried, key=lambda k: tried[k]["token_cosine"] + tried[k]["pooled_cosine"])
    return [int(i) for i in best.split(",")], tried


def distill_query(config: DistillConfig, texts: Sequence[str]) -> Path:
    """Train (or resume) a query student; returns the folder of the finished `query_encoder/`."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = ColBERT.from_pretrained(config.model, device="cpu" if not torch.cuda.is_available() else None,
                                    dtype="float32")
    for p in model.parameters():
        p.requires_grad_(False)
    texts = list(texts)
    if len(texts) <= config.validation + config.batch_size:
        raise MedColbertError(f"{len(texts)} texts: too few for --validation {config.validation} and a batch")
    held, train_texts = texts[:config.validation], texts[config.validation:]
    val_batches = _batches(model, held, 64)
    state_path = out / STATE_FILE
    state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
    start = None
    if state is not None:
        config.layers = [int(i) for i in state["layers"]]
    elif config.init is not None:
        stored = json.loads((Path(config.init) / CONFIG_FILE).read_text())
        config.layers = [int(i) for i in stored["initialized_from_layers"]]
        start = load_file(str(Path(config.init) / WEIGHTS_FILE))
    elif config.layers is None:
        config.layers, tried = _pick_layers(model, config.num_layers, val_batches[:4])
        _log(out, {"start_candidates": tried, "chosen": config.layers})
    student = make_student(model, list(config.layers))
    if start is not None:
        student.encoder.layer.load_state_dict({k.removeprefix("encoder.layer."): v.float() for k, v in start.items()})
    model.query_backbone = student
    trainable = list(student.encoder.layer.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup))
                                                 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps))))
    step = 0
    if state is not None:
        student.encoder.layer.load_state_dict({k.removeprefix("encoder.layer."): v for k, v in state["student"].items()})
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    else:
        before = evaluate(model, val_batches)
        _log(out, {"step": 0, "validation": before, "config": asdict(config)})
    batches = _batches(model, train_texts, config.batch_size)
    atomic_write_text(out / "config.json", json.dumps(asdict(config), indent=2) + "\n")
    bar = tqdm(total=config.steps, initial=step, desc="Distilling the query encoder", unit="step")
    started, window = time.perf_counter(), []
    while step < config.steps:
        epoch, position = divmod(step, len(batches))
        order = list(range(len(batches)))
        random.Random(config.seed + epoch).shuffle(order)   # the same order after a resume
        student.train()
        batch = model.tokenizer.query_batch(batches[order[position]]).to(model.device)
        cos, keep, pcos, layer_loss = _compare(model, batch)
        token_loss = ((1 - cos) * keep).sum() / keep.sum()
        pooled_loss = (1 - pcos).mean()
        loss = token_loss + config.pooled_weight * pooled_loss + config.layer_weight * layer_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        window.append((token_loss.item(), pooled_loss.item(), layer_loss.item()))
        bar.update(1)
        bar.set_postfix(token=f"{1 - sum(w[0] for w in window[-20:]) / len(window[-20:]):.4f}")
        if step % 20 == 0:
            _log(out, {"step": step, "token_loss": sum(w[0] for w in window) / len(window),
                       "pooled_loss": sum(w[1] for w in window) / len(window),
                       "layer_loss": sum(w[2] for w in window) / len(window), "lr": schedule.get_last_lr()[0],
                       "seconds": round(time.perf_counter() - started, 1)})
            window = []
        if step % config.save_every == 0 or step == config.steps:
            student.eval()
            _save_state(state_path, step, config, student, optimizer, schedule)
    bar.close()
    student.eval()
    after = evaluate(model, val_batches)
    _log(out, {"step": step, "validation": after})
    info = {"distilled_from": Path(config.model).name, "initialized_from_layers": list(config.layers),
            "steps": config.steps, "batch_size": config.batch_size, "lr": config.lr,
            "pooled_weight": config.pooled_weight, "layer_weight": config.layer_weight,
            "continued_from": None if config.init is None else json.loads(
                (Path(config.init) / CONFIG_FILE).read_text()).get("steps"),
            "training_texts": config.sources, "validation": after}
    return save_query_encoder(model, out, info=info)


def _save_state(path: Path, step: int, config: DistillConfig, student: nn.Module,
                optimizer: torch.optim.Optimizer, schedule: object) -> None:
    """The run's state (student, optimizer, schedule, RNG), written aside and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "layers": list(config.layers or []), "student": student_state(student),
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),  # type: ignore[attr-defined]
                "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)


def _log(out: Path, record: dict) -> None:
    with open(out / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
