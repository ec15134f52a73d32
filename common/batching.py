"""Training examples and the batches they are grouped into.

One example per query: an epoch visits each training query once, its positive drawn among its
labelled positives, so a query with forty positives weighs what a query with one does.

An in-batch negative is another example's document. If that document is in fact relevant to the
query (two examples sharing a positive, or one query appearing twice), the loss pushes a right
answer away, so batches are built to never hold such a pair, or, where labels overlap so much that
such batches cannot fill (a few dozen queries with forty relevant documents each), to hold them with
each such document masked out of that query's loss (`false_negatives`).
"""
import random
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Example:
    qid: str
    query: str
    positives: tuple  # doc ids labelled relevant to the query, in file order; one is drawn per epoch
    negatives: list = field(default_factory=list)  # mined hard-negative doc ids, best first
    teacher: dict = field(default_factory=dict)  # doc id -> teacher score, for margin_mse
    length: int = 0  # characters of query + first positive, for length bucketing


def sample_groups(examples, k, seed):
    """Each example's group for one epoch: [positive, k hard negatives]. The positive is drawn among
    the example's positives; the negatives from its mined list (fewer when the list is short, then
    topped up by repeating it, so every group has the same size)."""
    rng = random.Random(seed)
    out = []
    for ex in examples:
        positive = ex.positives[0] if len(ex.positives) == 1 else rng.choice(ex.positives)
        pool = ex.negatives
        if k == 0:
            out.append([positive])
        elif not pool:
            raise ValueError(f"query {ex.qid} has no negatives to draw {k} from; drop it, or train with k=0")
        elif len(pool) >= k:
            out.append([positive, *rng.sample(pool, k)])
        else:
            out.append([positive, *(pool[i % len(pool)] for i in range(k))])
    return out


def make_batches(examples, groups, batch_size, seed, bucket=True, bucket_batches=50, exclusive=True):
    """Indices of `examples` in batches of `batch_size`, in training order; groups[i] is example i's
    [positive, negatives...] of this epoch (sample_groups).

    With `exclusive` (the bi-encoder's case) no batch holds the same query text twice, or a
    document that is labelled relevant to another query of the batch; with exclusive="queries" only
    the first (the loss then masks such documents: false_negatives); a cross-encoder scores each
    pair on its own, has no in-batch negatives, and passes exclusive=False. With `bucket`, examples
    are sorted by length within windows of `bucket_batches` batches, so a batch pads to texts of
    similar length, and the batches are then shuffled. Examples left over in incomplete batches
    wait for the next epoch's draw.
    """
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    if bucket:
        window = batch_size * bucket_batches
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: examples[i].length)]
    batches, open_batches = [], []
    for i in order:
        ex = examples[i]
        docs, relevant = set(groups[i]), set(ex.positives)
        for b in open_batches:
            if exclusive and (ex.query in b["queries"] or exclusive is True and (docs & b["relevant"]
                                                                                 or relevant & b["docs"])):
                continue
            b["items"].append(i)
            b["queries"].add(ex.query)
            b["docs"] |= docs
            b["relevant"] |= relevant
            if len(b["items"]) == batch_size:
                open_batches.remove(b)
                batches.append(b["items"])
            break
        else:
            b = {"items": [i], "queries": {ex.query}, "docs": docs, "relevant": relevant}
            if batch_size == 1:
                batches.append(b["items"])
            else:
                open_batches.append(b)
    if bucket:
        rng.shuffle(batches)
    return batches


def batches_fill(examples, groups, batch_size, seed, bucket=True, share=0.5):
    """Whether batches that hold no in-batch false negative (exclusive=True) take in at least `share`
    of the examples an epoch: where labels overlap heavily they cannot, and the epoch starves."""
    batches = make_batches(examples, groups, batch_size, seed, bucket)
    return len(batches) * batch_size >= share * len(examples), len(batches) * batch_size


def false_negatives(batch, groups):
    """[queries, documents] bool: True where a document of the batch (the groups concatenated, as the
    loss sees them) is labelled relevant to a query other than as its own positive: masked out of
    that query's loss, so the loss never pushes a right answer away."""
    columns = [d for g in groups for d in g]
    mask = np.zeros((len(batch), len(columns)), dtype=bool)
    for i, ex in enumerate(batch):
        relevant = set(ex.positives)
        mask[i] = [d in relevant for d in columns]
        mask[i, i * len(groups[i])] = False  # its own positive
    return mask
