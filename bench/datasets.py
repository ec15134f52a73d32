"""Datasets no config was written for, built offline from what any Debian/Python machine holds: held-out
checks that a choice made on SciFact and the stdlib set holds elsewhere (bench/results/hybrid-cpu.md).

    python bench/datasets.py --out=data/bench        # writes the sources below, then prints the make lines
    make pipeline DATA=data/bench/man-pages.jsonl    # text: a command's man page from its one-line summary
    make pipeline DATA=.venv/lib/python3.11/site-packages/scipy PREPARE_ARGS=--format=python-source   # code

man-pages.jsonl: {"question", "answer", "title"} per man page of sections 1 and 8 (the `gcloud alpha|beta`
copies of the GA pages left out): the question is the NAME line's summary ("list directory contents"), the
answer the page's text after NAME with every restatement of the summary removed, cut to 2,000
characters; the title is the command. Pages whose summary is under 3 words, or whose summary is shared
with another page, are skipped. Roff is stripped by a few rules (enough for retrieval, not for display).
"""
import argparse
import gzip
import json
import os
import re
import sys

MAN_DIRS = ("/usr/share/man/man1", "/usr/share/man/man8")
_FONT = re.compile(r"\\f(\(..|\[[^]]*\]|.)")
_ESCAPE = re.compile(r"\\(\(..|\[[^]]*\]|\*\(..|\*.|[eE&|^0 ~:%-]|s[-+]?\d|.)")
_CHARS = {r"\(em": "-", r"\(en": "-", r"\(aq": "'", r"\(dq": '"', r"\(lq": '"', r"\(rq": '"', r"\(bu": "*",
          r"\(co": "(c)", r"\e": "\\", r"\-": "-", r"\~": " ", r"\ ": " "}


def roff_text(source):
    """(title line summary, body text) of a man page's roff source, or None for a redirect (.so)."""
    sections, name, current, skipping = {}, None, None, False
    for line in source.splitlines():
        if skipping:  # a macro definition: .de NAME ... ..
            skipping = not line.startswith("..")
            continue
        if line.startswith((".", "'")):
            words = line[1:].strip().split(None, 1)
            macro, args = (words[0] if words else ""), (words[1] if len(words) > 1 else "")
            if macro == "so":
                return None
            if macro in ("de", "de1", "am"):
                skipping = True
            elif macro in ("SH", "Sh"):
                current = clean(args.strip('"')).upper()
                sections.setdefault(current, [])
            elif macro in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB", "Nm", "Nd", "Ar", "Fl", "Cm"):
                if current is not None:
                    sections[current].append(clean(args.replace('"', "")))
            elif macro in ("PP", "P", "LP", "TP", "IP", "sp", "br", "HP", "Pp"):
                if current is not None:
                    sections[current].append("\n")
            continue
        if current is not None:
            sections[current].append(clean(line))
    if "NAME" not in sections:
        return None
    name = " ".join(" ".join(sections.pop("NAME")).split())
    body = "\n".join(f"{title}\n" + " ".join(" ".join(words).split()) for title, words in sections.items())
    return name, body


def clean(text):
    for esc, char in _CHARS.items():
        text = text.replace(esc, char)
    return _ESCAPE.sub("", _FONT.sub("", text))


def man_pairs(max_chars=2000):
    pages = []
    for directory in MAN_DIRS:
        for file in sorted(os.listdir(directory)):
            if re.match(r"gcloud_(alpha|beta)_", file) or not file.endswith(".gz"):
                continue
            with gzip.open(os.path.join(directory, file), "rt", encoding="utf-8", errors="replace") as f:
                parsed = roff_text(f.read())
            if parsed is None or " - " not in parsed[0]:
                continue
            command, summary = (s.strip() for s in parsed[0].split(" - ", 1))
            if len(summary.split()) < 3:
                continue
            # The summary restated in the body would make the task string matching.
            restated = re.compile(r"\W+".join(map(re.escape, summary.split())) + r"\.?", re.IGNORECASE)
            body = restated.sub("", parsed[1])
            pages.append((summary, command, body[:max_chars]))
    counts = {}
    for summary, _, _ in pages:
        counts[summary.lower()] = counts.get(summary.lower(), 0) + 1
    return [{"question": s, "answer": b, "title": c} for s, c, b in pages if counts[s.lower()] == 1 and len(b) > 100]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/bench")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    pairs = man_pairs()
    path = os.path.join(args.out, "man-pages.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    print(f"wrote {path}: {len(pairs)} pages")
    site = os.path.join(os.path.dirname(os.path.dirname(json.__file__)), "site-packages")
    print(f"make pipeline DATA={path}\nmake pipeline DATA=.venv/lib/python3.11/site-packages/scipy "
          f"PREPARE_ARGS=--format=python-source   # or {site}/<package>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
