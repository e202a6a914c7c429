"""The sample corpus builder: paragraph splitting, boilerplate removal and the committed sample_tasks.jsonl."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from annotation_config.corpus import (
    DEFAULT_ARTICLES_DIR,
    DEFAULT_TASKS_FILE,
    TASK_KEYS,
    build_tasks,
    clean_inline,
    find_date,
    render_tasks,
    split_article,
    write_tasks,
)

needs_seed_articles = pytest.mark.skipif(
    not DEFAULT_ARTICLES_DIR.is_dir() or not any(DEFAULT_ARTICLES_DIR.glob("*.txt")),
    reason=f"seed articles not available at {DEFAULT_ARTICLES_DIR} (../shared/data/seed_articles)",
)

EXPECTED_TITLES = {
    "7e9e70b8f12bb24b": "China-Russia summit forges quasi-alliance against Washington",
    "d7e7dfa83ba4c23c": "Chinese foreign minister signals support for Russia over Ukraine crisis",
    "fd5c5512a1056ef1": "Russia-China Alliance at the Tipping Point",
    "acf1d99e7285c1db": "Russia, China ready to forge alliance",
    "b3a10d98a9b0cb7e": "China and Russia: closer than ever to the United States",
}
BOILERPLATE_MARKERS = [
    "wsws.org/contact",
    "Disclaimer",
    "click here",
    "Become a Member",
    "Photo",
    "@gmail",
    "Region:",
    "Theme:",
    "Featured image",
    "fair use",
]

HAND_MADE = """\
# Sanctions talks stall

By [Jane Doe](https://example.org/jane)  \r
3 March 2023

Share this article on social media

The minister said the talks were “constructive” but that the
sanctions — imposed in 2022 — would stay; see the [full statement](https://example.org/s)
for details.

Protesters carried a banner reading آزادی (freedom) outside the embassy, and \\*one\\* sign said “No war”.

Region: [Europe](#)

Related: the talks that failed in Geneva

[www.example.org](http://www.example.org)

He said: **“We will not back down.”**

(A protester in front of the embassy. Photo via Reuters)
"""


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    return build_tasks()


@needs_seed_articles
def test_committed_file_matches_the_builder(tasks: list[dict]) -> None:
    assert DEFAULT_TASKS_FILE.is_file(), "data/sample_tasks.jsonl is missing: regenerate it with write_tasks"
    committed = DEFAULT_TASKS_FILE.read_bytes()
    assert committed == render_tasks(tasks).encode("utf-8"), "data/sample_tasks.jsonl is stale: regenerate it"


@needs_seed_articles
def test_every_task_is_complete_and_unique(tasks: list[dict]) -> None:
    assert tasks
    for task in tasks:
        assert tuple(task) == TASK_KEYS
        assert isinstance(task["text"], str) and task["text"].strip() == task["text"] != ""
        assert task["key"] == f"{task['article_id']}-{task['paragraph']:03d}"
    assert len({t["key"] for t in tasks}) == len(tasks)


@needs_seed_articles
def test_no_boilerplate_in_task_text(tasks: list[dict]) -> None:
    for task in tasks:
        for marker in BOILERPLATE_MARKERS:
            assert marker.lower() not in task["text"].lower(), (task["key"], marker)
        for decoration in ("**", "](", "\\", "\n"):
            assert decoration not in task["text"], (task["key"], decoration)


@needs_seed_articles
def test_titles_sources_and_dates(tasks: list[dict]) -> None:
    by_article = {t["article_id"]: t for t in tasks}
    assert {a: t["title"] for a, t in by_article.items()} == EXPECTED_TITLES
    assert by_article["7e9e70b8f12bb24b"]["publication"] == "World Socialist Web Site"
    assert by_article["7e9e70b8f12bb24b"]["date"] == "2022-02-06"
    assert by_article["fd5c5512a1056ef1"]["publication"] == "Global Research"
    assert by_article["fd5c5512a1056ef1"]["date"] == "2021-12-15"
    assert by_article["b3a10d98a9b0cb7e"]["date"] is None


@needs_seed_articles
def test_paragraph_indices_are_dense_per_article(tasks: list[dict]) -> None:
    indices: dict[str, list[int]] = defaultdict(list)
    for task in tasks:
        indices[task["article_id"]].append(task["paragraph"])
    assert set(indices) == set(EXPECTED_TITLES)
    for article_id, seen in indices.items():
        assert seen == list(range(len(seen))), article_id


@needs_seed_articles
def test_persian_site_header_and_teasers_are_dropped(tasks: list[dict]) -> None:
    texts = [t["text"] for t in tasks]
    # The Persian banner, poem, e-mail and "European Languages" of article 001 are not tasks.
    assert not any(("\u0600" <= c <= "\u06ff") for text in texts for c in text)
    assert not any(text.startswith(("AA-AA", "European Languages", "Peter Symonds")) for text in texts)
    # One-line related-article headlines between paragraphs are not tasks either.
    assert "China seeks to strengthen ties with North Korea and Russia" not in texts
    assert "Three is a crowd: Putin’s Russia defies bipolarity" not in texts
    # Quoted statements are content.
    assert any(text.startswith("“advocate unilateral approaches") for text in texts)


@needs_seed_articles
def test_paragraph_cut_by_a_stray_blank_line_is_rejoined(tasks: list[dict]) -> None:
    text = next(t["text"] for t in tasks if t["text"].startswith("* In a repudiation"))
    assert "[and] to respect the sovereignty" in text


def test_split_article_on_a_hand_made_page() -> None:
    result = split_article(HAND_MADE, "abc123")
    texts = [t["text"] for t in result]
    assert texts == [
        "The minister said the talks were “constructive” but that the sanctions — imposed in 2022 — would "
        "stay; see the full statement for details.",
        "Protesters carried a banner reading آزادی (freedom) outside the embassy, and *one* sign said “No war”.",
        "He said: “We will not back down.”",
    ]
    assert [t["key"] for t in result] == ["abc123-000", "abc123-001", "abc123-002"]
    assert [t["paragraph"] for t in result] == [0, 1, 2]
    assert {t["title"] for t in result} == {"Sanctions talks stall"}
    assert {t["date"] for t in result} == {"2023-03-03"}
    assert {t["publication"] for t in result} == {None}


def test_page_without_heading_takes_title_and_site_from_the_first_line() -> None:
    raw = (
        "Markets rally after the vote – Daily Ledger\nBusiness\n\nMarkets rally after the vote\n\n"
        "Stocks rose sharply on Monday after parliament approved the budget, traders said.\n"
    )
    result = split_article(raw, "f00")
    assert [t["text"] for t in result] == [
        "Stocks rose sharply on Monday after parliament approved the budget, traders said."
    ]
    assert result[0]["title"] == "Markets rally after the vote"
    assert result[0]["publication"] == "Daily Ledger"


def test_clean_inline_keeps_visible_text_only() -> None:
    assert clean_inline("a ***b*** **c** *d* \\*e\\* [f](http://x) \\$5 [g] h") == "a b c d *e* f $5 [g] h"
    assert clean_inline("*lead with **bold** inside*") == "lead with bold inside"


def test_find_date_forms() -> None:
    assert find_date("Peter Symonds 6 February 2022") == "2022-02-06"
    assert find_date("Global Research, December 15, 2021") == "2021-12-15"
    assert find_date("Peter Symonds 01.02.2022") == "2022-02-01"
    assert find_date("Copyright 2021") is None


def test_missing_articles_folder_names_it_and_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="--articles DIR") as info:
        build_tasks(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError):
        build_tasks(tmp_path)  # exists but holds no *.txt


def test_write_tasks_round_trips_utf8(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "000_abcdef.txt").write_text(HAND_MADE, encoding="utf-8")
    built = build_tasks(tmp_path / "in")
    out = tmp_path / "out" / "tasks.jsonl"
    write_tasks(built, out)
    raw = out.read_text(encoding="utf-8")
    assert raw == render_tasks(built)
    assert "آزادی" in raw and "“No war”" in raw  # not \u-escaped
    assert [json.loads(line) for line in raw.splitlines()] == built
    assert [p.name for p in out.parent.iterdir()] == ["tasks.jsonl"]  # no temp file left behind
