"""A folder of documents with known text and labelled questions, made from a BEIR directory: test data for a
reader of document folders (PDF or HTML in, passages out), scored against the text it was rendered from.

    /work/docbench-venv/bin/python bench/make_documents.py --format=pdf  --out=data/docs-scifact-pdf
    /work/docbench-venv/bin/python bench/make_documents.py --format=html --out=data/docs-scifact-html
    /work/docbench-venv/bin/python bench/make_documents.py --format=pdf --limit=50 --out=/tmp/docs-50

Any Python with fpdf2 runs it (`pip install fpdf2`; only --format=pdf imports it). It reads --data
(corpus.jsonl, queries.jsonl, qrels/train.tsv and qrels/test.tsv; default ../shared/data/scifact beside the
repository) and writes:

- <out>/<first 2 characters of the id>/<id>.pdf or .html, one file per document, nested on purpose. Ids outside
  [A-Za-z0-9.-] are escaped (`_` + hex code) so that every id makes one safe file name.
- --format=pdf: A4, core font Helvetica (fpdf2 ships no Unicode font): typographic punctuation becomes its ASCII
  look-alike, other characters Latin-1 lacks become their NFKC form where that is Latin-1, else '?'
  (`pdf_text`; --font=some.ttf keeps every character instead). The title is a bold 15 pt heading, the abstract
  ~3 paragraphs (`paragraphs`) of 11 pt multi_cell text; every page has the running header
  "Journal of Synthetic Studies - Vol. 12" and the footer "Page N", which a reader has to drop. The PDF's
  metadata title is the document's title; the creation date is fixed, so a file depends on its text alone.
- --format=html: a full HTML5 page: <title>, a <header> with the site's name and a 15-link <nav>, a breadcrumb,
  an <aside> of "Related articles", <main><article><h1 id="title"> and the abstract as ~3 <p>, a cookie banner,
  a <footer> and an inline <script>. Everything but the title and the abstract is the same on every page, so a
  reader that keeps it adds the same words to every document.
- --format=md, txt, docx: the title (a `#` heading, the first line, a Heading1 paragraph and the document's
  title) and the paragraphs, nothing else: the same text in the other formats a folder holds.
- <out>/questions.jsonl: one line per query with a qrel (score > 0) in train or test:
  {"_id", "question", "files": [paths relative to <out>, POSIX], "split"}. A query in both splits gets one line
  per split, the test line's _id suffixed "-test" (SciFact has none). Relevant ids missing from the corpus are
  left out of "files" (counted on stderr).

--limit=N writes the first N documents of corpus.jsonl and only the questions whose files all exist.
"""
import argparse
import html
import json
import os
import re
import sys
import time
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "scifact"))

RUNNING_HEADER = "Journal of Synthetic Studies \u2014 Vol. 12"
SITE_NAME = "The Open Science Review"

# Typographic characters Latin-1 lacks, as what they look like; the rest go through NFKC or become '?'.
_PDF_MAP = {
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2026": "...", "\u2022": "*", "\u25b8": "*", "\u25a0": "*", "\u2264": "<=", "\u2265": ">=", "\u2a7d": "<=",
    "\u2a7e": ">=", "\u2248": "~", "\u223c": "~", "\u2192": "->", "\u2194": "<->", "\u22c5": "\u00b7",
    "\u2236": ":", "\u200b": "", "\u200e": "", "\u200f": "", "\ufeff": "",
}


def pdf_text(text):
    """The text as the core font draws it: every character Latin-1 (what make_documents writes in a PDF)."""
    out = []
    for c in text:
        if ord(c) < 256:
            out.append(c)
        elif c in _PDF_MAP:
            out.append(_PDF_MAP[c])
        else:
            n = unicodedata.normalize("NFKC", c)
            out.append(n if all(ord(x) < 256 for x in n) else "?")
    return "".join(out)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def paragraphs(text, n=3):
    """The text cut at sentence ends into at most n paragraphs of about as many sentences each."""
    text = " ".join(text.split())
    if not text:
        return []
    sents = _SENTENCE_END.split(text)
    n = max(1, min(n, len(sents)))
    size, extra = divmod(len(sents), n)
    out, i = [], 0
    for k in range(n):
        j = i + size + (1 if k < extra else 0)
        out.append(" ".join(sents[i:j]))
        i = j
    return out


def safe_name(doc_id):
    name = re.sub(r"[^A-Za-z0-9.\-]", lambda m: "_%x_" % ord(m.group()), doc_id)
    return "_2e_" + name[1:] if name.startswith(".") else name


def relative_path(doc_id, ext):
    name = safe_name(doc_id)
    return f"{name[:2]}/{name}.{ext}"


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_qrels(path):
    """{query id: [corpus ids with score > 0]} in file order; the header line is skipped."""
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0] == "query-id":
                continue
            if int(float(parts[2])) > 0 and parts[1] not in rows.setdefault(parts[0], []):
                rows[parts[0]].append(parts[1])
    return rows


# ---------------------------------------------------------------- PDF

def _pdf_class(font):
    try:
        from fpdf import FPDF
    except ImportError:
        sys.exit("make_documents.py --format=pdf needs fpdf2: pip install fpdf2 "
                 "(e.g. /work/docbench-venv/bin/python bench/make_documents.py)")
    import datetime

    class Page(FPDF):
        def header(self):
            self.set_font(self._fam, "", 9)
            self.cell(0, 8, self._clean(RUNNING_HEADER), new_x="LMARGIN", new_y="NEXT", align="C")
            self.ln(4)

        def footer(self):
            self.set_y(-15)
            self.set_font(self._fam, "", 9)
            self.cell(0, 10, f"Page {self.page_no()}", align="C")

    def make(title, paras):
        pdf = Page(format="A4")
        pdf._fam = "Helvetica"
        pdf._clean = pdf_text
        if font:
            pdf.add_font("Body", "", font)
            bold = font.replace(".ttf", "-Bold.ttf")
            pdf.add_font("Body", "B", bold if os.path.exists(bold) else font)
            pdf._fam, pdf._clean = "Body", (lambda s: s)
        pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
        pdf.set_title(title)
        pdf.set_auto_page_break(True, margin=20)
        pdf.add_page()
        pdf.set_font(pdf._fam, "B", 15)
        pdf.multi_cell(0, 7, pdf._clean(title), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
        pdf.set_font(pdf._fam, "", 11)
        for p in paras:
            pdf.multi_cell(0, 5.5, pdf._clean(p), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        return bytes(pdf.output())

    return make


# ---------------------------------------------------------------- HTML

_NAV = ["Home", "Latest research", "Biology", "Medicine", "Neuroscience", "Genetics", "Immunology", "Oncology",
        "Public health", "Methods", "Reviews", "Editorials", "Authors", "Subscribe", "Contact"]
_RELATED = ["Ten questions about peer review", "How clinical trials are registered", "A short history of the cell",
            "Reading a forest plot", "What meta-analysis can and cannot do"]


def _boilerplate():
    nav = "\n".join(f'        <li><a href="/{n.lower().replace(" ", "-")}/">{n}</a></li>' for n in _NAV)
    related = "\n".join(f'      <li><a href="/related/{i}/">{t}</a></li>' for i, t in enumerate(_RELATED, 1))
    top = f"""  <header class="site-header">
    <div class="logo"><a href="/">{SITE_NAME}</a></div>
    <nav class="main-nav" aria-label="Main">
      <ul>
{nav}
      </ul>
    </nav>
  </header>
  <div class="breadcrumb"><a href="/">Home</a> &rsaquo; <a href="/articles/">Articles</a> &rsaquo; Abstract</div>
  <div class="layout">
    <aside class="sidebar">
      <h2>Related articles</h2>
      <ul>
{related}
      </ul>
      <p class="promo">Sign up for our weekly newsletter and never miss an issue.</p>
    </aside>
"""
    bottom = f"""  </div>
  <div class="cookie-banner" id="cookie-banner">
    <p>We use cookies to improve your experience and to measure how our site is used.
    By continuing to browse you agree to our use of cookies.</p>
    <button type="button">Accept all</button> <button type="button">Manage preferences</button>
  </div>
  <footer class="site-footer">
    <p>&copy; 2026 {SITE_NAME}. All rights reserved.</p>
    <p><a href="/privacy/">Privacy policy</a> | <a href="/terms/">Terms of use</a> | <a href="/accessibility/">Accessibility</a></p>
  </footer>
  <script>
    // consent and analytics stub: identical on every page
    window.dataLayer = window.dataLayer || [];
    function acceptCookies() {{ document.getElementById("cookie-banner").style.display = "none";
      window.dataLayer.push({{event: "consent", analytics: true}}); }}
    document.querySelectorAll(".cookie-banner button").forEach(function (b) {{ b.onclick = acceptCookies; }});
  </script>
</body>
</html>
"""
    return top, bottom


_TOP, _BOTTOM = _boilerplate()


def html_page(title, paras):
    t = html.escape(title, quote=False)
    body = "\n".join(f"        <p>{html.escape(p, quote=False)}</p>" for p in paras)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{t} | {SITE_NAME}</title>
  <style>body {{ font-family: sans-serif; }} .cookie-banner {{ position: fixed; bottom: 0; }}</style>
</head>
<body>
{_TOP}    <main>
      <article>
        <h1 id="title">{t}</h1>
{body}
      </article>
    </main>
{_BOTTOM}"""


# ---------------------------------------------------------------- main

def docx_file(title, paras):
    """A minimal DOCX: the title in the Heading1 style, each paragraph a Normal one, the title in core.xml."""
    import io
    import zipfile
    from xml.sax.saxutils import escape

    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr><w:r><w:t xml:space="preserve">{escape(text)}'
                   f"</w:t></w:r></w:p>" for style, text in [("Heading1", title)] + [("Normal", p) for p in paras])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"/>')
        z.writestr("word/document.xml", f'<?xml version="1.0"?><w:document xmlns:w="{w}"><w:body>{body}'
                   "</w:body></w:document>")
        z.writestr("docProps/core.xml", '<?xml version="1.0"?><cp:coreProperties xmlns:cp="http://schemas.'
                   'openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/'
                   f'1.1/"><dc:title>{escape(title)}</dc:title></cp:coreProperties>')
    return out.getvalue()


# Markdown: the title as a heading, the paragraphs; text: the title on the first line, blank-line paragraphs.
OTHER = {"html": lambda title, paras: html_page(title, paras).encode("utf-8"),
         "md": lambda title, paras: "\n\n".join([f"# {title}", *paras]).encode("utf-8") + b"\n",
         "txt": lambda title, paras: "\n\n".join([title, *paras]).encode("utf-8") + b"\n",
         "docx": docx_file}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="BEIR directory (default: %(default)s)")
    ap.add_argument("--out", required=True, help="folder to write (created; files in it are overwritten)")
    ap.add_argument("--format", choices=["pdf", "html", "md", "txt", "docx"], default="pdf")
    ap.add_argument("--limit", type=int, default=0, help="only the first N documents (0: all)")
    ap.add_argument("--font", default="", help="a .ttf for the PDF text instead of core Helvetica (keeps Unicode)")
    args = ap.parse_args(argv)

    make = _pdf_class(args.font) if args.format == "pdf" else None
    t0 = time.perf_counter()
    written, nbytes = set(), 0
    for i, doc in enumerate(read_jsonl(os.path.join(args.data, "corpus.jsonl"))):
        if args.limit and i >= args.limit:
            break
        rel = relative_path(str(doc["_id"]), args.format)
        title, paras = doc.get("title", "") or "", paragraphs(doc.get("text", "") or "")
        data = make(title, paras) if make else OTHER[args.format](title, paras)
        path = os.path.join(args.out, *rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written.add(str(doc["_id"]))
        nbytes += len(data)

    queries = {str(q["_id"]): q["text"] for q in read_jsonl(os.path.join(args.data, "queries.jsonl"))}
    qrels = {s: read_qrels(os.path.join(args.data, "qrels", f"{s}.tsv")) for s in ("train", "test")}
    both = set(qrels["train"]) & set(qrels["test"])
    corpus_ids = written if not args.limit else None
    n_q = missing = skipped = 0
    with open(os.path.join(args.out, "questions.jsonl"), "w", encoding="utf-8") as f:
        for split in ("train", "test"):
            for qid, docs in qrels[split].items():
                if qid not in queries:
                    missing += 1
                    continue
                if corpus_ids is not None:
                    missing += sum(d not in corpus_ids for d in docs)
                    docs = [d for d in docs if d in corpus_ids]
                elif not all(d in written for d in docs):
                    skipped += 1
                    continue
                if not docs:
                    continue
                line = {"_id": qid + ("-test" if split == "test" and qid in both else ""), "question": queries[qid],
                        "files": [relative_path(d, args.format) for d in docs], "split": split}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                n_q += 1
    secs = time.perf_counter() - t0
    print(f"{len(written)} {args.format} files ({nbytes / 1e6:.1f} MB) and {n_q} questions in {args.out} "
          f"in {secs:.1f} s; queries in both splits: {len(both)}; missing relevant ids or query texts: {missing}; "
          f"questions left out by --limit: {skipped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
