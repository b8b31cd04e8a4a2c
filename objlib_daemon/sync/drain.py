"""The drain: queue → applier, pipelined so the store keeps pace with the API,
not with its indexing.

Two stages, one coordinator (the caller's thread):

- upload workers claim due rows (the fresh lane first: a save never waits
  behind a bulk pass) and let the applier look and act. At most `[store]
  concurrency` of them send bytes at once, and only while the bytes go up;
  then the row is *indexing*, durably (its intent holds the operation). With
  AI enrichment, `ASKING` more workers wait for the model's answers meanwhile.
- the indexing tracker polls every outstanding import once it is likely done
  (after the indexing time observed so far, `IndexingClock`), from a small
  pool, and lets the applier finish it: record the document, then retire
  the one it supersedes (upload first).

Folder hints due in the queue are expanded into file rows (by the scanner,
`expand`) before each claim, so the files below a folder that appeared or
went away are claimed like any others.

On a store that finishes imports inside the upload (`Store.instant`, the
embedded one) there is nothing to track: an upload worker takes a batch of
rows (`BATCH`), looks at each alone, and uploads and records the batch's new
content together (`Applier.upload_batch`), which spares a first sync several
transactions per file.

A row stays in the queue until its outcome is written, so a crash at any
instant leaves it to the next drain; imports the store accepted before a
crash are resumed from their intents, not uploaded again.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue

from sqlalchemy import select

from objlib_daemon.config import Config
from objlib_daemon.errors import VolumeUnavailable
from objlib_daemon.logging import get_logger
from objlib_daemon.state import queue
from objlib_daemon.state.db import Database, DiskFull, StateError
from objlib_daemon.state.models import Intent, PendingChange
from objlib_daemon.stores.base import (
    CircuitOpen,
    ImportRetryable,
    OperationLost,
    PermanentError,
    StoreError,
    StoreUnusable,
    TransientError,
)
from objlib_daemon.sync.applier import Applier, Indexing, Planned, Result, Retry
from objlib_daemon.sync.outcome import Outcome
from objlib_daemon.sync.recovery import Recovery
from objlib_daemon.timefmt import utc_iso

log = get_logger("objlibd.drain")

# While work is in flight, look for newly due rows this often (a kick from the
# watcher lands in the queue, not here).
RECLAIM = 0.5
# Polls before an import may be given up at the deadline: GeminiStore checks
# the document itself from its third poll of an operation (stores/gemini.py).
MIN_POLLS = 4
# Rows per upload job on an instant store: a batch's few transactions cost
# about what one file's did. A fresh change waits for at most the batch in
# progress (~0.2 s of small files). The bytes read for a batch's uploads wait
# in memory, so it is sent early once they reach BATCH_BYTES.
BATCH = 256
BATCH_BYTES = 32 << 20
# Workers beyond `[store] concurrency` while AI enrichment is on: the model
# reads each new content before its upload (its metadata goes with the
# bytes), about 2 s a document, so with only the upload workers a first sync
# ran at the model's pace (1.5 files/s at concurrency 4). 16 answers in flight
# keep up with the uploads at 150 ms per request; the model's own adaptive
# pacing (enrichment/) still bounds the request rate, and only `concurrency`
# workers send at once.
ASKING = 16


class IndexingClock:
    """When to poll an import: around the indexing time the store showed so far.

    The service publishes no indexing time (seconds for real, 0 on the
    embedded store), so it is learned: a poll that finds the import done at
    once suggests polling a little earlier next time, one that had to wait
    moves the estimate toward the time it took. A miss just before the
    estimate's end is the usual case (the estimate hovers just under the true
    time), so the polls after it come in short steps (`STEP` of the estimate)
    until 1.5x the estimate: an import is seen at most ~0.15x its indexing
    time late, instead of up to 0.5x with a geometric backoff from the first
    miss (2.5 s at 5 s indexing, and an estimate learned that much too high).
    Beyond that, or once the estimate is at its ceiling (a lower bound only),
    the polls back off geometrically, so an import costs about 1-3 polls
    whatever its time.
    """

    STEP = 0.15

    def __init__(self, initial: float = 2.0, floor: float = 0.1, ceiling: float = 10.0) -> None:
        self.estimate = initial
        self.floor = floor
        self.ceiling = ceiling
        self._lock = threading.Lock()

    def next(self, elapsed: float, polls: int, deadline: float) -> float:
        """Delay before the next poll of an import not done after `elapsed` seconds
        and `polls` polls; the polls a deadline needs (MIN_POLLS) fit before it."""
        if polls == 0:
            delay = self.estimate
        elif self.estimate < self.ceiling and elapsed < 1.5 * self.estimate:
            delay = max(self.floor, self.STEP * self.estimate)
        else:
            delay = min(self.ceiling, max(self.floor, 0.5 * elapsed, 0.25 * self.estimate))
        if polls < MIN_POLLS:
            delay = min(delay, max(self.floor, (deadline - elapsed) / (MIN_POLLS - polls)))
        return delay

    def done(self, elapsed: float, polls: int) -> None:
        with self._lock:
            # Toward what this import showed, not relative to the estimate: with
            # dozens of imports in flight, outcomes arrive an indexing time late,
            # and `estimate *= 0.9` per first-poll hit collapsed it after a run
            # of hits (every import then missed). A hit bounds the time from
            # above (done by `elapsed`); a miss-then-hit is the time, to a step.
            target = 0.9 * elapsed if polls <= 1 else elapsed
            self.estimate = 0.7 * self.estimate + 0.3 * target
            self.estimate = min(self.ceiling, max(self.floor, self.estimate))


class _HandedBack(Exception):
    """The drain stopped before an upload began."""


@dataclass
class _Gate:
    """The drain's `applier.Gate`: hands a row back once the drain stops (before
    the model is asked, and again once a send slot is free), and bounds the
    uploads sending at once to `[store] concurrency`."""

    slots: threading.BoundedSemaphore
    stops: tuple[threading.Event, ...]

    def check(self) -> None:
        if any(e.is_set() for e in self.stops):
            raise _HandedBack

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self.slots:
            self.check()
            yield


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    ix: Indexing = field(compare=False)


class Drain:
    """Applies every due queue row of one library through the pipeline."""

    def __init__(
        self,
        db: Database,
        applier: Applier,
        recovery: Recovery,
        config: Config,
        expand: Callable[[], int],
    ):
        self.db = db
        self.applier = applier
        self.recovery = recovery
        self.config = config
        self.expand = expand  # due folder hints -> file rows (Reconciler.expand_due)
        self.clock = IndexingClock()
        self._seq = itertools.count()
        # Why rows wait untried while the breaker holds this drain (queue.hold).
        self._holding: str | None = None

    def backoff(self, attempts: int, hint: float | None = None) -> float:
        base = self.config.sync.retry_base * 2 ** min(attempts, 20)
        delay = min(self.config.sync.retry_max, base) * random.uniform(0.8, 1.2)
        return max(delay, hint or 0.0)

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        on_result: Callable[[Result], None] | None = None,
        concurrency: int | None = None,
    ) -> Counter[str]:
        """Apply every due row and finish every import started; returns counts.

        Returns early (imports left indexing, resumed by the next run) when
        `stop` is set or the volume, the credentials or the breaker halt it;
        a halt by volume or credentials is raised after the workers stopped.
        """
        stop = stop or threading.Event()
        halt = threading.Event()
        self._holding = None
        fatal: list[BaseException] = []
        counts: Counter[str] = Counter()
        events: SimpleQueue[tuple[str, list[Result | Indexing]]] = SimpleQueue()
        resumed = self.applier.resumable()
        with self.db.session() as s:
            # One applier, one drain at a time: a row claimed or indexing now was
            # left by a run that died or could not write its outcome (a full disk).
            queue.reset_inflight(s, keep=[ix.path for ix in resumed])
        self.recovery.resolve_quietly(busy={ix.intent for ix in resumed})
        # Superseded documents a killed run recorded but never deleted (a batch
        # retires its orphans after its one record): delete the due ones now, not
        # an hour later, so a restart converges. A failing delete stays recorded.
        self.applier.cleanup_orphans()
        self.recovery.index_identities()
        heap: list[_Due] = []
        now = time.time()
        for ix in resumed:
            ix.started = now
            heapq.heappush(heap, _Due(now, next(self._seq), ix))
        tracked = {ix.intent for ix in resumed}
        senders = concurrency or self.config.store.concurrency
        slots = threading.BoundedSemaphore(senders)
        workers, batch = senders, 1
        if self.applier.instant:
            # No transfer to overlap: a batch is Python work under the GIL, and
            # a second one beside it only contends (20,000 files: 14.9 s with
            # one, 20.4 s and 1.5x the CPU with two).
            workers, batch = 1, BATCH
        elif self.applier.asks_model:
            workers += ASKING
        pollers = max(2, min(8, senders))
        running = polling = 0
        drained = False
        last_claim = 0.0

        def guarded(
            stage: str, paths: list[str], job: Callable[[], list[Result | Indexing]]
        ) -> None:
            """Run one job; the coordinator hears of every job, whatever happens."""
            try:
                out = job()
            except (DiskFull, StateError) as exc:  # nothing can be recorded: stop, say so
                halt.set()
                fatal.append(exc)
                out = [Result(path, Outcome.PAUSED, error=str(exc)) for path in paths]
            except BaseException as exc:
                log.exception("drain stage failed", paths=paths[:5])
                out = [
                    Result(path, Outcome.RETRYING, error=f"internal error: {exc!r}")
                    for path in paths
                ]
            events.put((stage, out))

        def upload(claims: list[queue.Claim]) -> None:
            paths = [c.path for c in claims]
            if batch == 1:
                guarded("w", paths, lambda: self._start(claims[0], slots, (stop, halt), fatal))
            else:
                guarded("w", paths, lambda: self._start_batch(claims, halt, fatal))

        def poll(ix: Indexing) -> None:
            guarded("p", [ix.path], lambda: [self._poll(ix, halt, fatal)])

        with (
            ThreadPoolExecutor(workers, thread_name_prefix="upload") as upload_pool,
            ThreadPoolExecutor(pollers, thread_name_prefix="indexing") as poll_pool,
        ):
            while True:
                active = not stop.is_set() and not halt.is_set()
                now = time.time()
                if active and running < workers and (not drained or now - last_claim > RECLAIM):
                    try:
                        self.expand()
                    except VolumeUnavailable as exc:
                        halt.set()
                        fatal.append(exc)
                        continue
                    with self.db.session() as s:
                        claims = queue.claim(s, limit=(workers - running) * batch)
                    last_claim = now
                    drained = len(claims) < (workers - running) * batch
                    for i in range(0, len(claims), batch):
                        running += 1
                        upload_pool.submit(upload, claims[i : i + batch])
                while heap and heap[0].at <= now and polling < pollers and not halt.is_set():
                    polling += 1
                    poll_pool.submit(poll, heapq.heappop(heap).ix)
                waiting = bool(heap) and active
                if not running and not polling and not waiting and (drained or not active):
                    break
                timeout = RECLAIM if active else None
                if heap and polling < pollers:
                    timeout = max(0.0, min(timeout or RECLAIM, heap[0].at - now))
                try:
                    stage, outs = events.get(timeout=timeout)
                except Empty:
                    continue
                if stage == "w":
                    running -= 1
                    drained = False
                else:
                    polling -= 1
                for out in outs:
                    if isinstance(out, Indexing):
                        tracked.add(out.intent)
                        due = time.time() + self._delay(out)
                        heapq.heappush(heap, _Due(due, next(self._seq), out))
                        continue
                    counts[out.action] += 1
                    counts["hashed"] += out.hashed
                    counts["uploaded"] += out.uploaded
                    counts["deleted"] += out.deleted
                    if on_result is not None:
                        on_result(out)
        busy = {d.ix.intent for d in heap}
        if not halt.is_set() and self._has_leftovers(busy):
            self.recovery.resolve_quietly(busy=busy)
        if not halt.is_set() and not stop.is_set():
            self.recovery.identities_settled()
        if fatal:
            raise fatal[0]
        return counts

    def _delay(self, ix: Indexing) -> float:
        elapsed = time.time() - ix.started
        return self.clock.next(elapsed, ix.polls, self.config.store.operation_timeout)

    def _has_leftovers(self, busy: set[int]) -> bool:
        with self.db.session() as s:
            ids = set(s.scalars(select(Intent.id)).all())
        return bool(ids - busy)

    # --- stage 1: look, act, upload --------------------------------------------------

    def _start(
        self,
        claim: queue.Claim,
        slots: threading.BoundedSemaphore,
        stops: tuple[threading.Event, threading.Event],
        fatal: list,
    ) -> list[Result | Indexing]:
        """Look at and act on one row; [] when the drain stopped (or halted)
        before its upload began: the row goes back to the queue, not tried."""
        try:
            out = self.applier.start(
                claim.path,
                force=claim.reason == queue.FORCE,
                gen=claim.gen,
                retry=claim.reason == queue.RETRY,
                gate=_Gate(slots, stops),
            )
        except _HandedBack:
            with self.db.session() as s:
                queue.release(s, [claim])
                if stops[1].is_set() and self._holding:  # halted by the breaker: say so
                    queue.hold(s, self._holding)
            return []
        except Exception as exc:
            return [self._failed(claim, exc, stops[1], fatal)]
        if isinstance(out, Result):
            self._complete([claim])
        return [out]

    def _start_batch(
        self, claims: list[queue.Claim], halt: threading.Event, fatal: list
    ) -> list[Result | Indexing]:
        """A batch of rows on an instant store: each looked at and acted on alone,
        the uploads made and recorded together (their queue rows completed in
        that record), every other finished row's completion in one transaction."""
        known = self.applier.known(c.path for c in claims)
        outs: list[Result | Indexing] = []
        planned: list[tuple[queue.Claim, Planned]] = []
        held = 0
        finished: list[queue.Claim] = []
        for i, claim in enumerate(claims):
            if halt.is_set():  # paused, or the volume or credentials gone: hand back the rest
                with self.db.session() as s:
                    queue.release(s, claims[i:])
                break
            try:
                out = self.applier.prepare(
                    claim.path,
                    force=claim.reason == queue.FORCE,
                    gen=claim.gen,
                    retry=claim.reason == queue.RETRY,
                    known=known,
                )
            except Exception as exc:
                outs.append(self._failed(claim, exc, halt, fatal))
                continue
            if isinstance(out, Planned):
                planned.append((claim, out))
                held += out.snap.size
                if held >= BATCH_BYTES:
                    outs += self._upload_batch(planned, halt, fatal)
                    planned, held = [], 0
                continue
            if isinstance(out, Result):
                finished.append(claim)
            outs.append(out)
        self._complete(finished)
        return outs + self._upload_batch(planned, halt, fatal)

    def _upload_batch(
        self, planned: list[tuple[queue.Claim, Planned]], halt: threading.Event, fatal: list
    ) -> list[Result | Indexing]:
        """Upload and record planned files together; each failure handled as one file's."""
        if not planned:
            return []
        outs: list[Result | Indexing] = []
        try:
            answers = self.applier.upload_batch([p for _, p in planned])
        except (DiskFull, StateError):  # nothing can be recorded: the drain stops
            raise
        except Exception as exc:  # the record failed: the intents stay for recovery
            log.exception("could not record a batch of uploads", files=len(planned))
            answers = {p.path: exc for _, p in planned}
        for claim, p in planned:
            answer = answers[p.path]
            if isinstance(answer, Result):
                if not answer.uploaded:  # failed (refused): its row completes here
                    self._complete([claim])
                outs.append(answer)
            else:
                outs.append(self._failed(claim, answer, halt, fatal))
        return outs

    def _failed(
        self, claim: queue.Claim, exc: Exception, halt: threading.Event, fatal: list
    ) -> Result:
        """What an attempt at a claimed row that raised `exc` means for the row."""
        if isinstance(exc, Retry):
            if exc.soon:  # still being written: look again once it has settled
                settle = self.config.daemon.settle_seconds
                return self._later(claim.path, claim.gen, str(exc), settle)
            return self._later(claim.path, claim.gen, str(exc))
        if isinstance(exc, CircuitOpen):
            halt.set()
            since = utc_iso(exc.opened_at or time.time())
            self._holding = f"not tried: breaker open since {since} ({exc})"
            with self.db.session() as s:
                queue.release(s, [claim])
                queue.hold(s, self._holding)
            return Result(claim.path, Outcome.PAUSED, error=str(exc))
        if isinstance(exc, TransientError):
            return self._later(claim.path, claim.gen, str(exc), hint=exc.retry_after)
        if isinstance(exc, VolumeUnavailable | StoreUnusable):
            halt.set()
            fatal.append(exc)
            with self.db.session() as s:
                queue.release(s, [claim])
            return Result(claim.path, Outcome.PAUSED, error=str(exc))
        if isinstance(exc, StoreError):
            return self._later(claim.path, claim.gen, str(exc))
        # A bug must not stop the other files.
        log.error("applier error", path=claim.path, exc_info=exc)
        return self._later(claim.path, claim.gen, f"internal error: {exc!r}")

    # --- stage 2: wait for the import, finish --------------------------------------

    def _poll(self, ix: Indexing, halt: threading.Event, fatal: list) -> Result | Indexing:
        elapsed = time.time() - ix.started
        try:
            doc = self.applier.poll(ix)
        except (OperationLost, ImportRetryable) as exc:
            # Over without a document to keep: the intent stays for recovery,
            # which deletes whatever FAILED document the import left.
            self.applier.attempt_ended(ix.intent, lost=True)
            return self._later(ix.path, ix.gen, str(exc))
        except StoreUnusable as exc:
            halt.set()
            fatal.append(exc)
            return Result(ix.path, Outcome.PAUSED, error=str(exc))
        except PermanentError as exc:
            result = self.applier.refused(ix, exc)
            self._complete([queue.Claim(ix.path, ix.gen, 0, "")])
            return result
        except TransientError as exc:  # the look failed, not the import: look again later
            if not self._deadline(ix, elapsed):
                log.info("indexing poll failed", path=ix.path, error=str(exc))
                return ix
            doc = None
        if doc is None:
            if not self._deadline(ix, elapsed):
                return ix
            # Still indexing at the deadline: never counted indexed. The intent
            # keeps its operation, so the retry waits on it instead of uploading.
            self.applier.attempt_ended(ix.intent)
            return self._later(
                ix.path, ix.gen, f"still indexing after {elapsed:.0f} s", action=Outcome.INDEXING
            )
        self.clock.done(elapsed, ix.polls)
        try:
            result = self.applier.finish(ix, doc)
        except Exception as exc:  # the database (a full disk): the intent resolves it later
            log.exception("could not record a finished upload", path=ix.path)
            return self._later(ix.path, ix.gen, f"could not record: {exc!r}")
        self._complete([queue.Claim(ix.path, ix.gen, 0, "")])
        return result

    def _deadline(self, ix: Indexing, elapsed: float) -> bool:
        """Past `[store] operation_timeout`, and looked at often enough that the
        store has also checked the document itself (an operation may never say done)."""
        return elapsed >= self.config.store.operation_timeout and ix.polls >= MIN_POLLS

    # --- queue outcomes ----------------------------------------------------------------

    def _complete(self, claims: list[queue.Claim]) -> None:
        if claims:
            with self.db.session() as s:
                queue.complete(s, claims)

    def _later(
        self,
        path: str,
        gen: int,
        error: str,
        delay: float | None = None,
        *,
        hint: float | None = None,
        action: Outcome = Outcome.RETRYING,
    ) -> Result:
        with self.db.session() as s:
            row = s.get(PendingChange, path)
            attempts = row.attempts if row is not None else 0
            wait = delay if delay is not None else self.backoff(attempts, hint)
            queue.retry_later(s, queue.Claim(path, gen, attempts, ""), error=error, delay=wait)
        self.applier.note_error(path, error)
        log.info("retry later", path=path, error=error, delay=round(wait, 1))
        return Result(path, action, error=error)
