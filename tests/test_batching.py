"""Example, sample_groups and make_batches of common/batching.py."""
import random
import statistics

import pytest

from common.batching import Example, make_batches, sample_groups


def ex(qid, query, positive, positives=None, negatives=None, length=0):
    """An example; unless given, its one mined negative is a document of its own."""
    others = sorted(set(positives) - {positive}) if positives is not None else []
    return Example(qid=qid, query=query, positives=(positive, *others),
                   negatives=list(negatives) if negatives is not None else [f"neg-{qid}"], length=length)


def plain(n, negs_per=3, lengths=None):
    """n examples with distinct queries and documents: no two can conflict."""
    return [ex(f"q{i}", f"query {i}", f"p{i}", negatives=[f"n{i}_{j}" for j in range(negs_per)],
               length=lengths[i] if lengths else 0) for i in range(n)]


def conflicted():
    """Filler examples plus deliberate conflicts: a repeated query text, a shared positive, a doc that is
    relevant to one query without being its chosen positive, and a hard negative that is another's positive."""
    examples = plain(14)
    examples += [
        ex("dupA", "same text", "dA"),
        ex("dupB", "same text", "dB"),                               # same query text as dupA
        ex("shareA", "share a", "shared"),
        ex("shareB", "share b", "shared"),                           # same positive as shareA
        ex("multi", "multi", "m1", positives={"m1", "m2"}),
        ex("other", "other", "m2"),                                  # its positive is relevant to `multi`
        ex("hardneg", "hardneg", "h0", negatives=["target_pos"]),
        ex("target", "target", "target_pos"),                        # hardneg's negative is its positive
    ]
    conflicts = [("dupA", "dupB"), ("shareA", "shareB"), ("multi", "other"), ("hardneg", "target")]
    return examples, conflicts


def check_batch(examples, groups, batch):
    queries = [examples[i].query for i in batch]
    assert len(queries) == len(set(queries)), f"repeated query text in {batch}"
    for i in batch:
        docs = set(groups[i])
        for j in batch:
            if i != j:
                assert not docs & set(examples[j].positives), \
                    f"{examples[i].qid}'s docs {docs & set(examples[j].positives)} are relevant to {examples[j].qid}"


@pytest.mark.parametrize("bucket", [True, False])
def test_no_conflicting_pair_in_a_batch(bucket):
    examples, conflicts = conflicted()
    index = {e.qid: i for i, e in enumerate(examples)}
    together_possible = {c: 0 for c in conflicts}  # both sides scheduled in the same epoch
    for seed in range(300):
        groups = sample_groups(examples, 1, seed)
        batches = make_batches(examples, groups, 4, seed, bucket=bucket, bucket_batches=2)
        used = set()
        for batch in batches:
            check_batch(examples, groups, batch)
            used |= set(batch)
        for a, b in conflicts:
            together_possible[(a, b)] += index[a] in used and index[b] in used
    # the check is not vacuous: each conflicting pair was often placed in the same epoch (separately)
    assert all(n > 100 for n in together_possible.values()), together_possible


def test_duplicate_queries_never_share_a_batch():
    # two examples with the same query and batch_size 2: they can never share a batch
    examples = [ex("a", "same", "da"), ex("b", "same", "db"), ex("c", "c", "dc"), ex("d", "d", "dd")]
    for seed in range(50):
        for batch in make_batches(examples, sample_groups(examples, 0, seed), 2, seed, bucket=False):
            assert {examples[i].query for i in batch} != {"same"}
            assert len(batch) == 2


@pytest.mark.parametrize("bucket", [True, False])
def test_batch_sizes_and_no_repeats(bucket):
    examples, _ = conflicted()
    for seed in range(50):
        batches = make_batches(examples, sample_groups(examples, 2, seed), 4, seed, bucket=bucket, bucket_batches=2)
        flat = [i for b in batches for i in b]
        assert all(len(b) == 4 for b in batches)
        assert len(flat) == len(set(flat))
        assert all(0 <= i < len(examples) for i in flat)
    # no conflicts and a length divisible by batch_size: every example is used, once
    examples = plain(40, lengths=[random.Random(1).randrange(10, 500) for _ in range(40)])
    for seed in range(20):
        batches = make_batches(examples, sample_groups(examples, 2, seed), 8, seed, bucket=bucket, bucket_batches=2)
        assert len(batches) == 5 and all(len(b) == 8 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(40))


def test_batch_size_one():
    examples = plain(5)
    batches = make_batches(examples, sample_groups(examples, 0, 0), 1, 0)
    assert sorted(batches) == [[i] for i in range(5)]


@pytest.mark.parametrize("bucket", [True, False])
def test_same_seed_same_batches(bucket):
    examples = plain(64, lengths=list(range(64)))
    groups = sample_groups(examples, 2, 0)
    first = make_batches(examples, groups, 8, 7, bucket=bucket, bucket_batches=4)
    assert make_batches(examples, groups, 8, 7, bucket=bucket, bucket_batches=4) == first
    assert make_batches(examples, groups, 8, 8, bucket=bucket, bucket_batches=4) != first


def test_bucketing_groups_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randrange(5, 50), rng.randrange(50, 500), rng.randrange(500, 5000)]) for _ in range(400)]
    examples = plain(400, lengths=lengths)
    groups = sample_groups(examples, 1, 0)

    def mean_spread(batches):
        return statistics.mean(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    unbucketed = make_batches(examples, groups, 8, 0, bucket=False)
    for bucket_batches in (10, 50):  # windows of 80 examples; one window holding all 400
        bucketed = make_batches(examples, groups, 8, 0, bucket=True, bucket_batches=bucket_batches)
        assert mean_spread(bucketed) < 0.2 * mean_spread(unbucketed)
    # the batches themselves are shuffled, not handed out shortest first
    means = [statistics.mean(lengths[i] for i in b) for b in bucketed]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_sample_groups_counts_and_members():
    examples = [ex("a", "a", "pa", negatives=["x", "y"]),             # pool shorter than k
                ex("b", "b", "pb", negatives=[f"b{j}" for j in range(10)]),  # pool >= k
                ex("c", "c", "pc", negatives=["c0", "c1", "c2"])]      # pool == k
    assert sample_groups(examples, 0, 0) == [["pa"], ["pb"], ["pc"]]
    # a query with nothing to draw from would make its group shorter than the others
    with pytest.raises(ValueError, match="no negatives"):
        sample_groups([*examples, ex("d", "d", "pd", negatives=[])], 1, 0)
    for seed in range(20):
        a, b, c = sample_groups(examples, 3, seed)
        assert a[0] == "pa" and len(a) == 4 and set(a[1:]) == {"x", "y"}  # repeated up to exactly k, all used
        assert len(b) == 4 and len(set(b[1:])) == 3 and set(b[1:]) <= set(examples[1].negatives)
        assert sorted(c[1:]) == ["c0", "c1", "c2"]


def test_sample_groups_deterministic_per_seed():
    examples = [ex(f"q{i}", f"q{i}", f"p{i}", negatives=[f"n{i}_{j}" for j in range(20)]) for i in range(10)]
    assert sample_groups(examples, 4, 3) == sample_groups(examples, 4, 3)
    assert sample_groups(examples, 4, 3) != sample_groups(examples, 4, 4)


def test_an_epoch_visits_each_query_once_whatever_its_positives():
    """A query with 40 positives is one example, its positive drawn among them each epoch: over epochs
    every positive comes up, and it never weighs more than a query with one."""
    many = ex("many", "many positives", "m0", positives={f"m{j}" for j in range(40)})
    examples = [many, *plain(7)]
    drawn = set()
    for seed in range(200):
        groups = sample_groups(examples, 1, seed)
        batches = make_batches(examples, groups, 4, seed, bucket=False)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == 8  # every query once
        assert groups[0][0] in many.positives
        drawn.add(groups[0][0])
    assert len(drawn) > 30
