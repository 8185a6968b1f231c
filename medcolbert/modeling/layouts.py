"""Checkpoint layouts other ColBERT libraries write, read into one description: backbone folder, projection, config.

Three layouts hold a ColBERT model:
- colbert-ai (also RAGatouille, medcolbert's own): `artifact.metadata` and `linear.weight` beside the backbone.
- PyLate: a Sentence Transformers folder (`modules.json`) with `pylate.models.Dense.Dense` modules and the ColBERT
  settings (`query_prefix`, `query_length`, `do_query_expansion`, `skiplist_words`, ...) in
  `config_sentence_transformers.json`.
- Sentence Transformers 6 (`MultiVectorEncoder`): `modules.json` with Transformer, Dense, MultiVectorMask and
  Normalize modules; the lengths and `query_expansion` in the Transformer's `sentence_bert_config.json`, text
  prompts in `config_sentence_transformers.json`.
A folder may hold more than one (answerai-colbert-small-v1 ships colbert-ai's and PyLate's): colbert-ai's wins when
it has its projection, since that is what colbert-ai and RAGatouille users encode with.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

METADATA_FILE = "artifact.metadata"
MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
ST_MODULE_CONFIG = "sentence_bert_config.json"

# Activations that are the identity: a chain of such Dense layers is one linear map, folded into one projection.
_IDENTITY = {"torch.nn.modules.linear.Identity", "torch.nn.Identity", "Identity", None, ""}
# Sentence Transformers module types by their last name (the package path moved between versions).
_TRANSFORMER, _DENSE, _MASK, _NORMALIZE = "Transformer", "Dense", "MultiVectorMask", "Normalize"
# PyLate's defaults for the settings its config may leave out (pylate.models.ColBERT).
PYLATE_DEFAULTS = {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 32, "document_length": 180,
                   "do_query_expansion": True, "attend_to_expansion_tokens": False}


@dataclass
class Layout:
    """What a model folder holds: its layout's name, the backbone's folder, the projection and config values."""

    kind: str                                   # "colbert-ai", "pylate", "sentence-transformers" or "transformers"
    backbone: Path
    projection: torch.Tensor | None = None      # [dim, hidden]
    bias: torch.Tensor | None = None            # [dim] (a Dense layer with bias=True)
    config: dict[str, Any] = field(default_factory=dict)   # ModelConfig fields the layout sets
    notes: list[str] = field(default_factory=list)          # what was folded or read, for `medcolbert info`


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None


def _module_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A Sentence Transformers module's tensors (safetensors, or a .bin read weights-only)."""
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        try:
            return load_file(str(folder / "model.safetensors"))
        except Exception as exc:  # safetensors raises its own error type for corrupt or truncated files
            raise CheckpointError(f"{folder / 'model.safetensors'}: not a readable safetensors file ({str(exc)[:160]})") from None
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{folder / 'pytorch_model.bin'}: cannot be read as a weights-only torch file ({exc})") from None
    raise CheckpointError(f"{folder}: a Dense module without weights (no model.safetensors or pytorch_model.bin)")


def _dense(folder: Path, hidden: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One Dense module's weight [out, in] and bias, refusing what is not a plain linear map."""
    cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # ST's default is Tanh
    if activation not in _IDENTITY:
        raise CheckpointError(f"{folder}: Dense activation {activation} is not supported (medcolbert reads "
                              "linear Dense layers, activation Identity)")
    if cfg.get("use_residual"):
        raise CheckpointError(f"{folder}: Dense with use_residual is not supported (medcolbert reads linear Dense layers)")
    tensors = _module_weights(folder)
    weight = tensors.get("linear.weight")
    if weight is None or weight.ndim != 2:
        raise CheckpointError(f"{folder}: no 2-dimensional linear.weight in the Dense module's weights")
    if hidden is not None and weight.shape[1] != hidden:
        raise CheckpointError(f"{folder}: Dense takes {weight.shape[1]} inputs but the layer before gives {hidden}")
    bias = tensors.get("linear.bias")
    if cfg.get("bias") and bias is None:
        raise CheckpointError(f"{folder}: config says bias=true but the weights have no linear.bias")
    return weight.float(), (bias.float() if bias is not None else None)


def _fold(layers: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Linear layers applied in turn, as one: W = Wn...W1, b = Wn...W2 b1 + ... + bn (in float64)."""
    weight = layers[0][0].double()
    bias = layers[0][1].double() if layers[0][1] is not None else None
    for w, b in layers[1:]:
        weight = w.double() @ weight
        bias = w.double() @ bias if bias is not None else None
        if b is not None:
            bias = b.double() if bias is None else bias + b.double()
    return weight.float(), (bias.float() if bias is not None else None)


def _short(type_name: str) -> str:
    return str(type_name).rsplit(".", 1)[-1]


def read_sentence_transformers(folder: Path) -> Layout:
    """The PyLate or Sentence Transformers layout of `folder` (which has a modules.json)."""
    modules = _read_json(folder / MODULES_FILE)
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{folder / MODULES_FILE}: expected a list of modules")
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    first = modules[0]
    if _short(first.get("type", "")) != _TRANSFORMER:
        raise CheckpointError(f"{folder / MODULES_FILE}: the first module is {first.get('type')}, expected a Transformer")
    backbone = folder / first.get("path", "")
    st_config = _read_json(folder / ST_CONFIG_FILE) if (folder / ST_CONFIG_FILE).is_file() else {}
    module_config = _read_json(backbone / ST_MODULE_CONFIG) if (backbone / ST_MODULE_CONFIG).is_file() else {}
    hidden = _hidden_size(backbone)
    dense: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    skiplist: list[str] | None = None
    pylate = "query_prefix" in st_config or "do_query_expansion" in st_config
    if any(_short(m.get("type", "")) == "Pooling" for m in modules):
        # A single-vector Sentence Transformers model: its Dense layers (if any) act on the pooled vector, so
        # there is no token projection here; the encoder is a plain backbone for ColBERT's purposes.
        return Layout("transformers", backbone, notes=["a single-vector Sentence Transformers model (Pooling)"])
    for module in modules[1:]:
        kind, path = _short(module.get("type", "")), folder / module.get("path", "")
        pylate = pylate or str(module.get("type", "")).startswith("pylate.")
        if kind == _DENSE:
            dense.append(_dense(path, dense[-1][0].shape[0] if dense else hidden))
        elif kind == _MASK:
            mask = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
            tasks = mask.get("skiplist_tasks") or ["document"]
            tasks = [tasks] if isinstance(tasks, str) else tasks
            if set(tasks) - {"document"} or mask.get("keep_only_token_ids") is not None:
                raise CheckpointError(f"{path}: MultiVectorMask with skiplist_tasks {tasks} / keep_only_token_ids "
                                      "is not supported (medcolbert skips tokens in documents only)")
            skiplist = list(mask.get("skiplist_words") or [])
        elif kind == _NORMALIZE:
            continue
        else:
            raise CheckpointError(f"{folder / MODULES_FILE}: module {module.get('type')} ({module.get('path')}) is not "
                                  "one medcolbert reads (Transformer, Dense, MultiVectorMask, Normalize)")
    layout = Layout("pylate" if pylate else "sentence-transformers", backbone)
    if dense:
        layout.projection, layout.bias = _fold(dense)
        layout.notes.append(f"{len(dense)} Dense module(s) folded into one {tuple(layout.projection.shape)} projection"
                            if len(dense) > 1 else f"Dense {tuple(layout.projection.shape)}")
    layout.config = (_pylate_config(st_config, module_config, skiplist) if pylate
                     else _st_config(st_config, module_config, skiplist, backbone))
    own = st_config.get("medcolbert")
    if isinstance(own, dict):  # written by medcolbert: its own settings (the pooled head's weight above all)
        layout.config.update({k: own[k] for k in _OWN_KEYS if k in own})
        layout.notes.append("medcolbert settings read back")
    return layout


def _pylate_config(st: dict, module: dict, skiplist: list[str] | None) -> dict[str, Any]:
    """ModelConfig values for PyLate's settings (its defaults where the file leaves one out)."""
    get = lambda key: st[key] if st.get(key) is not None else PYLATE_DEFAULTS[key]  # noqa: E731
    words = st.get("skiplist_words", skiplist if skiplist is not None else list(string.punctuation))
    prompts = st.get("prompts") or {}
    return {"query_token_id": get("query_prefix"), "doc_token_id": get("document_prefix"), "marker_style": "insert",
            "query_maxlen": int(get("query_length")), "doc_maxlen": int(get("document_length")),
            "query_augment_len": None, "query_expansion": bool(get("do_query_expansion")),
            "attend_to_mask_tokens": bool(get("attend_to_expansion_tokens")) and bool(get("do_query_expansion")),
            "mask_punctuation": bool(words), "skiplist_words": tuple(words),
            "query_prompt": prompts.get("query") or "", "document_prompt": prompts.get("document") or ""}


def _st_config(st: dict, module: dict, skiplist: list[str] | None, backbone: Path) -> dict[str, Any]:
    """ModelConfig values for a Sentence Transformers 6 MultiVectorEncoder's settings."""
    limit = module.get("max_seq_length") or _max_positions(backbone)
    prompts = st.get("prompts") or {}
    expansion = module.get("query_expansion")
    values: dict[str, Any] = {"query_token_id": "", "doc_token_id": "", "marker_style": "insert",
                              "query_prompt": prompts.get("query") or "", "document_prompt": prompts.get("document") or "",
                              "doc_maxlen": int(module.get("document_length") or limit),
                              "mask_punctuation": bool(skiplist), "skiplist_words": tuple(skiplist or ())}
    if expansion is None:
        values.update(query_expansion=False, query_augment_len=None, query_maxlen=int(module.get("query_length") or limit))
    else:
        if expansion.get("token") not in (None, "[MASK]", "<mask>"):
            raise CheckpointError(f"{backbone / ST_MODULE_CONFIG}: query_expansion token {expansion.get('token')!r} is not "
                                  "supported (medcolbert expands with the tokenizer's mask token)")
        length = int(expansion["length"])
        fixed = expansion.get("strategy", "fixed") == "fixed"
        values.update(query_expansion=True, attend_to_mask_tokens=bool(expansion.get("attend", False)),
                      query_augment_len=None if fixed else length,
                      query_maxlen=length if fixed else int(module.get("query_length") or limit))
    return values


def _hidden_size(backbone: Path) -> int | None:
    config = backbone / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{backbone}: no config.json; the Transformer module is not a Hugging Face model folder")
    data = _read_json(config)
    return data.get("hidden_size") or data.get("d_model")


def _max_positions(backbone: Path) -> int:
    """The backbone's usable length: its tokenizer's limit, at most its position table (512 if neither says)."""
    data = _read_json(backbone / "config.json")
    positions = int(data.get("max_position_embeddings") or 512)
    if data.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa-style position ids start after the padding index
    tok = backbone / "tokenizer_config.json"
    limit = _read_json(tok).get("model_max_length") if tok.is_file() else None
    return int(min(positions, limit)) if isinstance(limit, (int, float)) and limit > 0 else positions


# The medcolbert settings no other library knows; kept in config_sentence_transformers.json so that medcolbert
# reads a model back as it wrote it (the pooled head above all).
_OWN_KEYS = ("dense_weight", "dense_length_power", "query_augment_len", "query_maxlen")


def write_sentence_transformers(folder: Path, config: Any, dense: dict[str, torch.Tensor], hidden: int, pylate: bool,
                                extra: dict[str, Any]) -> None:
    """The modules.json side of a PyLate or Sentence Transformers 6 folder (the backbone files are already there).

    PyLate (and Sentence Transformers reading PyLate's files) pads every query to `query_length`, so it is given
    medcolbert's augmentation length: queries of up to that many tokens encode alike, longer ones it cuts there.
    Sentence Transformers 6's own layout says "expand to the augmentation length, let longer queries run to
    query_length" (strategy "min"), which is medcolbert's rule exactly.
    """
    skiplist = (list(config.skiplist_words) if config.skiplist_words is not None else list(string.punctuation)) \
        if config.mask_punctuation else []
    (folder / "1_Dense").mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in dense.items()}, str(folder / "1_Dense" / "model.safetensors"))
    dim = int(dense["linear.weight"].shape[0])
    dense_config = {"in_features": hidden, "out_features": dim, "bias": "linear.bias" in dense,
                    "activation_function": "torch.nn.modules.linear.Identity"}
    own = {"medcolbert": {**{k: getattr(config, k) for k in _OWN_KEYS}, **extra}}
    if pylate:
        modules = [("", "sentence_transformers.models.Transformer"), ("1_Dense", "pylate.models.Dense.Dense")]
        module_config = {"max_seq_length": config.doc_maxlen, "do_lower_case": False}
        st_config = {"prompts": {"query": config.query_prompt, "document": config.document_prompt},
                     "default_prompt_name": None, "similarity_fn_name": "MaxSim",
                     "query_prefix": config.query_token_id, "document_prefix": config.doc_token_id,
                     "query_length": config.augment_len if config.query_expansion else config.query_maxlen,
                     "document_length": config.doc_maxlen,
                     "attend_to_expansion_tokens": config.attend_to_mask_tokens, "skiplist_words": skiplist,
                     "do_query_expansion": config.query_expansion, **own}
        dense_config["use_residual"] = False
    else:
        modules = [("", "sentence_transformers.base.modules.transformer.Transformer"),
                   ("1_Dense", "sentence_transformers.base.modules.dense.Dense"),
                   ("2_MultiVectorMask", "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"),
                   ("3_Normalize", "sentence_transformers.base.modules.normalize.Normalize")]
        expansion = None
        if config.query_expansion:
            fixed = config.query_augment_len is None or config.augment_len >= config.query_maxlen
            expansion = {"strategy": "fixed" if fixed else "min", "attend": config.attend_to_mask_tokens,
                         "length": config.augment_len}
        module_config = {"transformer_task": "feature-extraction",
                         "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                         "module_output_name": "token_embeddings", "query_length": config.query_maxlen,
                         "document_length": config.doc_maxlen, "query_expansion": expansion}
        # Sentence Transformers prepends prompts as text: a marker token becomes the prompt, and the saved
        # tokenizer keeps it whole (marked special), which is where colbert-ai and PyLate put it too.
        st_config = {"model_type": "MultiVectorEncoder", "default_prompt_name": None, "similarity_fn_name": "maxsim",
                     "prompts": {"query": config.query_token_id + config.query_prompt,
                                 "document": config.doc_token_id + config.document_prompt}, **own}
        dense_config.update(module_input_name="token_embeddings", module_output_name="token_embeddings")
        (folder / "2_MultiVectorMask").mkdir()
        _write_json(folder / "2_MultiVectorMask" / "config.json",
                    {"skiplist_words": skiplist, "skiplist_tasks": ["document"], "keep_only_token_ids": None})
        (folder / "3_Normalize").mkdir()
        _write_json(folder / "3_Normalize" / "config.json",
                    {"module_input_name": "token_embeddings", "module_output_name": "token_embeddings"})
    _write_json(folder / "1_Dense" / "config.json", dense_config)
    _write_json(folder / MODULES_FILE, [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(modules)])
    _write_json(folder / ST_MODULE_CONFIG, module_config)
    _write_json(folder / ST_CONFIG_FILE, st_config)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
