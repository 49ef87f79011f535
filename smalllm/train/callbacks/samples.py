"""Greedy samples at each evaluation: a ``kind: "samples"`` record in ``metrics.jsonl`` and the same
samples as TensorBoard text (see :mod:`smalllm.eval.samples`)."""

from __future__ import annotations

import time

from smalllm.eval.samples import SamplePrompt, sample_prompts, samples_entries, samples_markdown
from smalllm.eval.schedule import eval_steps
from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord


class SamplesCallback(Callback):
    """Writes ``eval.samples`` greedy completions per task and of background prefixes, at the
    evaluator's steps (the same schedule, computed alike, so each eval record has its samples).

    Every process generates (the same prompts, the same number of forward passes: a collective under
    FSDP/DeepSpeed is then safe) and only the main process writes. Generating on the main process
    alone would be cheaper under DDP, but would hang a sharded model, whose forward pass needs every
    process. Contributes ``samples_seconds`` to the summary.
    """

    def __init__(self) -> None:
        self.steps: set[int] = set()
        self.sampled_step: int | None = None
        """The last step sampled; saved in checkpoints so a resumed run neither repeats nor skips one."""
        self.restored = False
        self.seconds = 0.0
        self.prompts: list[SamplePrompt] = []
        self.run: RunContext | None = None

    def state_dict(self, run: RunContext) -> dict:
        return {"sampled_step": -1 if self.sampled_step is None else self.sampled_step}

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        self.sampled_step = int(state["sampled_step"])
        self.restored = True

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        cfg = run.eval
        self.run = run
        self.steps = set(eval_steps(run.total_steps, cfg, run.plan.tokens_per_step))
        self.prompts = sample_prompts(
            run.eval_sets(), run.background_holdout(cfg.samples), cfg.samples, cfg.sample_tokens
        )
        # A checkpoint without this callback's state (a run started before samples): its resumed
        # step was evaluated, and sampling it now would write a record the other steps lack.
        done = self.sampled_step == run.start_step if self.restored else run.resumed
        if run.start_step in self.steps and not done:
            self._run(run.start_step, run.start_tokens, control)

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step in self.steps:
            self._run(record.step, record.tokens, control)

    def _run(self, step: int, tokens: int, control: Control) -> None:
        assert self.run is not None
        t0 = time.perf_counter()
        completions = control.generate([p.context for p in self.prompts], self.run.eval.sample_tokens)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.sampled_step = step
        if not self.run.is_main:
            return
        entries = samples_entries(self.prompts, completions, self.run.decode)
        control.write_metrics(
            {
                "kind": "samples",
                "step": step,
                "tokens": tokens,
                "time": time.time(),
                "samples_s": seconds,
                "samples": entries,
            }
        )
        control.write_text(samples_markdown(entries), step)

    def on_fit_end(self, end: FitEnd, control: Control) -> None:
        if self.run is None:  # an earlier callback's start failed before this one started
            return
        # The evaluator's final evaluation, matched: on every process (generation may be collective).
        if end.status == "completed" and end.step not in self.steps and self.sampled_step != end.step:
            self._run(end.step, end.tokens, control)
        control.add_summary(samples_seconds=self.seconds)
