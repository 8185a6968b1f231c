"""Training losses over a score matrix: contrastive softmax cross-entropy and KL distillation from a teacher."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def contrastive_loss(scores: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of each query's positive among its row of scores [queries, documents]."""
    return F.cross_entropy(scores.float() / temperature, targets)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over each query's own candidates, both [queries, candidates] of raw scores."""
    if student.shape != teacher.shape:
        raise ValueError(f"student scores {tuple(student.shape)} and teacher scores {tuple(teacher.shape)} differ")
    target = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(F.log_softmax(student.float(), dim=-1), target, reduction="batchmean", log_target=True)
