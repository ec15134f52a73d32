"""A document file -> its title and the passages a retriever indexes.

`parse(read_bytes(path), path)` sniffs the format (by content first, then by extension), extracts the text as blocks
(headings, paragraphs, code, tables) with where each came from (page, anchor), and drops what repeats
on every page or every web page rather than saying anything (running headers and footers, page
numbers, navigation). `Splitter` packs the blocks into passages that fit the encoder: cut at headings,
then paragraphs, then sentences, then words, never mid-word; code and tables stay whole where they fit;
each passage carries its document's title and the heading it sits under, which the encoder reads too.

A file that cannot give text raises `Skip` with the one-line reason a user can act on.

Libraries (bench/results/document-readers-cpu.md): PDF text through pypdfium2 (PDFium, the PDF engine
of Chrome); HTML through lxml's parser; Markdown, reStructuredText and plain text line by line; DOCX's
XML through lxml. Nothing is downloaded and nothing is OCR'd.
"""
import gzip
import io
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass

VERSION = 1  # of what a file's passages are made by: a dataset read by another version is read again
FORMATS = ("pdf", "html", "markdown", "rst", "text", "docx")
EXTENSIONS = {".pdf": "pdf", ".html": "html", ".htm": "html", ".xhtml": "html", ".md": "markdown",
              ".markdown": "markdown", ".rst": "rst", ".txt": "text", ".text": "text", ".docx": "docx"}
# Text that is data, code for a browser or a printer, not prose to search: a skip like a binary's.
NOT_DOCUMENTS = {".json": "JSON data", ".jsonl": "JSON data", ".css": "a style sheet", ".js": "a script",
                 ".svg": "an image", ".ps": "PostScript (convert it to PDF)", ".eps": "PostScript (convert it to PDF)",
                 ".xml": "XML data", ".map": "a source map"}
MAX_BYTES = 256 << 20  # a larger file (or a .gz unpacking past it) is skipped, not read into memory


class Skip(Exception):
    """A file that gives no text; str(e) is the reason, in words a user can act on."""


@dataclass
class Block:
    kind: str          # heading | text | code | table
    text: str
    level: int = 0     # headings: 1 (the top) .. 6
    page: int = 0      # PDFs: 1-based; 0 elsewhere
    anchor: str = ""   # HTML ids, Markdown / rST heading slugs


# ---------------------------------------------------------------------------- bytes -> format -> blocks

def read_bytes(path):
    """The bytes of a file, Skip where they cannot be had."""
    try:
        if os.path.getsize(path) > MAX_BYTES:
            raise Skip(f"larger than {MAX_BYTES >> 20} MB")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise Skip("a broken link (it points to nothing)" if os.path.islink(path) else "vanished while being read") from None
    except OSError as e:
        raise Skip(f"cannot be read ({e.strerror or e})") from None


def parse(data, name, drop=()):
    """(format, title, [Block], edges) of a file's bytes; `name` (its path) says the extension. PDFs only:
    `drop`, running lines (edge keys) the folder found; `edges`, a short PDF's edge keys, for the folder."""
    name = name.lower()
    if not data:
        raise Skip("empty file")
    if name.endswith(".gz"):
        name = name[:-3]
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                data = f.read(MAX_BYTES + 1)
        except (OSError, EOFError) as e:
            raise Skip(f"damaged gzip ({e})") from None
        if len(data) > MAX_BYTES:
            raise Skip(f"unpacks to more than {MAX_BYTES >> 20} MB")
        if not data:
            raise Skip("empty file")
    fmt = sniff(data, name)
    stem = os.path.splitext(os.path.basename(name))[0]
    edges = []
    if fmt == "pdf":
        title, blocks, edges = read_pdf(data, stem, drop)
    elif fmt == "docx":
        title, blocks = read_docx(data, stem)
    elif fmt == "html":
        title, blocks = read_html(data, stem)
    else:
        text = decode(data)
        title, blocks = {"markdown": read_markdown, "rst": read_rst, "text": read_text}[fmt](text, stem)
    blocks = [b for b in blocks if b.text.strip()]
    if blocks and not any(b.kind != "heading" for b in blocks):
        raise Skip("headings only, no text under them")
    if not blocks:
        raise Skip({"pdf": "no text layer (a scan or images only: OCR it first, this does not OCR)",
                    "html": "no text once scripts, styles and navigation are dropped"}.get(fmt, "no text"))
    return fmt, title, blocks, edges


def sniff(data, name):
    """The format of `data`, by its magic bytes or markup first and its extension second; Skip where
    neither says it is a document (a binary that is not a PDF or DOCX)."""
    head, ext = data[:1024], os.path.splitext(name)[1]
    if b"%PDF-" in head:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if ext == ".docx" or b"word/document.xml" in data:
            return "docx"
        raise Skip("not a document: a zip archive")
    if ext in (".pdf", ".docx"):
        raise Skip(f"named {ext} but is not one (its first bytes say otherwise)")
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html")) or (start.startswith(b"<?xml") and b"<html" in start):
        return "html"
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if ext in NOT_DOCUMENTS or start.startswith(b"%!ps"):
        raise Skip(f"not a document: {NOT_DOCUMENTS.get(ext, 'PostScript (convert it to PDF)')}")
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise Skip("not a document: binary")
    return "text"


def decode(data):
    """Text of a text file: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise Skip("damaged UTF-16 text") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise Skip("unknown text encoding (not UTF-8, UTF-16 or Windows-1252): save it as UTF-8") from None
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f")
    if controls > len(text) // 100:
        raise Skip("unknown text encoding (not UTF-8, UTF-16 or Windows-1252): save it as UTF-8")
    return text


def clean(text):
    return " ".join(text.split())


# ---------------------------------------------------------------------------- PDF

PAGE_NUMBER = re.compile(r"^(page\s*)?[-–—(\[]?\s*\d{1,4}\s*[-–—)\]]?(\s*(of|/)\s*\d{1,4})?$", re.I)
NUMBERED_HEADING = re.compile(r"^(\d{1,2}(\.\d{1,2})*\.?|[IVX]{1,5}\.|[A-Z]\.)\s+[A-Z]\S*")
EDGE = 2  # lines at the top and the bottom of a page that may be a running header or footer
RUNNING_PAGES = 3  # a document this long tells its own running lines; a shorter one, its folder


def read_pdf(data, stem, drop=()):
    """(title, blocks, edges): `drop`, edge keys to drop besides those repeated within the file; `edges`, the
    edge keys of a file too short to tell its own running lines (for the folder to tell: prepare_data.py)."""
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        why = str(e).split("(PDFium: ", 1)[-1].rstrip(").")
        raise Skip("encrypted (needs a password)" if "password" in why.lower() else f"damaged PDF ({why})") from None
    try:
        pages = []
        for i in range(len(pdf)):
            page = pdf[i]
            # PDFium marks a hyphen it takes for a break inside a word with U+FFFE and joins the lines
            text = page.get_textpage().get_text_range().replace("\ufffe", "")
            pages.append([ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")])
        meta = (pdf.get_metadata_dict().get("Title") or "").strip()
    except pdfium.PdfiumError as e:
        raise Skip(f"damaged PDF ({e})") from None
    finally:
        pdf.close()
    pages = [[ln for ln in lines if ln] for lines in pages]
    edges = sorted({edge_key(ln) for lines in pages for j, ln in enumerate(lines) if at_edge(j, len(lines))}) \
        if len(pages) < RUNNING_PAGES else []
    repeated = running_lines(pages) | set(drop)
    bodies = [[ln for j, ln in enumerate(lines) if not (at_edge(j, len(lines)) and
                                                          (edge_key(ln) in repeated or PAGE_NUMBER.match(ln)))]
              for lines in pages]
    if meta and re.search(r"(^untitled|\.(docx?|pdf|tex|indd)$|^microsoft word)", meta, re.I):
        meta = ""  # a file name or a tool's placeholder, not a title
    title, first = meta, bodies[0] if bodies else []
    # The title as typeset on page 1 (one to three lines) is not body text, nor is what sits above it
    # (a journal's name, a running head); without a title in the metadata, a short first line is it.
    spans = [(k, span) for k in range(min(6, len(first))) for span in (1, 2, 3) if k + span <= len(first)]
    found = next(((k, span) for k, span in spans if meta and clean(" ".join(first[k:k + span])) == clean(meta)), None)
    if found:
        del first[:found[0] + found[1]]
    elif not meta and first and len(first[0]) <= 200:
        title = first.pop(0)
    blocks = [b for number, body in enumerate(bodies, 1) for b in pdf_blocks(body, number)]
    return clean(title) or stem, blocks, edges


def at_edge(j, n):
    """Whether line j of a page of n lines may be a header or footer: one of the EDGE first or last, and
    never the middle of a short page (a page of three lines keeps its middle one)."""
    edge = min(EDGE, (n - 1) // 2)
    return j < edge or j >= n - edge


def edge_key(line):
    """A header or footer line with its numbers blanked: "Page 3 of 9" and "Page 4 of 9" are one line."""
    return re.sub(r"\d+", "#", line.lower())


def running_lines(pages):
    """Edge lines (numbers blanked) found on more than half of the pages of a document of RUNNING_PAGES or more."""
    if len(pages) < RUNNING_PAGES:
        return set()
    seen = Counter()
    for lines in pages:
        seen.update({edge_key(ln) for j, ln in enumerate(lines) if at_edge(j, len(lines))})
    return {key for key, n in seen.items() if n > len(pages) / 2}


def pdf_blocks(lines, page):
    """Paragraphs of one page's lines: a line ends its paragraph when it is much shorter than the page's
    long lines and ends a sentence; a short numbered line ("2.1 Methods") is a heading; a hyphen broken
    at a line's end is joined."""
    if not lines:
        return []
    full = sorted(len(ln) for ln in lines)[int(len(lines) * 0.9)]  # a long line's length on this page
    blocks, para = [], []

    def flush():
        if para:
            blocks.append(Block("text", " ".join(para), page=page))
            para.clear()

    for ln in lines:
        if NUMBERED_HEADING.match(ln) and len(ln) < 80 and not ln.endswith((".", ",", ";")) and len(ln.split()) <= 10:
            flush()
            blocks.append(Block("heading", ln, level=ln.split()[0].count(".") + 1 if ln[0].isdigit() else 1, page=page))
            continue
        if para and para[-1].endswith("-") and len(para[-1]) > 1 and para[-1][-2].isalpha() and ln[:1].islower():
            para[-1] = para[-1][:-1] + ln  # "retrie-" + "val"
        else:
            para.append(ln)
        if len(ln) < 0.8 * full and ln.endswith((".", "!", "?", ":")):
            flush()
    flush()
    return blocks


# ---------------------------------------------------------------------------- HTML

HEADINGS = {f"h{i}": i for i in range(1, 7)}
LEAVES = {"p", "pre", "table", "li", "dt", "dd", "blockquote", "figcaption", "caption", "address", "summary", "td"}
INLINE = {"a", "span", "em", "strong", "b", "i", "u", "s", "code", "sub", "sup", "abbr", "small", "mark", "br",
          "img", "q", "cite", "time", "kbd", "var", "label", "tt", "font", "del", "ins", "dfn", "samp", "wbr"}
DROP = ("script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside", "form", "iframe",
        "button", "select", "object", "embed", "canvas", "dialog", "menu")
NOT_CONTENT_ROLES = {"navigation", "banner", "contentinfo", "search"}
BOILERPLATE = re.compile(r"(^|[-_\s])(nav|navbar|navigation|menu|sidebar|breadcrumbs?|footer|header|cookies?|"
                         r"cookie-banner|banner|skip-link|share|social|advert|ads)([-_\s]|$)", re.I)


def read_html(data, stem):
    import lxml.html
    from lxml import etree

    try:
        root = lxml.html.document_fromstring(data)
    except (etree.ParserError, ValueError) as e:
        raise Skip(f"not parseable as HTML ({e})") from None
    title = clean(root.findtext(".//title") or "")
    # One walk, not XPath unions: libxml2 merges large node sets in quadratic time (a 3 MB page: 30 s).
    doomed, mains, articles, stack = [], [], [], [root]
    while stack:
        el = stack.pop()
        tag = el.tag if isinstance(el.tag, str) else ""
        if boilerplate(el, tag):
            doomed.append(el)
            continue
        if tag == "main" or el.get("role") == "main":
            mains.append(el)
        elif tag == "article":
            articles.append(el)
        stack.extend(reversed(el))
    for el in doomed:
        drop(el)
    mains = mains or articles
    body = mains[0] if len(mains) == 1 else root.find("body") if root.find("body") is not None else root
    blocks = []
    html_blocks(body, blocks, [""])
    # A page's <title> is often its heading and the site's name ("Installing | ACME docs"): the heading is the title
    h1 = next((b.text for b in blocks if b.kind == "heading" and b.level == 1), "")
    if h1 and (not title or h1.lower() in title.lower()):
        title = h1
    return title or next((b.text for b in blocks if b.kind == "heading"), "") or stem, blocks


def boilerplate(el, tag):
    """Whether an element is not the page's content: scripts, styles, navigation, banners, comments."""
    if not tag:  # a comment or a processing instruction
        return el.getparent() is not None
    if tag in DROP or el.get("role") in NOT_CONTENT_ROLES or el.get("aria-hidden") == "true" or el.get("hidden") is not None:
        return True
    if tag in ("html", "body", "main", "article") or tag in INLINE or tag in HEADINGS:
        return False  # a class names a container's role; a link's ("header": mdBook's heading anchors) does not
    names = f"{el.get('class', '')} {el.get('id', '')}"
    return names != " " and bool(BOILERPLATE.search(names))


def drop(el):
    """Remove an element but keep its tail (the text after it belongs to its parent)."""
    parent = el.getparent()
    if parent is not None:
        el.drop_tree()


def html_blocks(el, out, anchor):
    """Blocks of `el`'s subtree in reading order; `anchor` ([current id]) follows the last heading or
    section with an id."""
    inline = [el.text or ""]

    def flush():
        text = clean(" ".join(inline))
        if text:
            out.append(Block("text", text, anchor=anchor[0]))
        inline.clear()

    for child in el:
        tag = child.tag if isinstance(child.tag, str) else ""
        if tag in INLINE:
            inline.append(child.text_content() if tag != "br" else "\n")
            inline.append(child.tail or "")
            continue
        flush()
        if tag in HEADINGS:
            anchor[0] = child.get("id") or next((a.get("id") or a.get("name") for a in child.iter("a")
                                                 if a.get("id") or a.get("name")), "") or anchor[0]
            out.append(Block("heading", clean(child.text_content()), level=HEADINGS[tag], anchor=anchor[0]))
        elif tag == "pre":
            out.append(Block("code", child.text_content().strip("\n"), anchor=anchor[0]))
        elif tag == "table":
            rows = [" | ".join(clean(c.text_content()) for c in row.iter("td", "th")) for row in child.iter("tr")]
            out.append(Block("table", "\n".join(r for r in rows if r.strip(" |")), anchor=anchor[0]))
        elif tag in LEAVES and not any(isinstance(c.tag, str) and (c.tag in LEAVES or c.tag in HEADINGS)
                                       for c in child.iterdescendants()):
            out.append(Block("text", clean(child.text_content()), anchor=anchor[0]))
        else:  # a container: div, section, ul, ...
            if tag == "section" and child.get("id"):
                anchor[0] = child.get("id")
            html_blocks(child, out, anchor)
        inline.append(child.tail or "")
    flush()


# ---------------------------------------------------------------------------- Markdown, rST, text, DOCX

def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.lower()).strip())


def paragraphs(lines, out, anchor=""):
    """Blank-line separated paragraphs of `lines` as text blocks."""
    para = []
    for ln in lines + [""]:
        if ln.strip():
            para.append(ln.strip())
        elif para:
            out.append(Block("text", " ".join(para), anchor=anchor))
            para = []


MD_INLINE = [(re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"), (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),
             (re.compile(r"<!--.*?-->"), ""), (re.compile(r"(\*\*|__|`)"), ""),
             (re.compile(r"^\s{0,3}([-*+]|\d+[.)])\s+"), "")]


def md_inline(line):
    for pattern, repl in MD_INLINE:
        line = pattern.sub(repl, line)
    return line


def read_markdown(text, stem):
    lines = text.split("\n")
    title = ""
    if lines and lines[0].strip() == "---" and "---" in (ln.strip() for ln in lines[1:]):  # YAML front matter
        end = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---")
        title = next((ln.split(":", 1)[1].strip().strip("\"'") for ln in lines[1:end]
                      if ln.lower().startswith("title:")), "")
        lines = lines[end + 1:]
    blocks, para, anchor, i = [], [], "", 0
    while i < len(lines):
        ln = lines[i]
        fence = re.match(r"^\s{0,3}(```+|~~~+)", ln)
        atx = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", ln)
        setext = i + 1 < len(lines) and ln.strip() and re.match(r"^\s{0,3}(=+|-+)\s*$", lines[i + 1]) and not para
        if fence or atx or setext or ln.lstrip().startswith("|"):
            paragraphs([md_inline(p) for p in para], blocks, anchor)
            para = []
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence.group(1))), len(lines))
            blocks.append(Block("code", "\n".join(lines[i + 1:end]), anchor=anchor))
            i = end + 1
        elif atx or setext:
            heading = md_inline(atx.group(2) if atx else ln.strip())
            anchor = slug(heading)
            blocks.append(Block("heading", heading, level=len(atx.group(1)) if atx else
                                (1 if lines[i + 1].strip()[0] == "=" else 2), anchor=anchor))
            i += 1 if atx else 2
        elif ln.lstrip().startswith("|"):
            end = next((j for j in range(i, len(lines)) if not lines[j].lstrip().startswith("|")), len(lines))
            rows = [md_inline(r.strip()) for r in lines[i:end] if not re.fullmatch(r"[\s|:-]+", r)]
            blocks.append(Block("table", "\n".join(rows), anchor=anchor))
            i = end
        else:
            para.append(ln)
            i += 1
    paragraphs([md_inline(p) for p in para], blocks, anchor)
    title = title or next((b.text for b in blocks if b.kind == "heading" and b.level == 1), "")
    return title or stem, blocks


RST_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")
RST_INLINE = [(re.compile(r":[\w:+-]+:`([^`<]*?)(\s*<[^>]*>)?`"), r"\1"), (re.compile(r"`([^`<]*?)\s*<[^>]*>`_"), r"\1"),
              (re.compile(r"(``|\*\*|`_?)"), "")]


def read_rst(text, stem):
    lines = text.split("\n")
    blocks, para, anchor, i, levels = [], [], "", 0, []

    def flush():
        nonlocal para
        out = [p for p in para]
        para = []
        for pattern, repl in RST_INLINE:
            out = [pattern.sub(repl, p) for p in out]
        paragraphs(out, blocks, anchor)

    while i < len(lines):
        ln = lines[i]
        over = RST_UNDERLINE.match(ln) and i + 2 < len(lines) and RST_UNDERLINE.match(lines[i + 2]) and lines[i + 1].strip()
        under = (ln.strip() and not RST_UNDERLINE.match(ln) and i + 1 < len(lines) and RST_UNDERLINE.match(lines[i + 1])
                 and len(lines[i + 1].strip()) >= len(ln.strip()) and not ln.startswith(" "))
        if over or under:
            flush()
            heading = (lines[i + 1] if over else ln).strip()
            style = (("o" if over else "u") + (ln if over else lines[i + 1]).strip()[0])
            if style not in levels:
                levels.append(style)
            anchor = slug(heading)
            blocks.append(Block("heading", heading, level=min(6, levels.index(style) + 1), anchor=anchor))
            i += 3 if over else 2
        elif ln.rstrip().endswith("::") and not ln.lstrip().startswith(".."):
            para.append(ln.rstrip()[:-1] if not ln.rstrip().endswith(" ::") else ln.rstrip()[:-3])
            flush()
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith((" ", "\t"))):
                j += 1
            code = "\n".join(lines[i + 1:j]).strip("\n")
            if code:
                blocks.append(Block("code", code, anchor=anchor))
            i = j
        elif ln.lstrip().startswith(".. "):
            flush()
            rest = ln.lstrip()[3:]
            if "::" in rest and rest.split("::", 1)[1].strip():
                para.append(rest.split("::", 1)[1].strip())  # `.. note:: text`
            i += 1
        else:
            para.append(ln)
            i += 1
    flush()
    title = next((b.text for b in blocks if b.kind == "heading"), "")
    return title or stem, blocks


def read_text(text, stem):
    blocks = []
    paragraphs(text.replace("\f", "\n\n").split("\n"), blocks)
    first = blocks[0].text if blocks else ""
    title = first if len(first) <= 100 and len(blocks) > 1 else stem
    if title == first and blocks:
        blocks = blocks[1:]
    return title, blocks


W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def read_docx(data, stem):
    from lxml import etree

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            body = etree.fromstring(z.read("word/document.xml"), etree.XMLParser(resolve_entities=False))
            core = z.read("docProps/core.xml") if "docProps/core.xml" in z.namelist() else None
    except (zipfile.BadZipFile, KeyError, etree.XMLSyntaxError, OSError) as e:
        raise Skip(f"damaged DOCX ({e})") from None
    blocks = []
    for el in body.iter(f"{W}p", f"{W}tbl"):
        if el.tag == f"{W}tbl":
            rows = [" | ".join(clean("".join(c.itertext())) for c in row.iter(f"{W}tc")) for row in el.iter(f"{W}tr")]
            blocks.append(Block("table", "\n".join(rows)))
        elif not any(a.tag == f"{W}tbl" for a in el.iterancestors()):
            text = "".join(t.text or "" if t.tag == f"{W}t" else "\t" for t in el.iter(f"{W}t", f"{W}tab"))
            style = el.find(f"{W}pPr/{W}pStyle")
            style = style.get(f"{W}val", "") if style is not None else ""
            level = re.match(r"(?i)heading\s*(\d)|title", style)
            if level:
                blocks.append(Block("heading", clean(text), level=int(level.group(1) or 1) if level.group(1) else 1))
            else:
                blocks.append(Block("text", clean(text)))
    title = ""
    if core:
        try:
            title = clean(etree.fromstring(core).findtext("{http://purl.org/dc/elements/1.1/}title") or "")
        except etree.XMLSyntaxError:
            pass
    title = title or next((b.text for b in blocks if b.kind == "heading" and b.text), "")
    return title or stem, blocks


# ---------------------------------------------------------------------------- blocks -> passages

SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
ABBREVIATIONS = re.compile(r"(\b(e\.g|i\.e|et al|etc|vs|cf|Fig|Figs|Eq|Dr|Mr|Mrs|Ms|Prof|No|Vol|approx|resp)|\b[A-Z])\.$")


def sentences(text):
    """`text` cut after . ! ? followed by a capital or a digit, except after common abbreviations."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        if ABBREVIATIONS.search(text[start:m.start()]):
            continue
        out.append(text[start:m.start()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


class Splitter:
    """Packs blocks into passages of at most `max_tokens` tokens of `tokenizer` (a Hugging Face tokenizer,
    or None: whitespace words), title and heading included, with `overlap` tokens of whole sentences
    carried from a passage into the next one of the same section."""

    def __init__(self, tokenizer, max_tokens, overlap):
        self.tokenizer, self.max_tokens, self.overlap = tokenizer, max_tokens, overlap

    def count(self, texts):
        if self.tokenizer is None:
            return [len(t.split()) for t in texts]
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def __call__(self, title, blocks):
        """[{"title", "text", "section", "page", "anchor"}] of one document."""
        passages, path = [], []  # path: the headings above, [(level, text)]
        section_blocks, key = [], None
        for b in blocks + [None]:
            here = None if b is None else (" › ".join(t for _, t in path if t != title), b.page, b.anchor)
            if b is not None and b.kind == "heading":
                path = [(lv, t) for lv, t in path if lv < b.level] + [(b.level, b.text)]
                continue
            if section_blocks and (b is None or here != key):
                passages += self.section(title, key, section_blocks)
                section_blocks = []
            if b is not None:
                key = here
                section_blocks.append(b)
        return self.merge_small(passages)

    def merge_small(self, passages):
        """Each passage under a quarter of the length joined by the next ones of its page while they fit, their
        headings written in as lines: an API reference's one-line sections ("Source") are not passages alone."""
        if len(passages) < 2:
            return passages
        headings = [p["section"].rsplit(" › ", 1)[-1] for p in passages]
        sizes = self.count([f"{p['title']} {p['text']}" for p in passages])
        adds = [h + t + 1 for h, t in zip(self.count(headings), self.count([p["text"] for p in passages]))]
        out, used = [passages[0]], sizes[0]
        for p, heading, size, add in zip(passages[1:], headings[1:], sizes[1:], adds[1:]):
            last = out[-1]
            if used < self.max_tokens // 4 and last["page"] == p["page"] and used + add <= self.max_tokens:
                heading = heading if p["section"] != last["section"] else ""
                out[-1] = {**last, "text": "\n".join(t for t in (last["text"], heading, p["text"]) if t)}
                used += add
            else:
                out.append(p)
                used = size
        return out

    def section(self, title, key, blocks):
        section, page, anchor = key
        head = f"{title} › {section}" if section else title
        room = self.max_tokens - self.count([head])[0] - 1
        room = max(room, self.max_tokens // 4)  # a heading longer than the passage: it is cut by the encoder
        units = []  # (text, tokens, joiner before it, kind)
        for b in blocks:
            if b.kind in ("code", "table"):
                parts = [b.text] if self.count([b.text])[0] <= room else b.text.split("\n")
                units += [(p, None, "\n", "block") for p in parts]
            else:
                units += [(s, None, "\n" if j == 0 else " ", "sentence") for j, s in enumerate(sentences(b.text))]
        sizes = self.count([u[0] for u in units])
        units = [piece for u, n in zip(units, sizes) for piece in self.fit((u[0], n, u[2], u[3]), room)]
        out, current, used = [], [], 0
        for i, unit in enumerate(units):
            if current and used + unit[1] > room:
                out.append(current)
                current = self.carry(current) if unit[3] == "sentence" else []
                used = sum(u[1] for u in current)
                if used + unit[1] > room:
                    current, used = [], 0
            elif current and unit[2] == "\n" and used > room // 2:
                # a paragraph that will not fit whole in what is left starts the next passage instead
                para = next((j for j in range(i + 1, len(units)) if units[j][2] == "\n"), len(units))
                size = sum(u[1] for u in units[i:para])
                if used + size > room >= size:
                    out.append(current)
                    current, used = [], 0
            current.append(unit)
            used += unit[1]
        if current:
            out.append(current)
        return [{"title": head, "text": "".join((u[2] if j else "") + u[0] for j, u in enumerate(p)).strip(),
                 "section": section, "page": page, "anchor": anchor} for p in out]

    def carry(self, passage):
        """The last whole sentences of `passage` within `overlap` tokens (never all of it)."""
        kept, size = [], 0
        for unit in reversed(passage[1:]):
            if unit[3] != "sentence" or size + unit[1] > self.overlap:
                break
            kept.insert(0, unit)
            size += unit[1]
        return [(u[0], u[1], "\n" if j == 0 else u[2], u[3]) for j, u in enumerate(kept)]

    def fit(self, unit, room):
        """A unit over `room` tokens cut at words (never mid-word) into pieces that fit."""
        text, n, joiner, kind = unit
        if n <= room:
            return [unit]
        words, pieces, start = text.split(" "), [], 0
        sizes = self.count(words)
        piece, used = [], 0
        for w, s in zip(words, sizes):
            if piece and used + s > room:
                pieces.append((" ".join(piece), used, joiner if not pieces else " ", kind))
                piece, used = [], 0
            piece.append(w)
            used += s
        if piece:
            pieces.append((" ".join(piece), used, joiner if not pieces else " ", kind))
        return pieces
