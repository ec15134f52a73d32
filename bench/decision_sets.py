"""Labelled collections of other domains and shapes than SciFact and the stdlib set, built offline from what a
Debian machine holds, for checking what the pipeline serves (issue 48). No config is written for any.

    python bench/decision_sets.py --out=data/decision     # writes the BEIR directories below
    make pipeline DATA=data/decision/perldiag             # then each one as a new user would run it

- perldiag: Perl's diagnostics (perldiag.pod): each explanation a document, each message that it explains
  a query ("%s" and its kin filled with a placeholder word), so a few documents answer several messages.
  Queries split at random: test 25%, val 15%, the rest train. Error text against its explanation.
- man-options: man pages (sections 1 and 8, gcloud's left out) with at least 5 options: each page's text
  without its options' descriptions is a document, each option's description (its first sentence) a
  query for that page. A page answers many queries, so nearly every val and test query's page was found by
  some train query: the shape where an index memory should do the most. Queries shared by two pages
  ("display this help and exit") are dropped; test 400, val 300, the rest train.
The sizes: perldiag ~800 documents and ~1,000 queries; man-options --pages (1,500) documents.
"""
import argparse
import gzip
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datasets import MAN_DIRS, clean  # noqa: E402

PERLDIAG = "/usr/share/perl/5.36/pod/perldiag.pod"
_POD = re.compile(r"[A-Z]<+\s*([^<>]*?)\s*>+")
_FORMATS = [(re.compile(r"%(\d+\$)?[-+ #0]*\d*(\.\d+)?(l|ll|h|z)?[sSpPn]"), "foo"),
            (re.compile(r"%(\d+\$)?[-+ #0]*\d*(\.\d+)?(l|ll|h|z)?[duxXoig]"), "3"),
            (re.compile(r"%(\d+\$)?c"), "@"), (re.compile(r"%%"), "%")]


def pod_text(text):
    for _ in range(3):  # nested codes, C<I<..>>
        text = _POD.sub(r"\1", text)
    return " ".join(text.split())


def fill(message):
    for pattern, word in _FORMATS:
        message = pattern.sub(word, message)
    return message


def perldiag(path=PERLDIAG):
    """[(explanation, [messages])]: consecutive =item lines share the paragraphs after them."""
    groups, items, paragraphs = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        blocks = f.read().split("\n\n")
    for block in blocks:
        block = block.strip()
        if block.startswith("=item"):
            if paragraphs:
                groups.append((paragraphs, items))
                items, paragraphs = [], []
            items.append(fill(pod_text(block[len("=item"):])))
        elif block.startswith("="):
            if paragraphs and items:
                groups.append((paragraphs, items))
            items, paragraphs = ([], []) if paragraphs or block.startswith(("=head", "=back")) else (items, [])
        elif items:
            paragraphs.append(pod_text(block))
    if paragraphs and items:
        groups.append((paragraphs, items))
    return [(" ".join(p)[:2000], sorted(set(i for i in m if len(i.split()) >= 2))) for p, m in groups
            if len(" ".join(p).split()) >= 8]


def man_options(min_options=5, max_options=15):
    """[(command, summary, text without the options' descriptions, [option descriptions])]."""
    pages = []
    for directory in MAN_DIRS:
        for file in sorted(os.listdir(directory)):
            if file.startswith("gcloud") or not file.endswith(".gz"):
                continue
            with gzip.open(os.path.join(directory, file), "rt", encoding="utf-8", errors="replace") as f:
                parsed = parse_page(f.read())
            if parsed and len(parsed[3]) >= min_options:
                pages.append(parsed[:3] + (parsed[3][:max_options],))
    return pages


def parse_page(source):
    """(command, summary, body without option descriptions, [first sentence of each option's description])."""
    name, body, options = [], [], []
    section, tag_next, option, lines = None, False, None, source.splitlines()
    for line in lines:
        if line.startswith((".", "'")):
            words = line[1:].strip().split(None, 1)
            macro, args = (words[0] if words else ""), (words[1] if len(words) > 1 else "")
            if macro == "so":
                return None
            if macro in ("SH", "Sh"):
                section, option = clean(args.strip('"')).upper(), None
                continue
            if macro in ("TP",):
                tag_next, option = True, None
                continue
            if macro in ("IP",) and args:
                tag = clean(args.split('"')[1] if args.startswith('"') else args.split()[0])
                option = [] if tag.lstrip().startswith("-") else None
                if option is not None:
                    options.append(option)
                body.append(tag)
                continue
            if macro in ("PP", "P", "LP", "SS", "RE", "RS", "HP", "Pp", "sp", "br") and macro != "br":
                option = None if macro in ("PP", "P", "LP", "SS", "Pp", "HP") else option
                continue
            text = clean(args.replace('"', "")) if macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB") else ""
        else:
            text = clean(line)
        if section is None:
            continue
        if tag_next:
            tag_next = False
            option = [] if text.lstrip().startswith("-") else None
            if option is not None:
                options.append(option)
            body.append(text)
            continue
        if section == "NAME":
            name.append(text)
        elif option is not None:
            option.append(text)
        else:
            body.append(text)
    name = " ".join(" ".join(name).split())
    if " - " not in name:
        return None
    command, summary = (s.strip() for s in name.split(" - ", 1))
    queries = []
    for words in options:
        text = " ".join(" ".join(words).split())
        first = re.split(r"(?<=[a-z)])\.\s", text + " ", maxsplit=1)[0].strip().rstrip(".")
        if 4 <= len(first.split()) <= 30:
            queries.append(first)
    return command, summary, " ".join(" ".join(body).split())[:2000], queries


def write(directory, docs, queries, splits):
    """docs [(id, title, text)], queries [(id, text, doc id)], splits {"train"|"dev"|"test": [query ids]}."""
    os.makedirs(os.path.join(directory, "qrels"), exist_ok=True)
    with open(os.path.join(directory, "corpus.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": d, "title": t, "text": x}, ensure_ascii=False) + "\n" for d, t, x in docs)
    with open(os.path.join(directory, "queries.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n" for q, t, _ in queries)
    doc_of = {q: d for q, _, d in queries}
    for split, qids in splits.items():
        with open(os.path.join(directory, "qrels", f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{doc_of[q]}\t1\n" for q in qids)
    return directory


def split_queries(qids, seed, test, val):
    qids = list(qids)
    random.Random(seed).shuffle(qids)
    return {"test": qids[:test], "dev": qids[test:test + val], "train": qids[test + val:]}


def make_perldiag(out, seed):
    groups = perldiag()
    seen, docs, queries = set(), [], []
    for i, (text, messages) in enumerate(groups):
        docs.append((f"p{i}", "", text))
        for m in messages:
            if m.lower() not in seen:
                seen.add(m.lower())
                queries.append((f"pq{len(queries)}", m, f"p{i}"))
    n = len(queries)
    return write(os.path.join(out, "perldiag"), docs, queries,
                 split_queries([q for q, _, _ in queries], seed, n // 4, n * 15 // 100))


def make_man_options(out, seed, pages):
    found = man_options()
    random.Random(seed).shuffle(found)
    found = found[:pages]
    counts = {}
    for _, _, _, options in found:
        for o in set(o.lower() for o in options):
            counts[o] = counts.get(o, 0) + 1
    docs, queries = [], []
    for i, (command, summary, body, options) in enumerate(found):
        docs.append((f"m{i}", command, f"{summary}. {body}"))
        for o in dict.fromkeys(options):
            if counts[o.lower()] == 1:
                queries.append((f"mq{len(queries)}", o, f"m{i}"))
    return write(os.path.join(out, "man-options"), docs, queries,
                 split_queries([q for q, _, _ in queries], seed, 400, 300))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/decision")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pages", type=int, default=1500)
    args = parser.parse_args(argv)
    for directory in (make_perldiag(args.out, args.seed), make_man_options(args.out, args.seed, args.pages)):
        sizes = {s: sum(1 for _ in open(os.path.join(directory, "qrels", f"{s}.tsv"))) - 1
                 for s in ("train", "dev", "test")}
        docs = sum(1 for _ in open(os.path.join(directory, "corpus.jsonl")))
        print(f"{directory}: {docs} docs, queries {sizes}\nmake pipeline DATA={directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
