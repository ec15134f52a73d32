"""Small labelled collections, built offline from what the machine holds: a few dozen train queries over a
real corpus, the shape many users start with (issue 38). No config is written for any of them.

    python bench/small_sets.py --out=data/small          # writes the BEIR directories below
    make pipeline DATA=data/small/scifact-48             # then each one as a new user would run it
    make pipeline DATA=data/small/man-60

- scifact-<n>: SciFact's corpus and queries, <n> of its train queries (seeded) as train, its 300 test
  queries as test; prepare_data.py carves val from train (a tenth: a handful of queries).
- scifact-<n>-val80: the same train queries, with 80 other train queries as val (dev.tsv): enough val to
  tell one training recipe from another (bench/small_recipe.sh).
- man-<n>[-val80]: 3,000 man pages of sections 1 and 8 (bench/datasets.py's) as the corpus, each page's one-line
  summary its query; <n> queries as train, 300 others as test. A command's summary against its page:
  one relevant document per query, another domain and another vocabulary than SciFact's (-val80: 80
  more queries as val).
The corpus files are linked, not copied, where the source has them.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datasets import man_pairs  # noqa: E402


def read_qrels(path):
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1].lstrip("-").isdigit():
                rows.setdefault(parts[0], []).append((parts[1] if len(parts) == 3 else parts[2], int(parts[-1])))
    return rows


def write_qrels(path, rows, qids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t{g}\n" for q in qids for d, g in rows[q])


def link(source, target):
    if os.path.lexists(target):
        os.remove(target)
    os.symlink(os.path.abspath(source), target)


def scifact(source, out, n, seed, val=0):
    train = read_qrels(os.path.join(source, "qrels", "train.tsv"))
    test = read_qrels(os.path.join(source, "qrels", "test.tsv"))
    qids = sorted(train)
    random.Random(seed).shuffle(qids)
    name = f"scifact-{n}" + (f"-val{val}" if val else "")
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    for file in ("corpus.jsonl", "queries.jsonl"):
        link(os.path.join(source, file), os.path.join(directory, file))
    write_qrels(os.path.join(directory, "qrels", "train.tsv"), train, qids[:n])
    if val:
        write_qrels(os.path.join(directory, "qrels", "dev.tsv"), train, qids[n:n + val])
    write_qrels(os.path.join(directory, "qrels", "test.tsv"), test, sorted(test))
    return directory


def man(out, n, seed, docs=3000, test=300, val=0):
    pairs = man_pairs()
    random.Random(seed).shuffle(pairs)
    pairs = pairs[:docs]
    directory = os.path.join(out, f"man-{n}" + (f"-val{val}" if val else ""))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for i, p in enumerate(pairs):
            f.write(json.dumps({"_id": f"m{i}", "title": p["title"], "text": p["answer"]}, ensure_ascii=False) + "\n")
    with open(os.path.join(directory, "queries.jsonl"), "w", encoding="utf-8") as f:
        for i, p in enumerate(pairs[:n + test]):
            f.write(json.dumps({"_id": f"q{i}", "text": p["question"]}, ensure_ascii=False) + "\n")
    rows = {f"q{i}": [(f"m{i}", 1)] for i in range(n + test)}
    write_qrels(os.path.join(directory, "qrels", "train.tsv"), rows, [f"q{i}" for i in range(n)])
    write_qrels(os.path.join(directory, "qrels", "test.tsv"), rows, [f"q{i}" for i in range(n, n + test)])
    if val:  # queries past test's: the corpus is the same, the labelled queries disjoint
        with open(os.path.join(directory, "queries.jsonl"), "a", encoding="utf-8") as f:
            for i in range(n + test, n + test + val):
                f.write(json.dumps({"_id": f"q{i}", "text": pairs[i]["question"]}, ensure_ascii=False) + "\n")
        rows.update({f"q{i}": [(f"m{i}", 1)] for i in range(n + test, n + test + val)})
        write_qrels(os.path.join(directory, "qrels", "dev.tsv"), rows,
                    [f"q{i}" for i in range(n + test, n + test + val)])
    return directory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/small")
    parser.add_argument("--scifact", default="../shared/data/scifact")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    made = []
    if os.path.isdir(args.scifact):
        made += [scifact(args.scifact, args.out, 48, args.seed), scifact(args.scifact, args.out, 48, args.seed, 80),
                 scifact(args.scifact, args.out, 120, args.seed)]
    else:
        print(f"{args.scifact}: not found; the SciFact sets are skipped")
    made += [man(args.out, 60, args.seed), man(args.out, 60, args.seed, val=80)]
    for directory in made:
        print(f"make pipeline DATA={directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
