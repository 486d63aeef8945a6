"""What one training step computes for the compared methods: query passes, target rows, the losses.

`contrastive_step` runs the whole batch in one query forward and one target forward; GradCache
(`gradcache.py`) runs the same passes chunk by chunk. Both read the same pieces from here, so the two
paths cannot drift apart. Under torch.distributed the losses are those of the global batch
(`distributed.py`); in one process that code reduces to plain InfoNCE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from ..data.bench import answer_first
from ..model import Output
from ..processing import Row
from .distributed import global_info_nce, step_losses, world

if TYPE_CHECKING:
    from .trainer import TrainConfig

StepFn = Callable[[torch.nn.Module, list, "TrainConfig", int], dict]


class LazyRows:
    """Rows built on indexing, so GradCache holds one chunk's pixels at a time, not the whole batch's
    (1,024 images of 448 px are about 5 GB of patches); the plain step indexes them all at once."""

    def __init__(self, build: Callable[[int], Row], n: int):
        self.build, self.n = build, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, rows: slice) -> list[Row]:
        return [self.build(i) for i in range(*rows.indices(self.n))]


@dataclass
class QueryPass:
    """One query-side forward of a step: its rows (one per example), and what is read from it."""
    rows: LazyRows
    detach: bool  # no gradient reaches the think-token states
    emb: bool     # the query embeddings come from this pass
    cot: bool     # the CoT token losses come from this pass
    oracle: bool = False  # the oracle view's embeddings (gold CoT in the prompt) come from this pass


def query_passes(model, examples, cfg: TrainConfig, step: int) -> list[QueryPass]:
    """The query forwards of this step's schedule (`joint`: one pass; `detach`: a CoT pass and a detached
    embedding pass; `staged`: the CoT pass alone, later the detached embedding pass alone), and with
    distillation the oracle view's pass."""
    k_max = model.config.think_tokens
    think = cfg.think_budget(step, k_max)
    train_cot = cfg.cot_weight > 0
    if cfg.schedule != "joint" and not (think and train_cot):
        raise ValueError(f"schedule {cfg.schedule!r} needs think tokens and a CoT loss (cot_weight > 0)")
    # Nested, every budget: a pass read for embeddings lays out all K think tokens and reads E at each budget,
    # its CoT branch at the drawn one (`think`); a pass without embeddings needs the drawn budget's tokens only.
    every = cfg.nested_think and cfg.nested_every_budget and k_max > 0
    budgets = tuple(cfg.nested_budgets(k_max)[:-1]) if every else ()

    def rows(with_cot: bool, cot_in_prompt: bool = False, emb: bool = True) -> LazyRows:
        """emb: the pass's query embeddings are read."""
        layout = dict(think=k_max, budgets=budgets, cot_think=think) if every and emb else dict(think=think)

        def build(i: int) -> Row:
            ex = examples[i]
            cot = answer_first(ex.cot) if cfg.answer_first_cot else ex.cot
            return model.query_row(ex.query, f"{ex.task} query", cot=cot, train_cot=with_cot,
                                   cot_in_prompt=cot_in_prompt, **layout)
        return LazyRows(build, len(examples))

    if cfg.cot_only(step):  # staged warm-up: no embeddings, no targets
        return [QueryPass(rows(True, emb=False), detach=False, emb=False, cot=True)]
    oracle = ([QueryPass(rows(False, cot_in_prompt=True, emb=False), detach=False, emb=False, cot=False, oracle=True)]
              if cfg.distill_weight else [])
    if cfg.schedule == "joint":
        return [QueryPass(rows(train_cot), detach=False, emb=True, cot=True)] + oracle
    cot = [QueryPass(rows(True, emb=False), detach=False, emb=False, cot=True)] if cfg.schedule == "detach" else []
    return cot + [QueryPass(rows(False), detach=True, emb=True, cot=False)] + oracle


def length_groups(lengths: list[int], max_groups: int = 3, overhead: int = 64) -> list[list[int]]:
    """Indices split into at most max_groups groups of similar length, minimising the padded tokens
    (sum over groups of size x longest) plus `overhead` tokens' worth of cost per extra forward."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    # cuts only pay off between different lengths: the search runs over the distinct ones (a few dozen
    # in a step, however large the batch), ends[u] = rows with one of the u shortest lengths
    ends = [j for j in range(1, len(order) + 1) if j == len(order) or lengths[order[j]] != lengths[order[j - 1]]]
    n = len(ends)
    bound = [0] + ends
    # best[g][u]: cheapest cost of the u shortest lengths in g groups; cut[g][u]: where its last group starts
    best = [[0.0] + [float("inf")] * n] + [[float("inf")] * (n + 1) for _ in range(max_groups)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    for g in range(1, max_groups + 1):
        for u in range(1, n + 1):
            for t in range(u):
                cost = best[g - 1][t] + (bound[u] - bound[t]) * lengths[order[bound[u] - 1]] + overhead
                if cost < best[g][u]:
                    best[g][u], cut[g][u] = cost, t
    g = min(range(1, max_groups + 1), key=lambda k: best[k][n]) if n else 1
    groups, u = [], n
    while u > 0:
        groups.append(order[bound[cut[g][u]]:bound[u]])
        u, g = cut[g][u], g - 1
    return groups[::-1]


def forward_by_length(model, rows: list[Row], max_groups: int = 3, **kwargs) -> Output:
    """model(rows) in up to max_groups forwards of rows of similar length, so short rows are not padded to
    the longest (a step's targets mix short texts and longer images: one padded batch was 57% padding).
    Embeddings come back in row order; the per-token CoT losses group by group (only their mean is used)."""
    outs, order = [], []
    for group in length_groups([len(r) for r in rows], max_groups):
        outs.append(model(model.make_batch([rows[i] for i in group]), **kwargs))
        order += group
    back = torch.argsort(torch.tensor(order, device=outs[0].embeddings.device))
    emb = torch.cat([o.embeddings for o in outs])[back]
    nested = torch.cat([o.budget_embeddings for o in outs])[back] if outs[0].budget_embeddings is not None else None
    losses = [o.cot_token_loss for o in outs if o.cot_token_loss is not None]
    token_loss = torch.cat(losses) if losses else None
    return Output(emb, None if token_loss is None else token_loss.mean(), token_loss, nested)


def run_query_passes(model, passes: list[QueryPass], rows: slice = slice(None), max_groups: int = 3):
    """(query embeddings or None, per-token CoT losses or None, oracle-view embeddings or None) of `rows`
    of the examples, each pass in up to max_groups forwards (forward_by_length). The query embeddings are
    (B, D), or (B, n, D) when read at n nested budgets (see `query_info_nce`)."""
    emb = cot = oracle = None
    for p in passes:
        out = forward_by_length(model, p.rows[rows], max_groups, detach_think=p.detach)
        if p.emb:
            emb = out.embeddings if out.budget_embeddings is None else out.budget_embeddings
        if p.cot:
            cot = out.cot_token_loss
        if p.oracle:
            oracle = out.embeddings
    return emb, cot, oracle


def target_rows(model, examples, cfg: TrainConfig) -> tuple[list[str], LazyRows, list[int]]:
    """(keys, rows, positive): each example's target and hard negatives, identical targets encoded once;
    positive[i] is the index of example i's target."""
    keys, items, positive = [], [], []
    for ex in examples:
        rest = [i for i in range(len(ex.candidates)) if i != ex.target and i not in ex.hard_negatives]
        wanted = [ex.target] + (list(ex.hard_negatives) + rest)[: cfg.hard_negatives]
        for j, c in enumerate(wanted):
            key = f"{ex.task}/{ex.cand_ids[c]}"
            if key not in keys:  # identical targets are encoded once and never act as negatives
                keys.append(key)
                items.append((ex.candidates[c], f"{ex.task} candidate"))
            if j == 0:
                positive.append(keys.index(key))
    return keys, LazyRows(lambda i: model.document_row(*items[i]), len(items)), positive


def query_info_nce(q_emb: torch.Tensor, docs: torch.Tensor, keys: list, positive: list[int],
                   temperature: float) -> torch.Tensor:
    """The contrastive loss of (B, D) query embeddings, or of (B, n, D) ones read at n nested think budgets:
    then the mean over budgets, each budget's queries against the same targets."""
    if q_emb.dim() == 2:
        return global_info_nce(q_emb, docs, keys, positive, temperature)
    n = q_emb.shape[1]
    return global_info_nce(q_emb.flatten(0, 1), docs, keys, [p for p in positive for _ in range(n)], temperature)


def cot_weight(cfg: TrainConfig, step: int) -> float:
    """The CoT loss's weight: 1 in the staged warm-up (the CoT loss alone), else lambda."""
    return 1.0 if cfg.cot_only(step) else cfg.cot_weight


def distill_loss(query: torch.Tensor, oracle: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(oracle || query) between the two views' softmax distributions over the step's targets: the query
    learns the oracle's ranking, at InfoNCE's scale (same temperature)."""
    log_q = torch.log_softmax(query @ docs.T / temperature, -1)
    log_o = torch.log_softmax(oracle @ docs.T / temperature, -1)
    return (log_o.exp() * (log_o - log_q)).sum(-1).mean()


def contrastive_step(model, examples, cfg: TrainConfig, step: int = 0) -> dict:
    """Query rows (with their CoT where the method trains one) and de-duplicated target rows.

    Queries and targets go through separate forwards: padded together, every short target row would
    be padded to the longest query (think tokens + CoT), doubling the cost of a step."""
    q_emb, cot, oracle = run_query_passes(model, query_passes(model, examples, cfg, step))
    con = objective = None
    extra = {}
    if q_emb is not None:
        keys, d_rows, positive = target_rows(model, examples, cfg)
        docs = forward_by_length(model, d_rows[:]).embeddings
        con = objective = query_info_nce(q_emb, docs, keys, positive, cfg.temperature)
        if oracle is not None:
            if world()[1] > 1:
                raise ValueError("distill_weight runs in one process (its loss is not reduced across ranks)")
            # The oracle view learns to embed like the explicit-CoT oracle; the query's embedding follows it.
            extra["oracle_contrastive"] = global_info_nce(oracle, docs, keys, positive, cfg.temperature)
            teacher = oracle.detach()
            if q_emb.dim() == 3:  # nested budgets: every budget learns the oracle view's ranking
                teacher, q_emb = teacher.repeat_interleave(q_emb.shape[1], 0), q_emb.flatten(0, 1)
            extra["distill"] = distill_loss(q_emb, teacher, docs, cfg.temperature)
            objective = con + extra["oracle_contrastive"] + cfg.distill_weight * extra["distill"]
    n_cot = 0 if cot is None else cot.numel()
    losses = step_losses(objective, None if cot is None else cot.mean(), n_cot, cot_weight(cfg, step))
    if extra:  # "contrastive" stays the query embeddings' own InfoNCE (the mean over nested budgets)
        losses.update(contrastive=con, **extra)
    return losses
