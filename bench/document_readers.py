"""Which library reads the text out of a folder of PDFs or HTML pages: speed and fidelity against the known
source text, on folders written by bench/make_documents.py. Results: bench/results/document-readers-cpu.md.

    /work/docbench-venv/bin/python bench/make_documents.py --format=pdf  --out=data/docbench-scifact-pdf
    /work/docbench-venv/bin/python bench/make_documents.py --format=html --out=data/docbench-scifact-html
    /work/docbench-venv/bin/python bench/document_readers.py --pdf_dir=data/docbench-scifact-pdf \
        --html_dir=data/docbench-scifact-html --sample=1000 --repeats=3 --json=/tmp/document-readers.json

Needs a Python with the libraries compared (pypdfium2, pypdf, pdfminer.six, trafilatura, selectolax, lxml,
beautifulsoup4; a reader whose import fails is left out and named). The same --sample documents (seeded) are
read in both formats. Timing: the sample is cut into chunks of --chunk files; every chunk is read by every
reader in turn, the order rotated from chunk to chunk, so drift reaches every reader alike; --repeats passes,
the median reported, as seconds per 1,000 files (and per 1,000 PDF pages). Files are read once before timing.

Fidelity, words = lowercased \\w+ tokens, against the title + abstract each file was made from (for PDFs as
make_documents.pdf_text drew them), summed over the sample:
- recall: reference words recovered, as a multiset (a word twice in the source counts twice);
- leak: extracted words beyond the reference's counts, over all extracted words (headers, footers, menus);
- bigram recall: adjacent reference word pairs recovered (multiset): reading order and line joins;
- joined: extracted words absent from the source that are two adjacent source words run together;
- broken: source words absent from the extraction that two adjacent extracted words make up (split at a line
  end or a hyphen);
- odd chars: control characters (not \\n \\r \\t \\f), U+FFFD and U+FFFE in the extracted text.
Joined and broken words made of digits alone are not counted ("Vol. 12" is not "1" + "2"). Folders made with
make_documents.py --font are scored against pdf_text too: their non-Latin-1 characters then count as misses.
For PDFs the same is reported again after dropping lines that repeat across documents ("drop repeated": a line
whose digits-as-# form is in over --repeat_share of the sample's files, e.g. "Page #"): single-page files give
no within-file repetition to go by.
"""
import argparse
import collections
import importlib
import importlib.metadata as md
import json
import os
import random
import re
import statistics
import sys
import time
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_documents import DEFAULT_DATA, paragraphs, pdf_text, read_jsonl, safe_name  # noqa: E402

DROP = ["script", "style", "nav", "header", "footer", "aside", "noscript", "head"]


# ---------------------------------------------------------------- readers (path -> text)

def pdf_pypdfium2():
    import pypdfium2 as pdfium

    def read(path):
        doc = pdfium.PdfDocument(path)
        try:
            out = []
            for i in range(len(doc)):
                page = doc[i]
                tp = page.get_textpage()
                out.append(tp.get_text_range())
                tp.close()
                page.close()
            return "\n".join(out)
        finally:
            doc.close()
    return read


def pdf_pypdf():
    from pypdf import PdfReader

    def read(path):
        return "\n".join(p.extract_text() or "" for p in PdfReader(path).pages)
    return read


def pdf_pdfminer(**laparams):
    def make():
        from pdfminer.high_level import extract_text
        from pdfminer.layout import LAParams

        def read(path):
            return extract_text(path, laparams=LAParams(**laparams))
        return read
    return make


def _html(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def html_trafilatura(**kw):
    def make():
        import trafilatura

        def read(path):
            return trafilatura.extract(_html(path), **kw) or ""
        return read
    return make


def html_selectolax(main_only=False):
    def make():
        from selectolax.lexbor import LexborHTMLParser  # selectolax 1.0 dropped the Modest HTMLParser

        def read(path):
            tree = LexborHTMLParser(_html(path))
            root = (tree.css_first("main") or tree.css_first("article")) if main_only else None
            if root is None:
                tree.strip_tags(DROP)
                root = tree.body
            return root.text() if root is not None else ""
        return read
    return make


def html_lxml(main_only=False):
    def make():
        import lxml.html

        def read(path):
            doc = lxml.html.document_fromstring(_html(path))
            root = doc.find(".//main") if main_only else None
            if root is None:
                for el in doc.xpath("|".join("//" + t for t in DROP)):
                    el.drop_tree()
                root = doc.body
            return root.text_content() if root is not None else ""
        return read
    return make


def html_bs4():
    from bs4 import BeautifulSoup

    def read(path):
        soup = BeautifulSoup(_html(path), "lxml")
        for el in soup(DROP):
            el.decompose()
        return (soup.body or soup).get_text()
    return read


def ours():
    """common/documents.py as prepare_data.py runs it: the title and the text its passages hold (a heading
    that repeats the title is not repeated; running lines of one file dropped, the folder's are not, as this
    reads files one by one)."""
    def make():
        sys.path.insert(0, os.path.dirname(HERE))
        from common import documents

        def read(path):
            _, title, blocks, _ = documents.parse(documents.read_bytes(path), path)
            return "\n".join([title] + [b.text for b in blocks if not (b.kind == "heading" and b.text == title)])
        return read
    return make


READERS = {
    "pdf": {
        "ours (pypdfium2)": ours(),
        "pypdfium2": pdf_pypdfium2,
        "pypdf": pdf_pypdf,
        "pdfminer.six": pdf_pdfminer(),
        "pdfminer.six char_margin=10": pdf_pdfminer(char_margin=10),
    },
    "html": {
        "ours (lxml)": ours(),
        "trafilatura": html_trafilatura(),
        "trafilatura fast": html_trafilatura(fast=True),
        "trafilatura recall": html_trafilatura(favor_recall=True),
        "selectolax (drop tags)": html_selectolax(),
        "selectolax <main>": html_selectolax(main_only=True),
        "lxml.html (drop tags)": html_lxml(),
        "lxml.html <main>": html_lxml(main_only=True),
        "bs4+lxml (drop tags)": html_bs4,
    },
}
DISTS = {"pypdfium2": "pypdfium2", "pypdf": "pypdf", "pdfminer.six": "pdfminer.six", "trafilatura": "trafilatura",
         "selectolax": "selectolax", "lxml.html": "lxml", "bs4+lxml": "beautifulsoup4"}
# bs4: the parser it is run with here. trafilatura: justext asks for lxml[html_clean], an extra lxml 6 no longer
# declares, so pip installs nothing for it and `import trafilatura` fails until lxml_html_clean is installed.
EXTRA_DEPS = {"bs4+lxml": ["lxml"], "trafilatura": ["lxml_html_clean"]}


# ---------------------------------------------------------------- fidelity

def words(text):
    return re.findall(r"\w+", text.lower())


def fidelity(ref_text, out_text):
    ref, ext = words(ref_text), words(out_text)
    rc, ec = collections.Counter(ref), collections.Counter(ext)
    rb, eb = collections.Counter(zip(ref, ref[1:])), collections.Counter(zip(ext, ext[1:]))
    ref_joins = {a + b for a, b in zip(ref, ref[1:])}
    ext_joins = {a + b for a, b in zip(ext, ext[1:])}
    odd = sum(1 for c in out_text if (unicodedata.category(c) == "Cc" and c not in "\n\r\t\f") or c in "\ufffd\ufffe")
    return {
        "ref": len(ref), "ext": len(ext),
        "hit": sum((rc & ec).values()),
        "excess": sum((ec - rc).values()),
        "bigrams": max(len(ref) - 1, 0), "bigram_hit": sum((rb & eb).values()),
        "joined": sum(1 for w in ec if w not in rc and w in ref_joins and not w.isdigit()),
        "broken": sum(1 for w in rc if w not in ec and w in ext_joins and not w.isdigit()),
        "odd": odd,
    }


def summarise(rows):
    s = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {"recall": s["hit"] / max(s["ref"], 1), "leak": s["excess"] / max(s["ext"], 1),
            "bigram_recall": s["bigram_hit"] / max(s["bigrams"], 1), "joined": s["joined"], "broken": s["broken"],
            "odd_chars": s["odd"], "words_per_file": s["ext"] / len(rows)}


def line_key(line):
    return re.sub(r"\d+", "#", " ".join(line.split()).lower())


def drop_repeated(texts, share):
    """Drop lines whose digits-as-# form is in over share of the texts."""
    df = collections.Counter()
    for t in texts:
        df.update({line_key(x) for x in t.splitlines() if x.strip()})
    common = {k for k, n in df.items() if n > share * len(texts)}
    return [("\n".join(x for x in t.splitlines() if line_key(x) not in common)) for t in texts], sorted(common)


# ---------------------------------------------------------------- packages

def _closure(dist):
    seen, todo = set(), [dist]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            d = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for req in d.requires or []:
            if "extra ==" in req.replace('"', "").replace("'", ""):
                continue
            todo.append(re.match(r"[A-Za-z0-9_.\-]+", req).group())
    return seen


def _installed_bytes(name):
    d = md.distribution(name)
    total = 0
    for f in d.files or []:
        p = d.locate_file(f)
        if os.path.isfile(p):
            total += os.path.getsize(p)
    return total


def _licence(name):
    m = md.metadata(name)
    lic = m.get("License-Expression") or ""
    if not lic:
        raw = (m.get("License") or "").strip()
        lic = raw if raw and len(raw) < 60 and "\n" not in raw else ""
    if not lic:
        cls = [c.split("::")[-1].strip() for c in m.get_all("Classifier") or [] if c.startswith("License ::")]
        lic = ", ".join(cls)
    return lic or "?"


def packages():
    rows = []
    for label, dist in DISTS.items():
        deps = set()
        for d in [dist] + EXTRA_DEPS.get(label, []):
            deps |= _closure(d)
        deps = sorted(deps - {re.sub(r"[-_.]+", "-", dist).lower()})
        rows.append({"reader": label, "dist": dist, "version": md.version(dist), "licence": _licence(dist),
                     "installed_mb": _installed_bytes(dist) / 1e6,
                     "with_deps_mb": sum(_installed_bytes(d) for d in deps) / 1e6 + _installed_bytes(dist) / 1e6,
                     "deps": [f"{d} {md.version(d)}" for d in deps]})
    return rows


# ---------------------------------------------------------------- main

def reference(doc, fmt):
    title, paras = doc.get("title", "") or "", paragraphs(doc.get("text", "") or "")
    text = "\n".join([title] + paras)
    return pdf_text(text) if fmt == "pdf" else text


def run(fmt, folder, ids, corpus, args):
    ext = fmt
    paths = [os.path.join(folder, safe_name(i)[:2], safe_name(i) + "." + ext) for i in ids]
    for p in paths:  # into the page cache before timing
        with open(p, "rb") as f:
            f.read()
    readers, missing = {}, []
    for name, make in READERS[fmt].items():
        if args.only and not any(o in name for o in args.only.split(",")):
            continue
        try:
            readers[name] = make()
        except ImportError as e:
            missing.append(f"{name}: {e}")
    names = list(readers)
    chunks = [list(range(i, min(i + args.chunk, len(paths)))) for i in range(0, len(paths), args.chunk)]
    secs = {n: [0.0] * args.repeats for n in names}
    texts = {n: [None] * len(paths) for n in names}
    k = 0
    for r in range(args.repeats):
        for chunk in chunks:
            order = names[k % len(names):] + names[:k % len(names)]
            k += 1
            for n in order:
                read = readers[n]
                t0 = time.perf_counter()
                out = [read(paths[i]) for i in chunk]
                secs[n][r] += time.perf_counter() - t0
                if r == 0:
                    for i, t in zip(chunk, out):
                        texts[n][i] = t
    pages = None
    if fmt == "pdf":
        import pypdfium2 as pdfium
        pages = []
        for p in paths:
            d = pdfium.PdfDocument(p)
            pages.append(len(d))
            d.close()
    refs = [reference(corpus[i], fmt) for i in ids]
    result = {"format": fmt, "files": len(paths), "repeats": args.repeats, "pages": sum(pages) if pages else None,
              "pages_hist": dict(collections.Counter(pages)) if pages else None, "missing": missing, "readers": {}}
    for n in names:
        med = statistics.median(secs[n])
        row = {"seconds": secs[n], "s_per_1000_files": med * 1000 / len(paths),
               "s_per_1000_pages": med * 1000 / sum(pages) if pages else None}
        row.update(summarise([fidelity(a, b) for a, b in zip(refs, texts[n])]))
        if fmt == "pdf":
            cleaned, common = drop_repeated(texts[n], args.repeat_share)
            after = summarise([fidelity(a, b) for a, b in zip(refs, cleaned)])
            row["after_drop"] = {"recall": after["recall"], "leak": after["leak"],
                                 "bigram_recall": after["bigram_recall"], "lines_dropped": common}
        row["example"] = texts[n][0][:1500]
        result["readers"][n] = row
    if args.long_chars:
        result["long"] = long_pass(fmt, folder, corpus, readers, args)
    return result


def long_pass(fmt, folder, corpus, readers, args):
    """Fidelity alone (untimed) on every document whose abstract is over --long_chars: the multi-page PDFs."""
    ids = sorted(i for i, d in corpus.items() if len(d.get("text", "") or "") > args.long_chars)
    paths = [os.path.join(folder, safe_name(i)[:2], safe_name(i) + "." + fmt) for i in ids]
    refs = [reference(corpus[i], fmt) for i in ids]
    res = {"files": len(ids), "readers": {}}
    if fmt == "pdf":
        import pypdfium2 as pdfium
        res["pages_hist"] = dict(collections.Counter(len(pdfium.PdfDocument(p)) for p in paths))
    for n, read in readers.items():
        texts = [read(p) for p in paths]
        row = summarise([fidelity(a, b) for a, b in zip(refs, texts)])
        if fmt == "pdf":
            cleaned, common = drop_repeated(texts, args.repeat_share)
            after = summarise([fidelity(a, b) for a, b in zip(refs, cleaned)])
            row["after_drop"] = {"recall": after["recall"], "leak": after["leak"],
                                 "bigram_recall": after["bigram_recall"], "lines_dropped": common}
        res["readers"][n] = row
    return res


def long_table(res, fmt):
    head = "| reader | recall | leak | bigram recall | joined | broken | odd chars |"
    if fmt == "pdf":
        head += " recall, leak, bigram recall after drop repeated |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in res["readers"].items():
        cells = [n, f"{r['recall']:.4f}", f"{r['leak']:.4f}", f"{r['bigram_recall']:.4f}", str(r["joined"]),
                 str(r["broken"]), str(r["odd_chars"])]
        if fmt == "pdf":
            a = r["after_drop"]
            cells.append(f"{a['recall']:.4f}, {a['leak']:.4f}, {a['bigram_recall']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(res):
    fmt = res["format"]
    head = f"| reader | s / 1,000 files (median of {res['repeats']}) | runs (s) | recall | leak | bigram recall | joined | broken | odd chars |"
    if fmt == "pdf":
        head = head.replace(") | runs", ") | s / 1,000 pages | runs") + \
            " recall, leak after drop repeated |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, r in res["readers"].items():
        cells = [n, f"{r['s_per_1000_files']:.2f}"]
        if fmt == "pdf":
            cells.append(f"{r['s_per_1000_pages']:.2f}")
        cells += [" / ".join(f"{s:.2f}" for s in r["seconds"]), f"{r['recall']:.4f}", f"{r['leak']:.4f}",
                  f"{r['bigram_recall']:.4f}", str(r["joined"]), str(r["broken"]), str(r["odd_chars"])]
        if fmt == "pdf":
            a = r["after_drop"]
            cells.append(f"{a['recall']:.4f}, {a['leak']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA, help="the BEIR directory the folders were made from")
    ap.add_argument("--pdf_dir", default="")
    ap.add_argument("--html_dir", default="")
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--repeat_share", type=float, default=0.5)
    ap.add_argument("--long_chars", type=int, default=3500,
                    help="fidelity also on every document whose abstract is longer (0: not)")
    ap.add_argument("--only", default="", help="comma-separated substrings of reader names")
    ap.add_argument("--json", default="", help="write every number and an example text per reader here")
    args = ap.parse_args(argv)

    corpus = {str(d["_id"]): d for d in read_jsonl(os.path.join(args.data, "corpus.jsonl"))}
    ids = sorted(corpus)
    ids = sorted(random.Random(args.seed).sample(ids, min(args.sample, len(ids))))
    out = {"sample": len(ids), "seed": args.seed, "python": sys.version.split()[0], "results": [],
           "packages": packages()}
    for fmt, folder in (("pdf", args.pdf_dir), ("html", args.html_dir)):
        if not folder:
            continue
        t0 = time.perf_counter()
        res = run(fmt, folder, ids, corpus, args)
        res["wall_s"] = time.perf_counter() - t0
        out["results"].append(res)
        print(f"\n## {fmt}: {res['files']} files, {res['pages'] or res['files']} pages, {res['wall_s']:.0f} s"
              + (f"; pages per file {res['pages_hist']}" if res["pages_hist"] else ""))
        for m in res["missing"]:
            print("left out:", m)
        print(table(res))
        if fmt == "pdf":
            for n, r in res["readers"].items():
                print(f"{n}: lines dropped as repeated: {r['after_drop']['lines_dropped']}")
        if res.get("long"):
            lg = res["long"]
            print(f"\n### {fmt}, every document over {args.long_chars} characters: {lg['files']} files"
                  + (f", pages per file {lg['pages_hist']}" if lg.get("pages_hist") else "") + " (untimed)")
            print(long_table(lg, fmt))
    print("\n| reader | package | version | licence | installed MB | with deps MB | dependencies |\n|---|---|---|---|---|---|---|")
    for p in out["packages"]:
        print(f"| {p['reader']} | {p['dist']} | {p['version']} | {p['licence']} | {p['installed_mb']:.1f} | "
              f"{p['with_deps_mb']:.1f} | {', '.join(p['deps']) or 'none'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
