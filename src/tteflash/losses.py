"""Training objectives: InfoNCE on the embedding token, token-level NLL on the CoT."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, temperature: float,
             doc_keys: Sequence | None = None, symmetric: bool = False) -> torch.Tensor:
    """Query -> document InfoNCE over every document in the batch (in-batch + hard negatives).

    queries (B, D) and docs (M, D) are unit vectors; positive[i] is the column of query i's target.
    doc_keys: an identity per document; a document equal to query i's positive (same key, other
    column) is no negative for it, so duplicated targets (common with small label sets) are masked.
    symmetric: add the document -> query direction over the positive columns.
    """
    logits = queries @ docs.T / temperature
    if doc_keys is not None:
        keys = list(doc_keys)
        pos_keys = [keys[int(p)] for p in positive]
        dup = torch.tensor([[k == pk for k in keys] for pk in pos_keys], device=logits.device)
        dup[torch.arange(len(positive)), positive] = False
        logits = logits.masked_fill(dup, torch.finfo(logits.dtype).min)
    loss = F.cross_entropy(logits, positive)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits[:, positive].T, torch.arange(len(positive), device=logits.device)))
    return loss


def cot_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per CoT token."""
    return F.cross_entropy(logits.float(), labels)
