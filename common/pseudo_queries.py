"""Training queries made from documents alone, for a corpus that comes without questions.

Three ways to turn one passage into (query, positive) pairs; prepare_data.py --pseudo_queries uses them
(its fourth, generate, is a language model's: common/generator.py):
- title: the document's own title is the query and its text, without the title, the positive (the
  title-body pairs of Contriever's and E5's pre-training; a paper title reads more like a claim or a
  question than any sentence cut from the abstract does).
- ict: the inverse cloze task (Lee et al. 2019). One sentence of the passage is the query. With
  probability `remove_prob` it is cut out of the passage, so the pair cannot be matched on copied words
  alone; the rest of the time it stays, so the model still learns that overlap is evidence.
- crop: independent cropping (Izacard et al. 2022, Contriever). Two random spans of the passage, each
  `min_ratio`..`max_ratio` of its words: one is the query, the other the positive.

The spans keep the passage's own characters (newlines and indentation in code), so a positive looks
like the documents the model will index.
"""
import re

# A sentence: up to ., ! or ? before whitespace, or to the end of its line (code, lists, titles).
SENTENCE = re.compile(r"\S[^\n]*?(?:[.!?](?=\s|$)|$)", re.M)
WORD = re.compile(r"\S+")
METHODS = ("title", "ict", "crop", "generate")


def sentence_spans(text):
    """(start, end) of each sentence of text, in order."""
    return [m.span() for m in SENTENCE.finditer(text)]


def title_query(title, text, min_words=3):
    """(title, text) when the title has min_words words and the text is not empty, else None."""
    title = " ".join(title.split())
    return (title, text) if len(title.split()) >= min_words and text.strip() else None


def ict(text, rng, remove_prob=0.9, min_words=4):
    """(query, positive) from one passage, or None when it has fewer than two sentences or no
    sentence of min_words words."""
    spans = sentence_spans(text)
    candidates = [i for i, (s, e) in enumerate(spans) if len(text[s:e].split()) >= min_words]
    if len(spans) < 2 or not candidates:
        return None
    start, end = spans[rng.choice(candidates)]
    query = text[start:end]
    if rng.random() < remove_prob:
        left, right = text[:start].rstrip(" \t"), text[end:].lstrip(" \t")
        same_line = left and right and not left.endswith("\n") and not right.startswith("\n")
        positive = (left + (" " if same_line else "") + right).strip("\n").rstrip()  # keeps code's indentation
    else:
        positive = text
    return " ".join(query.split()), positive


def crop(text, rng, min_ratio=0.1, max_ratio=0.5, min_words=8):
    """(query span, positive span) of one passage, or None when it has fewer than min_words words."""
    words = [m.span() for m in WORD.finditer(text)]
    n = len(words)
    if n < min_words:
        return None

    def span():
        length = max(1, round(rng.uniform(min_ratio, max_ratio) * n))
        first = rng.randrange(n - length + 1)
        return text[words[first][0]:words[first + length - 1][1]]

    return " ".join(span().split()), span()
