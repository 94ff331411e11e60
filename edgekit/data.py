"""Evaluation and calibration text: user files, or the corpus shipped inside the package.

The built-in corpus (`edgekit/corpus/`, public-domain and CC0 prose; its SOURCES.md says where each text comes
from) has two disjoint halves: `calibration/` feeds quantizer calibration and distillation, `eval/` is held
out for fidelity, so calibration never sees the evaluation text. gensim's test corpora (Lee, Wikipedia, movie
reviews) remain available to the benchmarks and tests as an optional extra; edgekit itself never needs gensim.
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

from edgekit.errors import InputError

CORPUS = Path(__file__).parent / "corpus"


@lru_cache(maxsize=2)
def _documents(split: str) -> tuple[str, ...]:
    """The corpus documents of one split, in file order; paragraphs are separated by blank lines."""
    files = sorted((CORPUS / split).glob("*.txt"))
    if not files:
        raise InputError(f"{CORPUS / split}: the built-in corpus is missing from this installation; reinstall edgekit "
                         "or pass your own text file")
    docs = []
    for path in files:
        paragraphs = [" ".join(par.split()) for par in path.read_text(encoding="utf-8").split("\n\n")]
        docs.append("\n\n".join(par for par in paragraphs if par))
    return tuple(docs)


def eval_documents() -> list[str]:
    """Held-out evaluation documents, each independent of the others (for resampling whole documents)."""
    return list(_documents("eval"))


def calibration_documents() -> list[str]:
    return list(_documents("calibration"))


def _paragraphs(docs: list[str]) -> list[str]:
    return [par for doc in docs for par in doc.split("\n\n")]


def gensim_data_dir() -> Path:
    spec = importlib.util.find_spec("gensim")  # not imported: gensim pulls scipy and smart_open
    if spec is None or not spec.submodule_search_locations:
        raise InputError("gensim's text corpora need gensim: pip install --no-deps gensim (or pip install 'edgekit[corpora]')")
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not folder.is_dir():
        raise InputError(f"{folder}: gensim is installed without its test data; reinstall it")
    return folder


def read_text_file(path: Path | str, *, what: str = "text file") -> list[str]:
    """Non-empty lines of a UTF-8 text file; anything else is an InputError saying how to fix it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); re-encode it, e.g. iconv -t utf-8"
        ) from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{what} {path} is empty")
    return lines


@lru_cache(maxsize=4)
def _lee(name: str) -> tuple[str, ...]:
    lines = (gensim_data_dir() / name).read_text(encoding="latin-1").splitlines()
    return tuple(ln.strip() for ln in lines if ln.strip())


@lru_cache(maxsize=1)
def wikipedia_articles(max_articles: int = 20) -> tuple[str, ...]:
    """Plain text of the first Wikipedia articles in gensim's shortened enwiki dump (markup stripped)."""
    path = gensim_data_dir() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        xml = fh.read()
    articles = []
    for body in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S):
        text = _strip_wiki(html.unescape(body))
        if len(text) > 500 and not text.lower().startswith("#redirect"):
            articles.append(text)
        if len(articles) >= max_articles:
            break
    return tuple(articles)


def _strip_wiki(text: str) -> str:
    for _ in range(3):  # nested templates
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)  # tables
    text = re.sub(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|<[^>]+>", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ?([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}|={2,}", "", text)
    return " ".join(text.split())


def calibration_texts(n: int = 32) -> list[str]:
    """Built-in calibration samples: paragraphs of the corpus's calibration half (never used for evaluation)."""
    return _paragraphs(calibration_documents())[:n]


def eval_texts() -> list[str]:
    """Built-in held-out evaluation text: the paragraphs of the eval documents, in order."""
    return _paragraphs(eval_documents())


def lee_background(n: int = 300) -> list[str]:
    """Lines of gensim's Lee background corpus (needs the optional gensim package)."""
    return list(_lee("lee_background.cor")[:n])


def lee_test() -> list[str]:
    """gensim's Lee test corpus (needs gensim): news text used by the benchmarks."""
    return list(_lee("lee.cor"))


def polarity_sentences() -> list[tuple[str, int]]:
    """Movie-review polarity sentences as (text, label), label 1 = positive (the file is cp1252)."""
    out = []
    for line in (gensim_data_dir() / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():
        label, _, text = line.strip().partition(" ")
        if label in ("__label__pos", "__label__neg") and text:
            out.append((text, int(label == "__label__pos")))
    return out


def load_texts(path: Path | str | None, *, default: str = "eval", n: int | None = None) -> list[str]:
    if path is not None:
        lines = read_text_file(path, what="eval data" if default == "eval" else "calibration file")
    else:
        lines = eval_texts() if default == "eval" else calibration_texts(n or 32)
    return lines[:n] if n else lines
