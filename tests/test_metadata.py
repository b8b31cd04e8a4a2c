"""Path rules give the metadata docs/library-facts.md promises, on the real file names."""

from __future__ import annotations

import re
import unicodedata

import pytest
from harness import real_paths

from objlib_daemon.config import MetadataRule, from_dict
from objlib_daemon.library import metadata as md
from objlib_daemon.library.metadata import (
    DEFAULT_RULES,
    IDENTITY_KEYS,
    Enrichment,
    enrich,
    enrichment_version,
    validate_rules,
    with_defaults,
)

LIB = "lib-0123"
SHA = "ab" * 32


def meta(path: str, **kwargs) -> dict:
    return enrich(path, library_id=LIB, sha256=SHA, **kwargs).metadata


def identity(path: str) -> dict:
    return {"library_id": LIB, "path": path, "sha256": SHA}


def test_the_real_path_list_is_there() -> None:
    assert len(real_paths()) == 1749


# One real example of each naming pattern, with the exact metadata expected.
EXAMPLES = [
    (
        "Courses/Objectivism Seminar - Foundations/Year2/Q2/"
        "Objectivism Seminar - Foundations - Year 2 - Q2 - Week 6 - The virtue of justice.txt",
        {
            "category": "course",
            "title": "Objectivism Seminar - Foundations - Year 2 - Q2 - Week 6 - "
            "The virtue of justice",
            "course": "Objectivism Seminar - Foundations",
            "year": 2.0,
            "quarter": 2.0,
            "week": 6.0,
            "topic": "The virtue of justice",
        },
    ),
    (
        "Courses/History of Philosophy/History of Philosophy - Lesson 09 - "
        "Plato_s Metaphysics_ The Perceptible World and the World of Ideal Forms.txt",
        {
            "category": "course",
            "title": "History of Philosophy - Lesson 09 - Plato s Metaphysics "
            "The Perceptible World and the World of Ideal Forms",
            "course": "History of Philosophy",
            "lesson": 9.0,
            "topic": "Plato s Metaphysics The Perceptible World and the World of Ideal Forms",
        },
    ),
    (
        "Courses/Love and Philosophy/Love and Philosophy - Lesson 01.txt",
        {
            "category": "course",
            "title": "Love and Philosophy - Lesson 01",
            "course": "Love and Philosophy",
            "lesson": 1.0,
        },
    ),
    (
        "Courses/ITOE Advanced Topics/ITOE Advanced Topics - Class 01-01 Office Hour.txt",
        {
            "category": "course",
            "title": "ITOE Advanced Topics - Class 01-01 Office Hour",
            "course": "ITOE Advanced Topics",
            "class": "01-01",
            "topic": "Office Hour",
        },
    ),
    (
        "Courses/ITOE Advanced Topics/ITOE Advanced Topics - Class 09-02 - Office Hour.txt",
        {
            "category": "course",
            "title": "ITOE Advanced Topics - Class 09-02 - Office Hour",
            "course": "ITOE Advanced Topics",
            "class": "09-02",
            "topic": "Office Hour",
        },
    ),
    (
        "Courses/Objectivist Logic/Objectivist Logic - Class 03-02.txt",
        {
            "category": "course",
            "title": "Objectivist Logic - Class 03-02",
            "course": "Objectivist Logic",
            "class": "03-02",
        },
    ),
    (
        "Courses/The Objectivist Ethics HB - Part I/"
        "The Objectivist Ethics HB - Part I - Class 05.txt",
        {
            "category": "course",
            "title": "The Objectivist Ethics HB - Part I - Class 05",
            "course": "The Objectivist Ethics HB - Part I",
            "class": "05",
        },
    ),
    (
        "Courses/Persuasion Mastery/Persuasion Mastery - Week 8.txt",
        {
            "category": "course",
            "title": "Persuasion Mastery - Week 8",
            "course": "Persuasion Mastery",
            "week": 8.0,
        },
    ),
    (
        # a trailing space in the real folder name
        "Courses/Introduction to the Objectivist Ethics /"
        "Introduction to the Objectivist Ethics - 03.txt",
        {
            "category": "course",
            "title": "Introduction to the Objectivist Ethics - 03",
            "course": "Introduction to the Objectivist Ethics",
        },
    ),
    (
        "MOTM/MOTM_2017-01-29_Biological-Function-of-Consciousness-with-Dr-Lee-Pearson.txt",
        {
            "category": "motm",
            "title": "MOTM 2017-01-29 Biological-Function-of-Consciousness-with-Dr-Lee-Pearson",
            "series": "MOTM",
            "date": "2017-01-29",
            "year": 2017.0,
            "topic": "Biological Function of Consciousness with Dr Lee Pearson",
        },
    ),
    (
        "Peikoff Podcast/Episode 115 – 6⧸7⧸2010 [1000386969175].txt",
        {
            "category": "podcast",
            "title": "Episode 115 – 6⧸7⧸2010 [1000386969175]",
            "series": "Peikoff Podcast",
            "episode": 115.0,
            "date": "2010-06-07",
            "episode_id": "1000386969175",
        },
    ),
    (
        "Peikoff Podcast/Episode 145 [1000090134701].txt",
        {
            "category": "podcast",
            "title": "Episode 145 [1000090134701]",
            "series": "Peikoff Podcast",
            "episode": 145.0,
            "episode_id": "1000090134701",
        },
    ),
    (
        "Peikoff Podcast/Epsiode 159 [1000092962068].txt",  # sic
        {
            "category": "podcast",
            "title": "Epsiode 159 [1000092962068]",
            "series": "Peikoff Podcast",
            "episode": 159.0,
            "episode_id": "1000092962068",
        },
    ),
    (
        "Books/Ayn Rand - Introduction to Objectivist Epistemology_ "
        "Expanded Second Edition-Plume (1990).txt",
        {
            "category": "book",
            "title": "Ayn Rand - Introduction to Objectivist Epistemology "
            "Expanded Second Edition-Plume (1990)",
        },
    ),
    (
        "Ayn Rand Institute/Stoicism/Stoicism vs Objectivism： What Is (and Is Not) "
        "Under Our Control？ by Aaron Smith [aj9oigQp3ik].txt",
        {
            "category": "other",
            "title": "Stoicism vs Objectivism： What Is (and Is Not) Under Our Control？ "
            "by Aaron Smith [aj9oigQp3ik]",
        },
    ),
    (
        "Thinking Lab/Just-in-Time Planning/TL - JIT - Bonus 03 - "
        "Mental Stopping Points and Finishing Points .txt",
        {
            "category": "other",
            "title": "TL - JIT - Bonus 03 - Mental Stopping Points and Finishing Points",
        },
    ),
]


@pytest.mark.parametrize(
    "path, expected", EXAMPLES, ids=[p.split("/")[-1][:40] for p, _ in EXAMPLES]
)
def test_each_naming_pattern_on_a_real_path(path: str, expected: dict) -> None:
    assert path in real_paths(), "examples must be real names from library-paths.txt"
    got = meta(path)
    assert got == identity(path) | expected
    for key, value in got.items():  # numbers are floats, never ints or numeric strings
        if key in ("year", "quarter", "week", "lesson", "episode"):
            assert type(value) is float, key


def test_a_lesson_titled_week_keeps_its_course() -> None:
    path = (
        "Courses/Oral Communication - Basics | 2024/"
        "Oral Communication - Basics | 2024 - Lesson 01 - Week 1.txt"
    )
    assert path in real_paths()
    got = meta(path)
    assert got["course"] == "Oral Communication - Basics | 2024"
    assert (got["lesson"], got["week"], got["topic"]) == (1.0, 1.0, "Week 1")


def test_every_real_path_enriches_within_limits() -> None:
    for path in real_paths():
        e = enrich(path, library_id=LIB, sha256=SHA)
        assert isinstance(e, Enrichment)
        assert len(e.metadata) <= 20, path
        assert {k: e.metadata[k] for k in IDENTITY_KEYS} == identity(path), path
        assert isinstance(e.metadata.get("title"), str) and e.metadata["title"], path
        assert e.display_name == e.display_name.strip() and e.display_name, path
        assert len(e.display_name) <= 512
        assert e.display_name == path.rsplit("/", 1)[-1].strip()
        assert e.metadata["category"] in ("course", "book", "motm", "podcast", "other")
        for key, value in e.metadata.items():
            assert isinstance(value, str | float), (path, key)
            if isinstance(value, str):
                assert value == value.strip() and len(value) <= 300, (path, key)
        assert path.endswith((".txt", ".md"))  # the indexed files are all text
        assert e.header is not None and e.header.startswith("Title: "), path
        assert e.header.endswith("\n\n") and e.header.count("\n") <= 6


def test_every_course_path_has_category_and_course() -> None:
    courses = [p for p in real_paths() if p.startswith("Courses/")]
    assert len(courses) == 780
    for path in courses:
        got = meta(path)
        assert got["category"] == "course", path
        assert isinstance(got.get("course"), str) and got["course"], path
    with_year = [p for p in courses if re.search(r"/Year\d+/Q\d+/", p)]
    assert len(with_year) == 69
    for path in with_year:
        got = meta(path)
        assert isinstance(got["year"], float) and isinstance(got["quarter"], float), path
        assert isinstance(got["week"], float) and got.get("topic"), path


def test_every_motm_file_has_a_date() -> None:
    motm = [p for p in real_paths() if p.split("/")[-1].startswith("MOTM_")]
    assert len(motm) == 468
    for path in motm:
        got = meta(path)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", got["date"]), path
        assert got["year"] == float(got["date"][:4])
        assert got["series"] == "MOTM" and got["category"] == "motm"
        assert got["topic"] and "-" not in got["topic"].replace(" - ", ""), path


def test_every_episode_file_has_an_episode_number() -> None:
    episodes = [p for p in real_paths() if re.search(r"/Ep(?:isode|siode) \d+", p)]
    assert len(episodes) == 334
    for path in episodes:
        got = meta(path)
        number = re.search(r"Ep\w+ (\d+)", path).group(1)
        assert got["episode"] == float(number), path
        assert got["series"] == "Peikoff Podcast" and got["category"] == "podcast"
        assert re.fullmatch(r"\d{13}", got["episode_id"]), path
        if "⧸" in path:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", got["date"]), path
        else:
            assert "date" not in got


def test_headers_name_what_the_text_is() -> None:
    lesson = (
        "Courses/History of Philosophy/History of Philosophy - Lesson 09 - "
        "Plato_s Metaphysics_ The Perceptible World and the World of Ideal Forms.txt"
    )
    assert enrich(lesson, library_id=LIB, sha256=SHA).header == (
        "Title: History of Philosophy - Lesson 09 - Plato s Metaphysics The Perceptible "
        "World and the World of Ideal Forms\n"
        "Course: History of Philosophy\n"
        "Lesson: 9\n"
        "Topic: Plato s Metaphysics The Perceptible World and the World of Ideal Forms\n"
        "\n"
    )
    klass = "Courses/ITOE/ITOE - Class 03-01 - Office Hours.txt"
    assert enrich(klass, library_id=LIB, sha256=SHA).header == (
        "Title: ITOE - Class 03-01 - Office Hours\n"
        "Course: ITOE\n"
        "Class: 03-01\n"
        "Topic: Office Hours\n\n"
    )
    book = "Books/Ayn Rand - The Fountainhead.txt"
    assert enrich(book, library_id=LIB, sha256=SHA).header == (
        "Title: Ayn Rand - The Fountainhead\n\n"
    )
    # the indexed list is all text; pdf/html/docx go up as they are
    for other in ("Books/Scan - Lesson 01 - Intro.pdf", "OCON/page.html", "Notes/a.docx"):
        e = enrich(other, library_id=LIB, sha256=SHA)
        assert e.header is None and e.metadata["title"], other
    assert (
        enrich("Books/Scan - Lesson 01 - Intro.pdf", library_id=LIB, sha256=SHA).metadata["lesson"]
        == 1.0
    )


def test_skip_gives_identity_only() -> None:
    path = EXAMPLES[0][0]
    e = enrich(path, library_id=LIB, sha256=SHA, skip=True)
    assert e.metadata == identity(path)
    assert e.header is None
    assert e.display_name == path.rsplit("/", 1)[-1]


def test_custom_rules_from_config_extend_the_defaults() -> None:
    cfg = from_dict(
        {
            "metadata": {
                "rules": [
                    {
                        "pattern": r"^Courses/(?P<course>[^/]+)/",
                        "fields": {"course": "Course: {course}", "level": "advanced"},
                    },
                    {"pattern": r"Class (?P<n>\d+)-", "fields": {"unit": "{n}"}},
                ]
            }
        }
    )
    path = "Courses/ITOE/ITOE - Class 03-01 - Office Hours.txt"
    got = meta(path, rules=with_defaults(cfg.metadata_rules))
    assert got == identity(path) | {
        "category": "course",  # the built-in rules still run first
        "title": "ITOE - Class 03-01 - Office Hours",
        "class": "03-01",
        "topic": "Office Hours",
        "course": "Course: ITOE",  # a configured rule overrides a built-in's key
        "level": "advanced",
        "unit": 3.0,
    }
    assert with_defaults(None) is None  # no configured rules: the defaults alone


def test_later_rules_override_earlier_keys_and_stop_ends() -> None:
    path = "Courses/ITOE/ITOE - Class 03-01 - Office Hours.txt"
    override = MetadataRule(
        r"^Courses/ITOE/", {"course": "Introduction to Objectivist Epistemology"}
    )
    got = meta(path, rules=(*DEFAULT_RULES, override))
    assert got["course"] == "Introduction to Objectivist Epistemology"
    assert got["class"] == "03-01"  # the defaults still ran

    first = MetadataRule(r"^Courses/", {"category": "lecture", "title": "Mine"}, stop=True)
    got = meta(path, rules=(first, *DEFAULT_RULES))
    assert got == identity(path) | {"category": "lecture", "title": "Mine"}
    # a stop rule that does not match stops nothing
    miss = MetadataRule(r"^Nowhere/", {"x": "y"}, stop=True)
    assert meta(path, rules=(miss, *DEFAULT_RULES)) == meta(path)


def test_rules_cannot_touch_identity_keys() -> None:
    rule = MetadataRule(r"(?P<x>.+)", {"path": "{x}!", "sha256": "forged", "library_id": "z"})
    assert meta("a/b.txt", rules=(rule,)) == identity("a/b.txt") | {"title": "b"}


def test_templates_groups_numbers_and_filters() -> None:
    rule = MetadataRule(
        r"^(?P<a>\d+)(?:-(?P<b>\w+))?_(?P<c>[\w-]+)\.txt$",
        {
            "num": "{a}",
            "text_num": "{a|text}",
            "literal": "2024",
            "mixed": "{a}-{b}",
            "missing": "{b}",
            "spaced": "{c|spaces}",
            "dashed": "{c|dashes}",
            "padded": "{a|pad2}",
            "braces": "{{{a}}}",
        },
    )
    got = meta("7_one_two-three.txt", rules=(rule,))
    assert got["num"] == 7.0 and type(got["num"]) is float
    assert got["text_num"] == "7"
    assert got["literal"] == "2024"
    assert "mixed" not in got and "missing" not in got  # group b did not participate
    assert got["spaced"] == "one two-three"
    assert got["dashed"] == "one_two three"
    assert got["padded"] == "07"
    assert got["braces"] == "{7}"
    assert meta("7-x_c.txt", rules=(rule,))["mixed"] == "7-x"


def test_empty_values_set_nothing_and_do_not_override() -> None:
    rules = (
        MetadataRule(r"^", {"topic": "kept"}),
        MetadataRule(r"^(?P<t>[ _]*)", {"topic": "{t|spaces}"}),
    )
    assert meta("__/x.txt", rules=rules)["topic"] == "kept"


@pytest.mark.parametrize(
    "rule",
    [
        MetadataRule(r"(?P<a>x)", {"k": "{b}"}),
        MetadataRule(r"(?P<a>x)", {"k": "{a|shout}"}),
        MetadataRule(r"(unclosed", {"k": "v"}),
    ],
)
def test_bad_rules_are_refused_with_a_reason(rule: MetadataRule) -> None:
    with pytest.raises(ValueError, match="metadata rule 0"):
        validate_rules([rule])
    with pytest.raises(ValueError):
        meta("x.txt", rules=(rule,))


def test_metadata_is_capped_at_20_keeping_identity() -> None:
    fields = {f"k{i:02d}": f"v{i}" for i in range(30)}
    rule = MetadataRule(r"^", fields)
    first = meta("a/b.txt", rules=(rule,))
    assert len(first) == 20
    assert {k: first[k] for k in IDENTITY_KEYS} == identity("a/b.txt")
    assert [k for k in first if k not in IDENTITY_KEYS] == [f"k{i:02d}" for i in range(17)]
    assert "title" not in first  # no room left: identity and rules win
    assert meta("a/b.txt", rules=(rule,)) == first  # deterministic


def test_long_values_are_capped_but_identity_never() -> None:
    long_path = "x" * 300 + "/" + "y" * 400 + ".txt"
    rule = MetadataRule(r"^(?P<d>[^/]+)/", {"folder": "{d}"})
    got = meta(long_path, rules=(rule,))
    assert got["folder"] == "x" * 256
    assert len(got["title"]) == 256
    assert got["path"] == long_path


def test_display_name_is_stripped_and_capped_keeping_the_extension() -> None:
    assert enrich("a/  spaced name.txt ", library_id=LIB, sha256=SHA).display_name == (
        "spaced name.txt"
    )
    long = enrich("a/" + "n" * 600 + ".txt", library_id=LIB, sha256=SHA).display_name
    assert len(long) == 512 and long.endswith("n.txt")


def test_nfd_paths_match_like_nfc_but_identity_keeps_the_given_path() -> None:
    nfc = "Courses/Épistémologie/Épistémologie - Lesson 02 - Café.txt"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    got = meta(nfd)
    assert got["path"] == nfd
    assert got["course"] == "Épistémologie" and got["topic"] == "Café"


def test_enrichment_version_tracks_code_and_rules(monkeypatch) -> None:
    base = enrichment_version(DEFAULT_RULES, skip=False)
    assert base == enrichment_version(None, skip=False)
    assert base == enrichment_version(list(DEFAULT_RULES), skip=False)  # stable
    assert len(base) <= 16 and base.startswith("v1-")
    assert enrichment_version(DEFAULT_RULES, skip=True) == "raw"

    changed = [
        (*DEFAULT_RULES, MetadataRule(r"^", {"x": "y"})),
        DEFAULT_RULES[:-1],
        (MetadataRule(r"^", {"category": "misc"}), *DEFAULT_RULES[1:]),
        (MetadataRule(r"^", {"category": "other"}, stop=True), *DEFAULT_RULES[1:]),
        (MetadataRule(r"^$", {"category": "other"}), *DEFAULT_RULES[1:]),
    ]
    versions = {enrichment_version(rules, skip=False) for rules in changed}
    assert base not in versions and len(versions) == len(changed)

    monkeypatch.setattr(md, "ENRICHER_VERSION", 2)
    assert enrichment_version(DEFAULT_RULES, skip=False) != base
