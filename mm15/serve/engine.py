"""One generation thread, a bounded admission count, and batches of compatible requests.

Life of a request (a :class:`Job`):

1. :meth:`Engine.reserve` admits it or raises :class:`QueueFull` at once (the server answers
   429) -- before any image is fetched or decoded, so overload costs nothing (vLLM #58192).
   At most ``max_batch + max_queue`` jobs are admitted at a time.
2. :meth:`Engine.submit` queues the prepared prompt.  An idle worker waits up to
   ``batch_wait_ms`` for admitted jobs still being prepared and for as many jobs as its last
   batch had, so that requests arriving together run together (:meth:`Engine._gather`).  It
   takes the oldest waiting job
   and every other waiting job with the same sampling settings (greedy requests always batch
   together; a request with a ``seed`` runs alone so that its seed means what it says), up to
   ``max_batch``, and runs them through one batched generate call.
3. Per token the job's text is decoded and handed to its ``sink`` as events:
   ``("delta", text)``, then exactly one ``("done", finish_reason, text, n_tokens)`` or
   ``("error", message)``.  A job ends on eos, a stop string (cut before it), its own
   ``max_tokens`` ("length"), or cancellation; its slot is released at that moment.
4. :meth:`Engine.cancel` (a client that went away) drops a waiting job at once, and makes a
   running one end at its next token.

The worker is supervised: an exception in its loop fails only the jobs it was handling (an
``("error", ...)`` event each), is logged, and the loop goes on.  Should the thread end anyway,
:attr:`Engine.alive` turns false and :attr:`Engine.error` says why; every job it held gets an
error event and :meth:`Engine.reserve` raises :class:`EngineDead` (the server answers 503, and so
does ``/health``) instead of admitting work nobody will do (vLLM's engine-dead health check).

Streamed deltas are never taken back: text that could still become a stop string (the last
``len(longest stop) - 1`` characters) or an incomplete UTF-8 sequence (trailing U+FFFD) is held
back until the next token settles it, so the deltas always add up to the final text.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mm15.data.prompt_encoding import EncodedPrompt
from mm15.model.generate import GREEDY_BELOW, TokenCallback
from mm15.serve.config import EngineConfig
from mm15.services.inference import GenerationSettings, generate_encoded

log = logging.getLogger("mm15.serve")

Event = tuple  # ("delta", str) | ("done", reason, text, n_tokens) | ("error", message)
GenerateFn = Callable[[Sequence[EncodedPrompt], GenerationSettings, TokenCallback], object]


class QueueFull(Exception):
    """Every admission slot is taken."""


class EngineDead(Exception):
    """The generation thread is not running (never started, stopped, or died: see ``error``)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def batch_key(self, job_id: int) -> tuple:
        """Jobs with equal keys may share a generate call (one sampler for the whole batch)."""
        if self.temperature < GREEDY_BELOW:  # argmax: seed, top_p and top_k play no part
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", job_id)  # alone: a shared generator would not honour the seed
        return ("sample", self.temperature, self.top_p, self.top_k)


@dataclass(eq=False)
class Job:
    id: int
    prompt: EncodedPrompt | None = None
    params: SamplingParams | None = None
    sink: Callable[[Event], None] | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of ``text`` already emitted
    finish_reason: str | None = None
    cancelled: bool = False
    released: bool = False

    def emit(self, event: Event) -> None:
        if self.sink is not None:
            try:
                self.sink(event)
            except Exception:  # a closed event loop must not stop the engine
                log.debug("job %d: sink failed", self.id, exc_info=True)


class Engine:
    """The generation worker (see the module docstring).  ``generate_fn(prompts, settings,
    on_token)`` defaults to :func:`mm15.services.inference.generate_encoded` on ``model``; tests give
    their own to hold work or script answers."""

    def __init__(
        self, model, tokenizer, cfg: EngineConfig, *, generate_fn: GenerateFn | None = None
    ):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.eos = set(tokenizer.eos_ids)
        self._generate = generate_fn or (
            lambda prompts, settings, on_token: generate_encoded(
                model, tokenizer, prompts, settings, on_token=on_token
            )
        )
        self._cv = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._batch: list[Job] = []  # the jobs being generated
        self._stopping = False
        self.pending = 0  # admitted and not yet released
        self.running = 0  # jobs in the batch being generated
        self._last_batch = 1
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.cancelled = 0
        self.completed = 0
        self.loop_errors = 0  # exceptions the supervised loop survived
        self.error: str | None = None  # why the worker thread ended, when it died

    @property
    def capacity(self) -> int:
        return self.cfg.max_batch + self.cfg.max_queue

    @property
    def alive(self) -> bool:
        """The worker thread runs and has not died."""
        t = self._thread
        return t is not None and t.is_alive() and self.error is None and not self._stopping

    def state(self) -> dict:
        """Counters for ``/health`` (read without the lock: a snapshot, never a wait)."""
        return {
            "alive": self.alive,
            "error": self.error,
            "pending": self.pending,
            "running": self.running,
            "waiting": len(self._waiting),
            "capacity": self.capacity,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "loop_errors": self.loop_errors,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping, self.error = False, None
        self._thread = threading.Thread(target=self._main, name="mm15-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stopping = True
            dropped = list(self._waiting)
            self._waiting.clear()
            for job in dropped:
                self._release_locked(job)
            self._cv.notify_all()
        for job in dropped:
            job.emit(("error", "the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    # -- admission ---------------------------------------------------------------------------

    def reserve(self) -> Job:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if not self.alive:
                raise EngineDead(self.error or "the generation thread is not running")
            if self.pending >= self.capacity:
                raise QueueFull(
                    f"{self.pending} requests are queued or running (limit {self.capacity})"
                )
            self.pending += 1
            self._next_id += 1
            return Job(id=self._next_id)

    def release(self, job: Job) -> None:
        """Give a reserved job's slot back (idempotent); for jobs that never get submitted."""
        with self._cv:
            self._release_locked(job)

    def _release_locked(self, job: Job) -> None:
        if not job.released:
            job.released = True
            self.pending -= 1
            self._cv.notify_all()

    def submit(
        self, job: Job, prompt: EncodedPrompt, params: SamplingParams, sink: Callable[[Event], None]
    ) -> None:
        job.prompt, job.params, job.sink = prompt, params, sink
        with self._cv:
            if job.released or job.cancelled:
                raise ValueError(f"job {job.id} was released or cancelled before submit")
            if not self.alive:
                raise EngineDead(self.error or "the generation thread is not running")
            self._waiting.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the job if it waits, end it at its next token if it runs."""
        with self._cv:
            if job.released or job.finish_reason is not None:
                return
            job.cancelled = True
            self.cancelled += 1
            if job in self._waiting:
                self._waiting.remove(job)
                job.finish_reason = "cancelled"
                self._release_locked(job)
            self._cv.notify_all()

    def wait_until(self, predicate: Callable[[Engine], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (checked on every state change)."""
        with self._cv:
            return self._cv.wait_for(lambda: predicate(self), timeout)

    # -- the worker --------------------------------------------------------------------------

    def _take_batch(self) -> list[Job]:
        """The oldest waiting job and those that may share its generate call; [] when every
        waiting job was cancelled while the worker gathered (the lock is free in ``wait``)."""
        if not self._waiting:
            return []
        key = self._waiting[0].params.batch_key(self._waiting[0].id)
        batch = [j for j in self._waiting if j.params.batch_key(j.id) == key]
        batch = batch[: self.cfg.max_batch]
        for job in batch:
            self._waiting.remove(job)
        return batch

    def _gather(self) -> None:
        """Before starting a batch smaller than ``max_batch``, wait (at most ``batch_wait_ms``)
        for admitted requests still being prepared, and for as many requests as the last
        batch had: clients of a batch resend at about the same time.  Lone requests (no one
        preparing, last batch of one) start at once.  Called with the lock held."""
        deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
        while not self._stopping and len(self._waiting) < self.cfg.max_batch:
            preparing = self.pending - len(self._waiting) - self.running
            left = deadline - time.monotonic()
            if (preparing <= 0 and len(self._waiting) >= self._last_batch) or left <= 0:
                return
            self._cv.wait(left)

    def _main(self) -> None:
        """The thread: the supervised loop; if it ends other than by :meth:`stop`, say why
        and fail every job still held, so that no client waits for ever."""
        try:
            self._loop()
        except BaseException as e:  # not re-raised: logged here, reported by /health
            log.critical("the generation thread died", exc_info=True)
            self._died(f"the generation thread died: {type(e).__name__}: {e}")
            return
        if not self._stopping:
            log.critical("the generation thread ended")
            self._died("the generation thread ended")

    def _died(self, why: str) -> None:
        with self._cv:
            self.error = why
            held = list(self._waiting) + self._batch
            self._waiting.clear()
            self.running, self._batch = 0, []
            self._cv.notify_all()
        self._fail(held, f"{why}; the server cannot answer")

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._waiting or self._stopping)
                if self._stopping:
                    return
                try:
                    self._gather()
                    if self._stopping:
                        return
                    batch = self._take_batch()
                except Exception as e:  # a bug in picking: fail the oldest job, keep serving
                    self._survive(e, [self._waiting.popleft()] if self._waiting else [])
                    continue
                if not batch:
                    continue
                self._batch = batch
                self._last_batch = self.running = len(batch)
                self.batch_sizes[len(batch)] += 1
                self._cv.notify_all()
            try:
                self._run_batch(batch)
            except Exception as e:  # outside generate (which _run_batch catches itself)
                self._survive(e, batch)
            with self._cv:
                self.running, self._batch = 0, []
                self._cv.notify_all()

    def _survive(self, e: Exception, jobs: list[Job]) -> None:
        log.exception("engine loop error; failing %d job(s) and serving on", len(jobs))
        self.loop_errors += 1
        self._fail(jobs, f"internal error in the engine: {type(e).__name__}: {e}")

    def _fail(self, jobs: list[Job], message: str) -> None:
        """End ``jobs`` that have not ended with an error event (never raises)."""
        for job in jobs:
            if job.finish_reason is None:
                job.finish_reason = "error"
                job.emit(("error", message))
            self.release(job)

    def _run_batch(self, batch: list[Job]) -> None:
        p = batch[0].params
        kind = p.batch_key(batch[0].id)[0]
        # Only what the batch key makes equal across the batch is passed on: nothing of the
        # sampler for greedy batches, and a seed only for a batch of one.
        settings = GenerationSettings(
            max_new_tokens=max(j.params.max_tokens for j in batch),
            seed=p.seed if kind == "seeded" else None,
        )
        if kind != "greedy":
            settings.temperature, settings.top_p, settings.top_k = p.temperature, p.top_p, p.top_k
        try:
            self._generate(
                [j.prompt for j in batch], settings, lambda i, t: self._on_token(batch[i], t)
            )
        except Exception as e:  # e.g. out of memory: fail these requests, keep serving
            log.exception("generation failed for a batch of %d", len(batch))
            self._fail(batch, f"generation failed: {type(e).__name__}: {e}")
        for job in batch:  # rows the generator ended without telling us (it stops at the max)
            if job.finish_reason is None:
                self._finish(job, "cancelled" if job.cancelled else "length")

    def _on_token(self, job: Job, token: int) -> bool:
        if job.finish_reason is not None:
            return False
        if job.cancelled:
            self._finish(job, "cancelled")
            return False
        if token in self.eos:
            self._finish(job, "stop")
            return False
        job.tokens.append(token)
        text = self.tokenizer.decode(job.tokens)
        stops = [text.find(s) for s in job.params.stop if s in text]
        if stops:
            job.text = text[: min(stops)]
            self._finish(job, "stop")
            return False
        job.text = text
        if len(job.tokens) >= job.params.max_tokens:
            self._finish(job, "length")
            return False
        hold = max((len(s) for s in job.params.stop), default=1) - 1
        safe = len(text) - hold
        while safe > job.sent and text[safe - 1] == "\ufffd":
            safe -= 1  # maybe an incomplete UTF-8 sequence: wait for its next bytes
        if safe > job.sent:
            job.emit(("delta", text[job.sent : safe]))
            job.sent = safe
        return True

    def _finish(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        if reason != "cancelled":
            if len(job.text) > job.sent:
                job.emit(("delta", job.text[job.sent :]))
                job.sent = len(job.text)
            job.emit(("done", reason, job.text, len(job.tokens)))
        with self._cv:
            self.completed += reason != "cancelled"
            self._release_locked(job)
