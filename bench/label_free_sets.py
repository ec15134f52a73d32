"""Two small judged collections from other domains than SciFact, for label-free measurements (bench/generated.sh):
each a BEIR directory whose train queries a label-free run withholds and whose test queries are read only to report.

    python bench/label_free_sets.py --out=/work/lf --docs=1000
    # -> /work/lf/manpages: this machine's English man pages; the query is a page's NAME line ("copy files and
    #    directories"), the document its page rendered by man(1) without that line, titled by the page's name
#    (gcloud's generated pages left out)
    # -> /work/lf/stdlib-code: a seeded sample of data/python-source's functions (docstring summary -> code),
    #    with its queries whose positives are in the sample (run `make data` first)
"""
import argparse
import glob
import gzip
import json
import os
import random
import re
import subprocess
import sys


def write_beir(out, corpus, queries, qrels):
    os.makedirs(os.path.join(out, "qrels"), exist_ok=True)
    with open(os.path.join(out, "corpus.jsonl"), "w") as f:
        f.writelines(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, (t, x) in corpus.items())
    with open(os.path.join(out, "queries.jsonl"), "w") as f:
        f.writelines(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    for split, rows in qrels.items():
        with open(os.path.join(out, "qrels", f"{split}.tsv"), "w") as f:
            f.write("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    print(f"{out}: {len(corpus):,} docs, " + ", ".join(f"{s} {len(r):,}" for s, r in qrels.items()))


def name_line(path):
    """The NAME section's description of a man page's source ("cp \\- copy files" -> "copy files"), or None."""
    try:
        with gzip.open(path, "rt", errors="replace") as f:
            lines = f.read(20000).splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if re.match(r"\.S[Hh]\s+\"?NAME", line):
            text = []
            for x in lines[i + 1:i + 4]:  # the lines before the next macro
                if x.startswith(".") and text:
                    break
                if not x.startswith("."):
                    text.append(x)
            text = " ".join(text)
            m = re.search(r"\\-\s*(.+)", text)
            if m:
                desc = re.sub(r"\\f[BIRP]|\\\(..|\\[&-]", "", m.group(1)).strip()
                return desc if 3 <= len(desc.split()) <= 20 else None
    return None


def manpages(out, docs, seed):
    # gcloud's thousands of generated pages (most of this machine's) left out: one tool's near-copies
    pages = sorted(p for s in ("1", "3", "5", "8") for p in glob.glob(f"/usr/share/man/man{s}/*.gz")
                   if not os.path.basename(p).startswith("gcloud"))
    random.Random(seed).shuffle(pages)
    corpus, queries, seen = {}, {}, set()
    for path in pages:
        if len(corpus) == docs:
            break
        desc = name_line(path)
        if not desc or desc.lower() in seen:
            continue
        rendered = subprocess.run(["man", "-l", "-P", "cat", path], capture_output=True, text=True,
                                  env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"}).stdout
        text = re.sub(r".\x08", "", rendered)
        body = re.split(r"\n(?:NAME|Name)\n.*?\n(?=\S)", text, maxsplit=1, flags=re.S)
        body = " ".join((body[1] if len(body) > 1 else text).split())
        if len(body.split()) < 30:
            continue
        seen.add(desc.lower())
        name = os.path.basename(path).removesuffix(".gz")
        doc = f"m{len(corpus)}"
        corpus[doc] = (name, " ".join(body.split()[:400]))
        queries[f"q{len(queries)}"] = desc
    ids = list(queries)
    random.Random(seed).shuffle(ids)
    test = set(ids[:300])
    qrels = {"train": [(q, f"m{q[1:]}") for q in sorted(queries) if q not in test],
             "test": [(q, f"m{q[1:]}") for q in sorted(queries) if q in test]}
    write_beir(os.path.join(out, "manpages"), corpus, queries, qrels)


def stdlib_code(out, docs, seed, source="data/python-source"):
    if not os.path.isfile(os.path.join(source, "corpus.jsonl")):
        sys.exit(f"{source}: run `make data` first")
    corpus = {}
    with open(os.path.join(source, "corpus.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            corpus[row["_id"]] = (row.get("title", ""), row["text"])
    chosen = set(random.Random(seed).sample(sorted(corpus), docs))
    with open(os.path.join(source, "queries.jsonl")) as f:
        all_queries = {r["_id"]: r["text"] for r in map(json.loads, f)}
    qrels, used = {}, set()
    for split in ("train", "val", "test"):
        rows = {}
        with open(os.path.join(source, "qrels", f"{split}.tsv")) as f:
            next(f)
            for line in f:
                q, d, g = line.rstrip("\n").split("\t")
                rows.setdefault(q, []).append(d)
        qrels[split] = [(q, d) for q, ds in rows.items() if set(ds) <= chosen for d in ds]
        used |= {q for q, _ in qrels[split]}
    write_beir(os.path.join(out, "stdlib-code"), {d: corpus[d] for d in sorted(chosen)},
               {q: all_queries[q] for q in sorted(used)}, qrels)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--docs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    manpages(args.out, args.docs, args.seed)
    stdlib_code(args.out, args.docs, args.seed)


if __name__ == "__main__":
    main()
