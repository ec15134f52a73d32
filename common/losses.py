"""Training losses. The bi-encoder's take a batch of embeddings; the group losses at the end take
scores, and serve the cross-encoder (and margin_mse).

Every bi-encoder loss takes the queries `q` [B, D] and the documents `d` [B * G, D] laid out in groups:
example i owns rows i*G .. i*G+G-1 of `d`, its positive first, then its G-1 hard negatives. The
score of a pair is the dot product (the cosine when the encoder normalises). Under accumulation
or several ranks the loss sees the whole effective batch, gathered before it is called.
"""
import torch
import torch.nn.functional as F

NAMES = ("infonce", "margin_mse", "contrastive", "cosine")


def _groups(q, d):
    if d.shape[0] % q.shape[0]:
        raise ValueError(f"{d.shape[0]} documents do not split into groups for {q.shape[0]} queries")
    return d.shape[0] // q.shape[0]


def positive_rows(q, d):
    """Row of each example's positive in `d`."""
    return torch.arange(q.shape[0], device=q.device) * _groups(q, d)


def infonce(q, d, temperature=0.05, symmetric=False, mask=None):
    """Cross-entropy of each query over every document in the batch, its positive the target
    (MultipleNegativesRankingLoss; temperature 0.05 is its scale 20). `symmetric` averages in
    the passage->query direction: each positive over every query of the batch. `mask` [queries,
    documents] (common.batching.false_negatives): pairs left out of both directions' softmax."""
    target = positive_rows(q, d)
    logits = q @ d.T / temperature
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    loss = F.cross_entropy(logits, target)
    if symmetric:
        backward = d[target] @ q.T / temperature
        if mask is not None:
            backward = backward.masked_fill(mask[:, target].T, float("-inf"))
        loss = (loss + F.cross_entropy(backward, torch.arange(q.shape[0], device=q.device))) / 2
    return loss


def pair_scores(q, d):
    """[B, G]: each query against the documents of its own group."""
    group = _groups(q, d)
    return (q.unsqueeze(1) * d.view(q.shape[0], group, -1)).sum(-1)


def margin_mse(q, d, teacher, temperature=1.0):
    """margin_mse_scores of the bi-encoder's scores of each group, divided by `temperature`. A
    cosine margin is at most 2 while a cross-encoder's logit margins run to 10 or more, so at
    temperature 1 the student is pushed to the cosine's limits instead of matching the teacher;
    train_encoder.py passes infonce's temperature (0.05: margins up to 40)."""
    return margin_mse_scores(pair_scores(q, d) / temperature, teacher)


def _pairs(q, d, mask=None):
    """Cosine of every (query, document of its group), with label 1 for the positive and 0 for the
    negatives, and each pair's weight (0 for a pair `mask` leaves out). Without hard negatives each
    query's negative is the next example's positive."""
    group = _groups(q, d)
    cos = F.cosine_similarity(q.unsqueeze(1), d.view(q.shape[0], group, -1), dim=-1)
    keep = torch.ones_like(cos)
    if cos.shape[1] == 1:
        cos = torch.cat([cos, F.cosine_similarity(q, torch.roll(d, -1, dims=0), dim=-1).unsqueeze(1)], dim=1)
        keep = torch.ones_like(cos)
        if mask is not None:  # the next example's positive may be relevant to this query too
            rows = torch.arange(q.shape[0], device=q.device)
            keep[:, 1] = (~mask[rows, (rows + 1) % q.shape[0]]).float()
    labels = torch.zeros_like(cos)
    labels[:, 0] = 1
    return cos, labels, keep


def contrastive(q, d, margin=0.5, mask=None):
    """Pairwise contrastive loss on the cosine distance (Hadsell et al. 2006, as in
    sentence-transformers' ContrastiveLoss): positives pulled to distance 0, negatives pushed
    beyond `margin`; 0.5 * (y * dist^2 + (1 - y) * relu(margin - dist)^2), averaged over pairs."""
    cos, labels, keep = _pairs(q, d, mask)
    dist = 1 - cos
    per_pair = 0.5 * (labels * dist.pow(2) + (1 - labels) * F.relu(margin - dist).pow(2))
    return (per_pair * keep).sum() / keep.sum()


def cosine(q, d, targets=None, mask=None):
    """MSE of the cosine of each pair onto its score label (CosineSimilarityLoss); by default the
    positive's label is 1 and a negative's 0."""
    cos, labels, keep = _pairs(q, d, mask)
    return ((cos - (labels if targets is None else targets)).pow(2) * keep).sum() / keep.sum()


def in_batch_accuracy(q, d, mask=None):
    """Fraction of queries whose best-scoring document in the whole batch (less `mask`'s) is their positive."""
    scores = q @ d.T if mask is None else (q @ d.T).masked_fill(mask, float("-inf"))
    return (scores.argmax(1) == positive_rows(q, d)).float().mean()


# ---- group losses: scores [B, G], each row one query's positive (column 0) then G-1 negatives.
# The cross-encoder's losses, and the bi-encoder's margin_mse through pair_scores.
RERANKER_NAMES = ("listwise", "bce")
DISTILL_NAMES = ("margin_mse", "kl")


def margin_mse_scores(student, teacher):
    """MSE between the student's margins s(q,p) - s(q,n) and the teacher's, for every hard
    negative n (Hofstätter et al. 2020). `teacher` [B, G] holds the teacher's scores of each group."""
    if student.shape[1] < 2:
        raise ValueError("margin_mse needs at least one hard negative per example")
    return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def listwise(scores):
    """Cross-entropy of each group with its positive the target: the localized contrastive loss
    (Gao et al. 2021) of a cross-encoder over one positive and its hard negatives."""
    return F.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))


def bce(scores, pos_weight=0.0):
    """Pointwise binary cross-entropy: positives 1, negatives 0. A group holds one positive and
    G-1 negatives, so pos_weight 0 means G-1: both classes weigh the same in total."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1
    weight = torch.tensor(pos_weight or scores.shape[1] - 1, dtype=scores.dtype, device=scores.device)
    return F.binary_cross_entropy_with_logits(scores, labels, pos_weight=weight)


def kl_distill(student, teacher, temperature=1.0):
    """KL(teacher || student) between the two score distributions over each group, scaled by
    temperature^2 so the gradient size does not depend on the temperature (Hinton et al. 2015)."""
    return F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                    log_target=True, reduction="batchmean") * temperature ** 2


def group_accuracy(scores):
    """Fraction of groups whose positive scores above every negative."""
    return (scores.argmax(1) == 0).float().mean()
