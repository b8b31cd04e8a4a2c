"""The enriched upload (issue 13): AI metadata from the model, cached by content,
never blocking an upload, within a budget, with its cost shown first.

Real google-genai SDK against tests/emulator.py, real SQLite, the CLI in-process.
"""

from __future__ import annotations

import json
import time

import pytest
from emulator import Fault
from harness import API_KEY, Harness

pytestmark = pytest.mark.timeout(120)

TEXTS = {
    "Courses/OPAR/OPAR - Lesson 01 - Reason.txt": "Reason is the faculty of concepts. " * 80,
    "MOTM/MOTM_2021-03-07_Free-Will.txt": "Free will is the choice to focus. " * 80,
    "Books/Atlas Shrugged.md": "Dagny Taggart runs the railroad; Galt speaks. " * 80,
}
AI_KEYS = {"topics", "difficulty", "entities", "themes", "aspects"}


@pytest.fixture
def g(emulator, tmp_path):
    """A gemini-backed library whose model calls go to the emulator (enrichment on by default)."""
    h = Harness(tmp_path, "gemini", emulator)
    h.env["GEMINI_API_KEY"] = emulator.api_key
    assert h.init().exit_code == 0
    for rel, text in TEXTS.items():
        h.write(rel, text.encode())
    return h


def generate_calls(h: Harness) -> int:
    return len(h.emulator.find_requests(method="POST", path=r":generateContent$"))


def test_first_sync_enriches_and_content_is_never_sent_again(g):
    summary = g.sync()
    assert summary["uploaded"] == 3 and summary["enrichment"]["waiting"] == 0
    assert generate_calls(g) == 3
    for rel, docs in g.docs_by_path().items():
        (doc,) = docs
        assert set(doc.metadata) >= AI_KEYS, doc.metadata
        assert doc.metadata["category"] and doc.metadata["sha256"]  # path rules and identity
        assert len(doc.metadata) <= 20
        body = g.content(doc.name).decode()
        header, rest = body.split("[AI Analysis]\n", 1)
        assert header.startswith("Title: ")
        assert rest.endswith(TEXTS[rel])  # original text last, unchanged
    reason = g.docs_by_path()["Courses/OPAR/OPAR - Lesson 01 - Reason.txt"][0]
    assert "reason" in reason.metadata["topics"]

    g.sync()
    assert generate_calls(g) == 3  # unchanged: no call

    (g.root / "MOTM/MOTM_2021-03-07_Free-Will.txt").rename(g.root / "MOTM/Free Will.txt")
    summary = g.sync()
    assert summary["moved"] == 1 and generate_calls(g) == 3  # a rename reuses the cache
    assert set(g.docs_by_path()["MOTM/Free Will.txt"][0].metadata) >= AI_KEYS

    g.write("Books/Atlas Shrugged.md", b"Rearden metal is stronger than steel. " * 80)
    summary = g.sync()
    assert summary["modified"] == 1 and generate_calls(g) == 4  # one edit, one call
    g.converged()


def test_books_and_papers_are_enriched_from_their_extracted_text(g):
    import documents

    g.write("Books/Galt.epub", documents.epub([("Ch 1", "Galt speaks of the motor. " * 80)]))
    g.write("Papers/Induction.pdf", documents.pdf(["Induction in physics and philosophy. " * 40]))
    g.write("Papers/Scan.pdf", documents.pdf(["x"], image_only=True, filler=2000))
    g.sync()
    docs = g.docs_by_path()
    epub, pdf, scan = (docs[p][0] for p in ("Books/Galt.epub", "Papers/Induction.pdf",
                                           "Papers/Scan.pdf"))  # fmt: skip
    assert "galt" in epub.metadata["topics"] and "induction" in pdf.metadata["topics"]
    assert "[AI Analysis]" in g.content(epub.name).decode()  # sent as text: the block rides along
    assert g.content(pdf.name).startswith(b"%PDF")  # sent as it is: metadata only
    assert "topics" not in scan.metadata  # no text: nothing to analyse, nothing owed
    assert (
        g.row("Papers/Scan.pdf")["enrichment_version"]
        == g.row("Papers/Induction.pdf")["enrichment_version"]
    )
    assert generate_calls(g) == 3 + 2


def test_copies_uploaded_in_parallel_ask_the_model_once(g):
    for i in range(6):
        g.write(f"Copies/copy {i}.txt", b"One and the same lecture on induction. " * 60)
    summary = g.sync()
    assert summary["uploaded"] == 9
    assert generate_calls(g) == 3 + 1  # the three of the fixture, one for the six copies
    assert all(set(d.metadata) >= AI_KEYS for d in g.docs())


@pytest.mark.parametrize(
    "fault",
    [
        Fault(path=":generateContent", kind="retry_info", retry_delay=0, times=2),
        Fault(path=":generateContent", status=500, times=2),
    ],
    ids=["429", "500"],
)
def test_model_failure_never_holds_up_an_upload(g, fault):
    g.emulator.add_fault(fault)
    summary = g.sync()
    # Every file was uploaded at once; the two that got no analysis were
    # analysed again after the drain and replaced, upload first.
    assert summary["new"] == 3 and summary["modified"] == 2, summary
    assert summary["enrichment"]["waiting"] == 0
    g.converged()
    assert all(set(d.metadata) >= AI_KEYS for d in g.docs())
    with g.db() as conn:
        journal = [
            (r["path"], r["action"]) for r in conn.execute("SELECT path, action FROM journal")
        ]
    replaced = {p for p, a in journal if a == "replaced"}
    assert len(replaced) == 2
    for path in replaced:
        actions = [a for p, a in journal if p == path]
        assert actions == ["uploaded", "replaced", "deleted"]  # upload first, then delete
    assert generate_calls(g) == 5


def test_retry_info_holds_the_model_not_the_uploads(g):
    for i in range(9):
        g.write(f"Notes/note {i}.txt", f"Note {i} on measurement omission. ".encode() * 60)
    g.emulator.add_fault(
        Fault(path=":generateContent", kind="retry_info", retry_delay=600, times=None)
    )
    started = time.monotonic()
    summary = g.sync()
    assert time.monotonic() - started < 60  # no upload waited the 600 s
    assert summary["uploaded"] == 12
    # Only requests already admitted when the first 429 came back were sent
    # (one per upload worker at most); the rest did not ask.
    assert generate_calls(g) <= 4
    assert summary["enrichment"]["by_reason"] == {"rate_limited": 12}
    g.converged()


def test_the_model_is_asked_ahead_while_uploads_keep_their_bound(emulator, tmp_path):
    """A model answer takes seconds: more files wait for it at once than
    `[store] concurrency`, and never more than that many send bytes at once."""
    # At the model pacing's starting rate (2/s) answers of 1.5 s overlap by three.
    emulator.generation_latency = 1.5
    h = Harness(tmp_path, "gemini", emulator)
    h.env["GEMINI_API_KEY"] = emulator.api_key
    assert h.init().exit_code == 0
    config = h.config_path.read_text()
    h.config_path.write_text(config.replace("[store]\n", "[store]\nconcurrency = 2\n", 1))
    for i in range(12):
        h.write(f"Notes/note {i:02d}.txt", f"Note {i} on the law of identity. ".encode() * 40)
    summary = h.sync()
    assert summary["uploaded"] == 12 and summary["enrichment"]["waiting"] == 0
    assert generate_calls(h) == 12
    assert emulator.peak_in_flight["generate"] > 2, emulator.peak_in_flight
    assert emulator.peak_in_flight["upload"] <= 2, emulator.peak_in_flight
    assert all(set(doc.metadata) >= AI_KEYS for (doc,) in h.docs_by_path().values())


@pytest.mark.parametrize(
    ("kind", "reason", "words"),
    [
        ("safety", "safety", "safety filter"),
        ("prompt_blocked", "safety", "safety filter"),
        ("malformed_json", "malformed", "malformed"),
        ("max_tokens", "malformed", "malformed"),
    ],
)
def test_postponed_enrichment_waits_with_its_reason_and_is_done_later(g, kind, reason, words):
    fault = g.emulator.add_fault(Fault(kind=kind, times=None))
    summary = g.sync()
    assert summary["uploaded"] == 3
    assert summary["enrichment"]["by_reason"] == {reason: 3}
    status = json.loads(g.run("status", "--json").stdout)
    assert status["enrichment"]["waiting"] == 3
    text = g.run("status").stdout
    assert "3 file(s) wait for AI metadata" in text and words in text
    assert all("topics" not in d.metadata and d.metadata["title"] for d in g.docs())
    g.emulator.remove_fault(fault)
    summary = g.sync()  # a user's sync retries now, backoff or not
    assert summary["modified"] == 3 and summary["enrichment"]["waiting"] == 0
    assert all(set(d.metadata) >= AI_KEYS for d in g.docs())
    g.converged()


def test_budget_stops_enrichment_not_the_sync(emulator, tmp_path):
    h = Harness(tmp_path, "gemini", emulator)
    h.env["GEMINI_API_KEY"] = emulator.api_key
    assert h.init("[enrichment]\nmax_daily_tokens = 100\n").exit_code == 0
    for rel, text in TEXTS.items():
        h.write(rel, text.encode())
    summary = h.sync()
    assert summary["uploaded"] == 3 and generate_calls(h) == 0
    assert summary["enrichment"]["by_reason"] == {"budget": 3}
    for doc in h.docs():
        assert "topics" not in doc.metadata and doc.metadata["title"]
    text = h.run("status").stdout
    assert "paused for the daily token budget" in text
    h.converged()


def test_dry_run_shows_tokens_and_cost_before_spending(g):
    g.emulator.clear_log()  # init looked the store up
    offline = json.loads(g.run("sync", "--dry-run", "--json").stdout)["cost"]
    assert not g.emulator.requests  # a dry run calls nothing unless asked to count
    assert offline["counted_by"].startswith("offline")
    result = g.run("sync", "--dry-run", "--count-tokens", "--json")
    assert result.exit_code == 0, result.output
    cost = json.loads(result.stdout)["cost"]
    assert cost["files_to_enrich"] == 3 and cost["files_to_index"] == 3
    assert cost["enrichment_input_tokens"] > 0 and cost["indexing_tokens"] > 0
    assert cost["enrichment_cost"] > 0 and cost["counted_by"].startswith("countTokens")
    (count,) = g.emulator.find_requests(method="POST", path=r":countTokens$")
    assert len(count.json["contents"][0]["parts"]) == 3  # one request for the three
    assert generate_calls(g) == 0 and not g.docs()
    text = g.run("sync", "--dry-run").stdout
    assert "enrichment: 3 file(s)" in text and "indexing:" in text
    g.sync()
    cost = json.loads(g.run("sync", "--dry-run", "--json").stdout)["cost"]
    assert cost["files_to_enrich"] == 0


def test_force_re_uploads_exactly_where_the_enrichment_changed(g):
    g.sync()
    g.sync("--force")
    assert generate_calls(g) == 3  # same version: nothing re-derived, nothing re-uploaded
    docs = {d.name for d in g.docs()}
    cfg = g.config_path.read_text() + '\n[enrichment]\nmodel = "gemini-2.5-flash"\n'
    g.config_path.write_text(cfg)
    summary = g.sync()
    assert summary["modified"] == 0  # without --force an unchanged file stays
    summary = g.sync("--force")
    assert summary["modified"] == 3 and generate_calls(g) == 6
    assert not docs & {d.name for d in g.docs()}
    g.converged()


def test_a_failed_re_derivation_keeps_the_stored_metadata(g):
    g.sync()
    before = {d.metadata["path"]: d.metadata["topics"] for d in g.docs()}
    g.config_path.write_text(g.config_path.read_text() + '\n[enrichment]\nmodel = "other"\n')
    fault = g.emulator.add_fault(Fault(path=":generateContent", status=500, times=None))
    summary = g.sync("--force")
    assert summary["modified"] == 3 and summary["enrichment"]["by_reason"] == {"server_error": 3}
    # Uploaded meanwhile with the analysis of the old version, not without one.
    assert {d.metadata["path"]: d.metadata["topics"] for d in g.docs()} == before
    with g.db() as conn:
        done = conn.execute("SELECT count(*) FROM enrichments WHERE status = 'done'").fetchone()
    assert done[0] == 3
    g.emulator.remove_fault(fault)
    summary = g.sync()
    assert summary["modified"] == 3 and summary["enrichment"]["waiting"] == 0
    g.converged()


def test_skip_enrichment_and_disabled_make_no_model_call(g):
    g.sync("--skip-enrichment")
    assert generate_calls(g) == 0
    assert all(set(d.metadata) == {"library_id", "path", "sha256"} for d in g.docs())
    g.config_path.write_text(g.config_path.read_text() + "\n[enrichment]\nenabled = false\n")
    summary = g.sync("--force")  # path rules only: another version, so re-uploaded
    assert summary["modified"] == 3 and generate_calls(g) == 0
    assert all("topics" not in d.metadata and "title" in d.metadata for d in g.docs())
    assert "\nenrichment:" not in g.run("status").stdout  # never ran: nothing to say


def test_api_key_never_in_cache_logs_or_output(g):
    # A server that echoes the key back in its error messages.
    g.emulator.add_fault(
        Fault(path=":generateContent", status=500, message=f"bad request key={API_KEY}", times=None)
    )
    g.env["GEMINI_API_KEY"] = API_KEY
    g.emulator.api_key = API_KEY
    result = g.run("-v", "sync", "-v")
    status = g.run("status", "--json")
    outputs = result.output + result.stderr + status.output
    assert API_KEY not in outputs
    raw = b"".join(p.read_bytes() for p in g.state_dir.rglob("*") if p.is_file())
    assert API_KEY.encode() not in raw
    with g.db() as conn:
        query = "SELECT error FROM enrichments WHERE error IS NOT NULL"
        errors = [r[0] for r in conn.execute(query)]
    assert errors and all("REDACTED" in e for e in errors)


def test_local_backend_keeps_path_rules_unless_turned_on(emulator, tmp_path):
    h = Harness(tmp_path, "local")
    h.env["GEMINI_API_KEY"] = emulator.api_key
    assert h.init().exit_code == 0
    for rel, text in TEXTS.items():
        h.write(rel, text.encode())
    h.sync()
    assert not emulator.requests
    assert all("topics" not in d.metadata for d in h.docs())
    h.config_path.write_text(
        h.config_path.read_text()
        + f'\n[store]\nbase_url = "{emulator.url}"\n[enrichment]\nenabled = true\n'
    )
    summary = h.sync("--force")
    assert summary["modified"] == 3
    assert all(set(d.metadata) >= AI_KEYS for d in h.docs())
    found = json.loads(h.run("search", "concepts", "--topic", "reason", "--json").stdout)
    assert [hit["path"] for hit in found["hits"]] == ["Courses/OPAR/OPAR - Lesson 01 - Reason.txt"]
    assert "reason" in found["hits"][0]["topics"]
    found = json.loads(h.run("search", "concepts", "--topic", "railroad", "--json").stdout)
    assert found["hits"] == []
    where = 'category = "motm" OR course = "OPAR"'
    found = json.loads(h.run("search", "focus concepts", "--where", where, "--json").stdout)
    assert {hit["path"] for hit in found["hits"]} == {
        "Courses/OPAR/OPAR - Lesson 01 - Reason.txt",
        "MOTM/MOTM_2021-03-07_Free-Will.txt",
    }
    bad = h.run("search", "concepts", "--where", "topics:(")
    assert bad.exit_code == 2 and "refused the filter" in bad.output + bad.stderr


def test_ai_turned_on_without_a_key_uploads_and_says_why(tmp_path):
    h = Harness(tmp_path, "local")
    h.env |= {"GEMINI_API_KEY": None, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    assert h.init("[enrichment]\nenabled = true\n").exit_code == 0
    for rel, text in TEXTS.items():
        h.write(rel, text.encode())
    summary = h.sync()
    assert summary["uploaded"] == 3 and summary["enrichment"]["by_reason"] == {"no_key": 3}
    assert "no usable API key" in h.run("status").stdout
    h.converged()


def test_gemini_search_passes_the_filter(g):
    g.sync()
    g.emulator.clear_log()
    found = json.loads(g.run("search", "choice focus", "--topic", "free", "--json").stdout)
    (request,) = g.emulator.find_requests(method="POST", path=r":generateContent$")
    tool = request.json["tools"][0]["fileSearch"]
    assert tool["metadata_filter"] == 'topics:"free"'
    assert {hit["path"] for hit in found["hits"]} == {"MOTM/MOTM_2021-03-07_Free-Will.txt"}
    assert "free" in found["hits"][0]["topics"]
    bad = g.run("search", "concepts", "--where", "topics:(")
    assert bad.exit_code == 2 and "refused the filter" in bad.output + bad.stderr


# --- units: the pieces the stage is made of ---------------------------------------------

FILTER_CASES = [
    'topics:"free will"',
    'topics = "reason" AND year >= 2010',
    'course = "OPAR" OR category = "motm"',
    'NOT difficulty = "advanced"',
    '(category = "course" OR category = "book") AND NOT topics:"ethics"',
    "year < 2000 OR episode > 3",
    'difficulty != "introductory"',
    "missing = 1",
    'missing != "x"',
    "week <= 12 AND quarter = 2",
]
FILTER_DOCS = [
    {"topics": ["free will", "reason"], "year": 2012.0, "course": "OPAR", "category": "course"},
    {"topics": ["ethics"], "year": 1995.0, "category": "motm", "difficulty": "advanced"},
    {"category": "book", "difficulty": "introductory", "episode": 7.0, "week": 3.0},
    {"category": "course", "week": 12.0, "quarter": 2.0, "topics": ["reason"]},
]


@pytest.mark.parametrize("expression", FILTER_CASES)
def test_local_filters_agree_with_the_emulated_server(expression):
    """`--where` means on the local store what Gemini's metadata_filter means."""
    from emulator import _parse_filter

    from objlib_daemon.stores import filters

    ours, server = filters.parse(expression), _parse_filter(expression)
    assert [ours(d) for d in FILTER_DOCS] == [server(d) for d in FILTER_DOCS]


@pytest.mark.parametrize("bad", ["topics:", "(a = 1", "= 3", "a = 1 b", "a ~ 1"])
def test_local_filter_errors_name_the_problem(bad):
    from objlib_daemon.stores import filters

    with pytest.raises(filters.FilterError):
        filters.parse(bad)


def test_long_texts_are_sampled_to_the_budget():
    from objlib_daemon.enrichment.text import sample

    text = "a" * 50_000 + "MIDDLE" + "b" * 50_000 + "THE END"
    cut = sample(text, 1000)
    assert len(cut) <= 4000 + 20
    assert cut.startswith("aaa") and "MIDDLE" in cut and cut.endswith("THE END")
    assert sample("short", 1000) == "short"


def test_ai_fields_fit_the_20_entries_with_identity_kept(tmp_path):
    from objlib_daemon.config import MetadataRule
    from objlib_daemon.enrichment.analysis import Analysis
    from objlib_daemon.enrichment.cache import record_done
    from objlib_daemon.enrichment.enricher import Enricher
    from objlib_daemon.library.metadata import with_defaults
    from objlib_daemon.state.db import Database

    many = MetadataRule(r"^", {f"k{i:02}": "v" for i in range(20)})
    db = Database(tmp_path / "s.db", create=True)
    try:
        enricher = Enricher(
            db, library_id="L", rules=with_defaults((many,)), unavailable="no_key", model="m"
        )
        analysis = Analysis("One. Two. Three.", ("reason",), ("a",), ("Rand",), ("t",), "advanced")
        with db.session() as s:
            record_done(s, "f" * 64, enricher.ai_version, analysis, prompt_tokens=1,
                        output_tokens=1, now=0.0)  # fmt: skip
        got = enricher.for_upload("MOTM/MOTM_2021-03-07_Free-Will.txt", "f" * 64, b"x " * 600)
    finally:
        db.close()
    assert got.pending_reason is None and got.version == enricher.version
    metadata, header = got.enrichment.metadata, got.enrichment.header
    assert len(metadata) == 20
    assert {"library_id", "path", "sha256", "topics", "difficulty", "entities"} <= set(metadata)
    assert header.index("Title: ") < header.index("[AI Analysis]")


def test_malformed_answers_are_refused_and_oversized_ones_clipped():
    from objlib_daemon.enrichment.analysis import Analysis, Malformed

    ok = {
        "summary": "One. Two!  Three?",
        "primary_topics": [f"t{i}" for i in range(12)],
        "aspects": ["x" * 300],
        "entities": [],
        "key_themes": [],
        "difficulty": "Advanced",
    }
    got = Analysis.parse(json.dumps(ok))
    assert len(got.primary_topics) == 8 and len(got.aspects[0]) == 100
    assert got.difficulty == "advanced" and got.summary == "One. Two!"  # two sentences
    for broken in ("not json", "[]", json.dumps(ok | {"difficulty": "easy"})):
        with pytest.raises(Malformed):
            Analysis.parse(broken)
