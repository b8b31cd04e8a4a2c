"""The real library's 1,749 paths sync completely, with the right metadata per pattern."""

from __future__ import annotations

from pathlib import Path

from harness import filler, real_paths


def test_real_library_syncs_completely(h):
    paths = real_paths()
    assert len(paths) == 1749
    for rel in paths:
        h.write(rel, filler(rel, 1100))
    summary = h.sync()
    assert (summary["new"], summary["uploaded"], summary["failed"]) == (1749, 1749, 0)
    by_path = {d.metadata["path"]: d for d in h.docs()}
    assert set(by_path) == set(paths)

    def meta(rel: str) -> dict:
        return by_path[rel].metadata

    courses = [p for p in paths if p.startswith("Courses/")]
    assert all(meta(p)["category"] == "course" and meta(p).get("course") for p in courses)
    motm = [p for p in paths if p.startswith("MOTM/")]
    assert all(meta(p)["category"] == "motm" and meta(p).get("date") for p in motm)
    episodes = [p for p in paths if "/Episode " in p]
    assert episodes and all(isinstance(meta(p).get("episode"), float) for p in episodes)
    lessons = [p for p in paths if " - Lesson " in p]
    assert lessons and all(meta(p).get("lesson") is not None for p in lessons)
    week = next(p for p in paths if " - Week " in p and "/Year" in p)
    assert {"year", "quarter", "week"} <= set(meta(week))
    assert all(len(meta(p)) <= 20 and meta(p).get("title") for p in paths)
    assert all(by_path[p].display_name == Path(p).name.strip() for p in paths)
    # And a second pass over the whole library costs a stat walk, nothing more.
    again = h.sync()
    assert (again["hashed"], again["uploaded"], again["unchanged"]) == (0, 0, 1749)
