"""Greedy samples at each evaluation: a ``kind: "samples"`` record in ``metrics.jsonl`` and the same
samples as TensorBoard text (see :mod:`smalllm.eval.samples`)."""

from __future__ import annotations

import time

from smalllm.eval.samples import SamplePrompt, sample_prompts, samples_entries, samples_markdown
from smalllm.train.callbacks.base import Control, FitEnd, RunContext
from smalllm.train.callbacks.on_eval_steps import OnEvalSteps


class SamplesCallback(OnEvalSteps):
    """Writes ``eval.samples`` greedy completions per task and of background prefixes, at the
    evaluator's steps (the same schedule, computed alike, so each eval record has its samples).

    Every process generates (the same prompts, the same number of forward passes: a collective under
    FSDP/DeepSpeed is then safe) and only the main process writes. Generating on the main process
    alone would be cheaper under DDP, but would hang a sharded model, whose forward pass needs every
    process. Contributes ``samples_seconds`` to the summary.
    """

    STATE_KEY = "sampled_step"

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[SamplePrompt] = []

    def prepare(self, run: RunContext, control: Control) -> None:
        cfg = run.eval
        self.prompts = sample_prompts(
            run.eval_sets(), run.background_holdout(cfg.samples), cfg.samples, cfg.sample_tokens
        )

    def act(self, step: int, tokens: int, control: Control) -> None:
        assert self.run is not None
        t0 = time.perf_counter()
        completions = control.generate([p.context for p in self.prompts], self.run.eval.sample_tokens)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
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
        # The evaluator's final evaluation, matched: on every process (generation may be collective).
        if self.act_at_end(end, control):
            control.add_summary(samples_seconds=self.seconds)
