"""A distilled query encoder: fewer transformer layers for queries, the full model for documents.

On CPUs without bfloat16 matrix units, float32 query encoding is most of a search's time (issue 42), and it
is compute-bound: the way to halve it is to do half the work. A student of `k` of the backbone's layers,
trained to give the full model's query vectors and pooled vector (training.distill_query), encodes queries in
a little more than k/n of the time (3 of 6 layers: 0.56x on an AVX2 path, experiments/engine/
cpu-amd-epyc-avx512bf16/stages-distilled/); documents, and so every index, stay the full model's. The student is stored beside the
model it was distilled from, as `query_encoder/` (its layers only: it shares the model's embeddings and
projection), which other libraries ignore: they encode queries with the full model, as before.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..fsutil import staged_folder
from .encoder import ColBERT

FOLDER = "query_encoder"
CONFIG_FILE = "query_encoder.json"
WEIGHTS_FILE = "model.safetensors"
# What `query_encoder=` accepts besides a folder: the full backbone, or the student saved in the model's folder.
CHOICES = ("full", "distilled")


def _layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer layers (BERT-like encoders: `encoder.layer`)."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise CheckpointError(f"a distilled query encoder needs a BERT-like backbone (encoder.layer); "
                              f"{type(backbone).__name__} has none")
    return layers


def make_student(model: ColBERT, keep: list[int]) -> nn.Module:
    """A copy of the model's backbone with only the layers `keep` (in order), sharing its embeddings."""
    layers = _layers(model.backbone)
    bad = [i for i in keep if not 0 <= i < len(layers)]
    if not keep or bad or sorted(set(keep)) != list(keep):
        raise ValueError(f"layers to keep must be increasing indexes in 0..{len(layers) - 1}, got {keep}")
    embeddings = model.backbone.embeddings
    model.backbone.embeddings = None  # not copied: the student uses the model's own (frozen) embeddings
    try:
        student = copy.deepcopy(model.backbone)
    finally:
        model.backbone.embeddings = embeddings
    student.embeddings = embeddings
    student.encoder.layer = nn.ModuleList(copy.deepcopy(layers[i]) for i in keep)
    student.config = copy.deepcopy(model.backbone.config)
    student.config.num_hidden_layers = len(keep)
    if getattr(student, "pooler", None) is not None:
        student.pooler = None  # ColBERT reads the last hidden states only
    return student


def student_state(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's own weights: its layers (the embeddings are the model's)."""
    return {f"encoder.layer.{k}": v for k, v in student.encoder.layer.state_dict().items()}


def save_query_encoder(model: ColBERT, folder: str | Path, info: dict | None = None,
                       dtype: torch.dtype | None = torch.float16) -> Path:
    """Write the model's query student into `folder/query_encoder/` (written aside, then renamed)."""
    if model.query_backbone is None:
        raise ValueError("the model has no distilled query encoder to save")
    target = Path(folder) / FOLDER
    weights = {k: (v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
               .contiguous() for k, v in student_state(model.query_backbone).items()}
    config = {"num_hidden_layers": len(model.query_backbone.encoder.layer), **(info or {})}
    with staged_folder(target) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return target


def load_query_encoder(model: ColBERT, folder: str | Path) -> ColBERT:
    """Attach the query student stored in `folder` (a query_encoder/ folder, or a model folder holding one)."""
    path = Path(folder)
    if (path / FOLDER / CONFIG_FILE).is_file():
        path = path / FOLDER
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (not a distilled query encoder)")
    try:
        config = json.loads(config_file.read_text())
        n = int(config["num_hidden_layers"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_file}: unreadable ({e.__class__.__name__}: {e})") from None
    if not 1 <= n <= len(_layers(model.backbone)):
        raise CheckpointError(f"{config_file}: num_hidden_layers {n} is outside 1..{len(_layers(model.backbone))}")
    student = make_student(model, list(range(n)))
    own = student_state(student)
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:  # safetensors: no code runs on load
        stored = {k: f.get_tensor(k) for k in f.keys()}
    missing, extra = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: does not fit this model (missing {missing[:2]}, "
                              f"unexpected {extra[:2]})")
    for key, value in stored.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path / WEIGHTS_FILE}: {key} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(own[key].shape)}")
    student.encoder.layer.load_state_dict({k.removeprefix("encoder.layer."): v for k, v in stored.items()})
    student.to(device=model.device, dtype=model.linear.weight.dtype).eval()
    model.query_backbone = student
    model.query_encoder_info = {"num_hidden_layers": n, **{k: v for k, v in config.items() if k != "num_hidden_layers"}}
    model._query_graphs.clear()
    return model


def choose_query_encoder(model: ColBERT, choice: str | Path | None, model_folder: Path | None) -> ColBERT:
    """Apply `query_encoder=`: None or 'full' (the backbone), 'distilled' (the model folder's student) or a folder."""
    if choice is None or str(choice) == "full":
        model.query_backbone, model.query_encoder_info = None, {}
        return model
    if str(choice) == "distilled":
        if model_folder is None or not (model_folder / FOLDER / CONFIG_FILE).is_file():
            raise CheckpointError(f"query_encoder='distilled': {model.name} has no {FOLDER}/ folder "
                                  f"(make one with `medcolbert distill-query`)")
        return load_query_encoder(model, model_folder / FOLDER)
    if not Path(choice).is_dir():
        raise CheckpointError(f"query_encoder={str(choice)!r}: use one of {', '.join(CHOICES)} or a folder "
                              f"holding {CONFIG_FILE}")
    return load_query_encoder(model, choice)
