"""Build the sample corpus: split scraped seed articles into paragraph tasks for annotation.

Each seed article is a markdown-ish scrape of a news page. We keep the article's own paragraphs, verbatim
except for markdown decoration a reader would not see (heading markers, emphasis asterisks, backslash
escapes, link syntax), and drop the page furniture around them (site headers, bylines, share prompts,
captions, related-article teasers, disclaimers). Offsets into a task's text must stay meaningful to
annotators, so nothing else about the text is changed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_ARTICLES_DIR: Path = Path(__file__).resolve().parents[1].parent / "shared/data/seed_articles"
DEFAULT_TASKS_FILE: Path = Path(__file__).resolve().parents[1] / "data/sample_tasks.jsonl"

TASK_KEYS = ("key", "text", "title", "publication", "date", "article_id", "paragraph")

# Publications recognised from the page chrome (header, footer, credit lines), first match wins.
SOURCE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bwsws\b|\bWorld Socialist\b", re.I), "World Socialist Web Site"),
    (re.compile(r"\bGlobal Research\b|globalresearch\.ca", re.I), "Global Research"),
]

# Page furniture recognised by wording, matched against the cleaned paragraph (case-insensitive).
BOILERPLATE_PATTERNS: list[re.Pattern[str]] = [
    re.compile(p, re.I)
    for p in (
        r"^to contact the\b",  # "To contact the WSWS ... visit:"
        r"\bcontact us\b",
        r"\bmedia inquiries\b",
        r"\bclick here\b",
        r"\bshare buttons?\b",
        r"^note to readers\b",
        r"\b(?:daily|weekly) newsletter\b",
        r"\bsubscribe (?:to|for|now)\b",
        r"\bfollow us (?:on|at)\b",
        r"\bbecome a member\b",
        r"\bcan be read in \d+ languages\b",  # site translation widget notice
        r"^disclaimer\b",
        r"\bfair use\b",
        r"^copyright\b|©",
        r"^(?:the )?original source of this article\b",
        r"^featured image\b",
        r"^articles? by\b",
        r"^(?:region|theme|category|categories|tags?|topics?|section|filed under)\s*:",  # navigation
    )
]

_HEADING = re.compile(r"^#{1,6}\s+")
_BYLINE = re.compile(r"^by\s+\S", re.I)
_SEPARATOR = re.compile(r"^[\s*_\-–—=~]*$")  # ***, ---, \*, ___ ... (checked after unescaping)
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]*)(?:\s+\"[^\"]*\")?\)")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # backslash before ASCII punctuation
_PRIVATE_BASE = 0xE000  # escaped characters are parked in the Private Use Area while markdown is stripped
_EMPHASIS = [re.compile(rf"\*{{{n}}}(?=[^\s*])(.+?)(?<=[^\s*])\*{{{n}}}") for n in (3, 2, 1)]
# A caption ends with a photo credit in parentheses: "(Mikhail Metzler, ... Pool Photo via AP)".
_CAPTION = re.compile(r"\((?=[^()]*\b(?:photo|image|picture|AP|AFP|Reuters|Getty)\b)[^()]*\)\s*$", re.I)
_CLOSERS = "\"'”’»)]*_ \u00a0"
_TERMINAL = ".!?…"
_SENTENCE_BREAK = re.compile(r"[.!?…][\"'”’)]?\s+[\"“‘(]?[A-Z]")

_MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = r"(?P<month>[A-Za-z]{3,9})\.?"
_DATE_FORMS = [
    re.compile(r"\b(?P<year>\d{4})-(?P<mnum>\d{2})-(?P<day>\d{2})\b"),  # 2022-02-06
    re.compile(rf"\b(?P<day>\d{{1,2}})\s+{_MONTH}\s+(?P<year>\d{{4}})\b"),  # 6 February 2022
    re.compile(rf"\b{_MONTH}\s+(?P<day>\d{{1,2}}),?\s+(?P<year>\d{{4}})\b"),  # December 15, 2021
    re.compile(r"\b(?P<day>\d{1,2})\.(?P<mnum>\d{1,2})\.(?P<year>\d{4})\b"),  # 01.02.2022 (day first)
]

# Thresholds for the shape heuristics below.
_MIN_FRAGMENT = 40  # shorter paragraphs are kept only when they are real sentences
_MAX_HEADLINE = 120  # a one-sentence-less line shorter than this between paragraphs is a headline/teaser
_MAX_DATELINE = 80  # date and source evidence is taken from short header/footer lines only
_MAX_CONTACT = 120  # a short paragraph with an e-mail address is a contact line


def _unescape_to_private(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(_PRIVATE_BASE + ord(m.group(1))), text)


def _restore_private(text: str) -> str:
    return re.sub(r"[\ue000-\ue07f]", lambda m: chr(ord(m.group(0)) - _PRIVATE_BASE), text)


def clean_inline(text: str) -> str:
    """Strip inline markdown (links, emphasis, backslash escapes) and keep every visible character."""
    text = _unescape_to_private(text)
    # Images are not text; a link reads as its label.
    text = _LINK.sub(lambda m: "" if m.group(1) else m.group(2), text)
    for pattern in _EMPHASIS:
        previous = None
        while previous != text:  # nested emphasis (**bold** inside *italic*) needs more than one pass
            previous, text = text, pattern.sub(r"\1", text)
    return _restore_private(text)


def _join_lines(block: str) -> str:
    # Hard-wrapped lines (and markdown "two trailing spaces" line breaks) become one line.
    return " ".join(line.strip() for line in block.split("\n") if line.strip())


def _blocks(raw: str) -> list[str]:
    text = raw.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return [b for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def _is_latin(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() or "\u00c0" <= c <= "\u024f" for c in letters) * 2 >= len(letters)


def _strip_closers(text: str) -> str:
    return text.rstrip(_CLOSERS)


def _is_sentence(text: str) -> bool:
    # Starts like a sentence, ends with terminal punctuation (closing quotes allowed), at least three words.
    body = _strip_closers(text)
    starts = text.lstrip("\"“‘'(")[:1]
    return bool(body) and body[-1] in _TERMINAL and starts[:1].isupper() and len(text.split()) >= 3


def _is_link_only(raw_block: str) -> bool:
    # Nothing but links, URLs or e-mail addresses (plus emphasis and punctuation): navigation or contact.
    rest = _URL.sub("", _EMAIL.sub("", _LINK.sub("", _unescape_to_private(raw_block))))
    return not re.search(r"\w", rest)


def _looks_like_headline(text: str) -> bool:
    # A related-article teaser or section heading: short, one sentence-less line without end punctuation.
    # A trailing comma or colon introduces a quotation in the next paragraph, so that is a real sentence.
    body = _strip_closers(text)
    return (
        len(text) < _MAX_HEADLINE
        and not _SENTENCE_BREAK.search(text)
        and bool(body)
        and body[-1] not in _TERMINAL + ",:;"
    )


def _is_boilerplate(text: str) -> bool:
    if any(p.search(text) for p in BOILERPLATE_PATTERNS):
        return True
    if _BYLINE.match(text) and len(text) < _MAX_DATELINE:
        return True
    if _EMAIL.search(text) and len(text) < _MAX_CONTACT:
        return True
    return bool(_CAPTION.search(text))


def _continues(previous: str, following: str) -> bool:
    # A paragraph cut mid-sentence by a stray blank line: no end punctuation, next starts in lower case.
    body = previous.rstrip()
    return bool(body) and (body[-1].isalnum() or body[-1] == ",") and following[:1].islower()


def find_date(text: str) -> str | None:
    """The first calendar date in `text` as ISO "YYYY-MM-DD", or None."""
    hits: list[tuple[int, dt.date]] = []
    for form in _DATE_FORMS:
        for m in form.finditer(text):
            parts = m.groupdict()
            month = int(parts["mnum"]) if parts.get("mnum") else _MONTHS.get(parts["month"].lower())
            if month is None:
                continue
            try:
                hits.append((m.start(), dt.date(int(parts["year"]), month, int(parts["day"]))))
            except ValueError:
                continue
    return min(hits)[1].isoformat() if hits else None


def find_source(text: str) -> str | None:
    """The publication named in `text` according to SOURCE_PATTERNS, or None."""
    return next((name for pattern, name in SOURCE_PATTERNS if pattern.search(text)), None)


def _headline(blocks: list[str]) -> tuple[int, str]:
    """Index of the headline block and the headline text.

    The headline is the first heading written in the article's main script (so a Persian site banner
    above an English article is skipped); without headings it is the first line of the page.
    """
    headings = [i for i, b in enumerate(blocks) if _HEADING.match(b.lstrip())]
    main_latin = _is_latin("\n".join(blocks))
    for i in headings:
        if _is_latin(blocks[i]) == main_latin:
            return i, clean_inline(_HEADING.sub("", _join_lines(blocks[i])))
    if headings:
        i = headings[0]
        return i, clean_inline(_HEADING.sub("", _join_lines(blocks[i])))
    return 0, clean_inline(blocks[0].strip().split("\n")[0].strip()) if blocks else ""


def _split_site_suffix(title: str, later: list[str]) -> tuple[str, str | None]:
    # A page <title> like "Headline – Site Name": the suffix is the site when the bare headline is
    # repeated on the page, or when the suffix is a known publication.
    m = re.match(r"^(.+?\S)\s+[–—|-]\s+([^–—|]{2,40})$", title)
    if not m:
        return title, None
    headline, site = m.group(1), m.group(2).strip()
    if headline in later or find_source(site):
        return headline, find_source(site) or site
    return title, None


def split_article(raw: str, article_id: str) -> list[dict[str, Any]]:
    """The paragraph tasks of one article, in reading order."""
    blocks = _blocks(raw)
    if not blocks:
        return []
    start, title = _headline(blocks)
    has_heading = bool(_HEADING.match(blocks[start].lstrip()))
    # Everything above the headline is the site's banner (and in 001 a byline): never content.
    chrome = [_join_lines(b) for b in blocks[:start]]
    if not has_heading:
        # The first block is the page title plus breadcrumbs ("Us China"); it is chrome as well.
        chrome.append(_join_lines(blocks[start]))

    candidates: list[tuple[str, str]] = []  # (raw joined block, cleaned text)
    for block in blocks[start + 1 :]:
        joined = _join_lines(block)
        if _HEADING.match(joined):
            chrome.append(joined)
            continue
        cleaned = clean_inline(joined).strip()
        if (
            candidates
            and _continues(candidates[-1][1], cleaned)
            and not (_is_link_only(candidates[-1][0]) or _is_link_only(joined))
        ):
            prev_raw, prev_clean = candidates.pop()
            joined, cleaned = f"{prev_raw} {joined}", f"{prev_clean} {cleaned}"
        candidates.append((joined, cleaned))

    source = None
    if not has_heading:
        title, source = _split_site_suffix(title, [c for _, c in candidates])

    texts: list[str] = []
    for joined, cleaned in candidates:
        if (
            _SEPARATOR.match(cleaned)
            or _is_link_only(joined)
            or _is_boilerplate(cleaned)
            or cleaned == title
            or _looks_like_headline(cleaned)
            or (len(cleaned) < _MIN_FRAGMENT and not _is_sentence(cleaned))
        ):
            chrome.append(joined)
        else:
            texts.append(cleaned)

    # Date and publication come from the page chrome (bylines, datelines, footers), never the story.
    short_chrome = [c for c in chrome if len(c) < _MAX_DATELINE]
    date = next((d for d in map(find_date, short_chrome) if d), None)
    source = source or find_source("\n".join(chrome))

    return [
        {
            "key": f"{article_id}-{i:03d}",
            "text": text,
            "title": title,
            "publication": source,
            "date": date,
            "article_id": article_id,
            "paragraph": i,
        }
        for i, text in enumerate(texts)
    ]


def article_id_from_name(path: Path) -> str:
    """The article id of a seed file: the hex part of "000_7e9e70b8f12bb24b.txt"."""
    m = re.fullmatch(r"(?:\d+_)?([0-9a-fA-F]+)", path.stem)
    return m.group(1).lower() if m else path.stem


def build_tasks(articles_dir: Path = DEFAULT_ARTICLES_DIR) -> list[dict[str, Any]]:
    """The tasks of every *.txt article in `articles_dir`, articles sorted by file name."""
    articles_dir = Path(articles_dir)
    files = sorted(articles_dir.glob("*.txt")) if articles_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no seed articles (*.txt) found in {articles_dir}; pass --articles DIR to point at the folder"
        )
    tasks: list[dict[str, Any]] = []
    for path in files:
        tasks.extend(split_article(path.read_text(encoding="utf-8-sig"), article_id_from_name(path)))
    return tasks


def render_tasks(tasks: list[dict[str, Any]]) -> str:
    """The exact JSON-lines text of `tasks`: one object per line, UTF-8 characters unescaped."""
    return "".join(json.dumps({k: t[k] for k in TASK_KEYS}, ensure_ascii=False) + "\n" for t in tasks)


def write_tasks(tasks: list[dict[str, Any]], path: Path) -> None:
    """Write `tasks` as JSON lines to `path` atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(render_tasks(tasks))
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode an ordinary new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
