"""Bi-encoder training losses over a batch of embeddings.

Every loss takes the queries `q` [B, D] and the documents `d` [B * G, D] laid out in groups:
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


def infonce(q, d, temperature=0.05, symmetric=False):
    """Cross-entropy of each query over every document in the batch, its positive the target
    (MultipleNegativesRankingLoss; temperature 0.05 is its scale 20). `symmetric` averages in
    the passage->query direction: each positive over every query of the batch."""
    target = positive_rows(q, d)
    loss = F.cross_entropy(q @ d.T / temperature, target)
    if symmetric:
        backward = d[target] @ q.T / temperature
        loss = (loss + F.cross_entropy(backward, torch.arange(q.shape[0], device=q.device))) / 2
    return loss


def pair_scores(q, d):
    """[B, G]: each query against the documents of its own group."""
    group = _groups(q, d)
    return (q.unsqueeze(1) * d.view(q.shape[0], group, -1)).sum(-1)


def margin_mse(q, d, teacher):
    """MSE between the student's margins s(q,p) - s(q,n) and the teacher's, for every hard
    negative n (Hofstätter et al. 2020). `teacher` [B, G] holds the teacher's scores of each group."""
    student = pair_scores(q, d)
    if student.shape[1] < 2:
        raise ValueError("margin_mse needs at least one hard negative per example")
    return F.mse_loss(student[:, :1] - student[:, 1:], teacher[:, :1] - teacher[:, 1:])


def _pairs(q, d):
    """Cosine of every (query, document of its group), with label 1 for the positive and 0 for the
    negatives. Without hard negatives each query's negative is the next example's positive."""
    cos = F.cosine_similarity(q.unsqueeze(1), d.view(q.shape[0], _groups(q, d), -1), dim=-1)
    if cos.shape[1] == 1:
        cos = torch.cat([cos, F.cosine_similarity(q, torch.roll(d, -1, dims=0), dim=-1).unsqueeze(1)], dim=1)
    labels = torch.zeros_like(cos)
    labels[:, 0] = 1
    return cos, labels


def contrastive(q, d, margin=0.5):
    """Pairwise contrastive loss on the cosine distance (Hadsell et al. 2006, as in
    sentence-transformers' ContrastiveLoss): positives pulled to distance 0, negatives pushed
    beyond `margin`; 0.5 * (y * dist^2 + (1 - y) * relu(margin - dist)^2), averaged over pairs."""
    cos, labels = _pairs(q, d)
    dist = 1 - cos
    return (0.5 * (labels * dist.pow(2) + (1 - labels) * F.relu(margin - dist).pow(2))).mean()


def cosine(q, d, targets=None):
    """MSE of the cosine of each pair onto its score label (CosineSimilarityLoss); by default the
    positive's label is 1 and a negative's 0."""
    cos, labels = _pairs(q, d)
    return F.mse_loss(cos, labels if targets is None else targets)


def in_batch_accuracy(q, d):
    """Fraction of queries whose best-scoring document in the whole batch is their positive."""
    return ((q @ d.T).argmax(1) == positive_rows(q, d)).float().mean()
