"""`make demo`: objlibd's main job on a bundled sample library, no account needed.

Copies `sample_library/` to a temporary folder, sets up the embedded local
store there, syncs, changes a few files the way a user would, syncs again,
searches and shows the status — printing each command and its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE = Path(__file__).with_name("sample_library")


def objlibd(*args: str, env: dict[str, str]) -> None:
    print(f"\n$ objlibd {' '.join(_quote(a) for a in args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "objlib_daemon", *args], env=env, text=True, capture_output=True
    )
    out = (result.stdout + result.stderr).rstrip()
    print("\n".join("  " + line for line in out.splitlines()), flush=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: `objlibd {args[0]}` exited {result.returncode}")


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="objlibd-demo-") as tmp:
        base = Path(tmp)
        root = base / "Objectivism Library"
        shutil.copytree(SAMPLE, root)
        env = dict(os.environ)
        env.update(
            OBJLIBD_CONFIG=str(base / "config.toml"),
            OBJLIBD_STATE_DIR=str(base / "state"),
            OBJLIBD_RUNTIME_DIR=str(base / "run"),
        )
        files = sum(1 for p in root.rglob("*") if p.is_file())
        step(f"A sample library of {files} files at {root} (two are too small or OS litter)")
        objlibd("init", "--library", str(root), env=env)

        step("First sync: every eligible file is uploaded to the embedded local store")
        objlibd("sync", env=env)

        step("Nothing changed: a sync only stats the files (0 hashed, 0 uploaded)")
        objlibd("sync", env=env)

        step("The user edits one transcript, adds a lecture, renames one and deletes one")
        edited = root / "MOTM/MOTM_2020-06-14_Objectivity-in-Ethics.txt"
        edited.write_text(edited.read_text() + "\nCorrection: objectivity is volitional.\n")
        added = root / "Courses/Objectivism Through Induction"
        (added / "Objectivism Through Induction - Lesson 04 - Ethics of Egoism.txt").write_text(
            "Lesson 4. Egoism, values and the standard of life.\n" * 40
        )
        os.rename(
            root / "HBTV/HBTV - Harry Binswanger on Certainty.txt",
            root / "HBTV/HBTV - Harry Binswanger - Certainty and Doubt.txt",
        )
        (root / "Thinking Lab/Thinking Lab - Session 13 - Why We Procrastinate.txt").unlink()
        objlibd("sync", "--dry-run", "-v", env=env)
        objlibd("sync", "-v", env=env)

        step("The deleted file is 'missing', not gone: its document stays until pruned")
        objlibd("status", env=env)

        step("Search the store")
        objlibd("search", "egoism standard of life", "--limit", "3", env=env)
        print("\nDemo finished: the temporary library and state are removed.", flush=True)


if __name__ == "__main__":
    main()
