"""The evaluation schedule as a callback's clock: act at every evaluation step, exactly once each,
across kills and resumes, and once more at the end of a completed run if its last step was not one."""

from __future__ import annotations

from smalllm.train.callbacks.base import Callback, Control, FitEnd, RunContext, StepRecord


class OnEvalSteps(Callback):
    """Calls :meth:`act` at the steps of ``eval_steps`` (the same schedule for every subclass, so the
    records of one evaluation step belong together) and at the end of a completed run.

    The last step acted at is checkpointed under :attr:`STATE_KEY`, so a resumed run neither repeats
    nor skips one. A checkpoint without it (written before the callback existed) counts its step as
    done: the run acted there before it was killed, or never will.
    """

    STATE_KEY = "last_step"

    def __init__(self) -> None:
        self.steps: set[int] = set()
        self.last_step: int | None = None
        """The last step acted at (-1 in a checkpoint: none yet)."""
        self.restored = False
        self.seconds = 0.0
        """Wall time the subclass counted for its work (it adds to this in :meth:`act`)."""
        self.run: RunContext | None = None

    def state_dict(self, run: RunContext) -> dict:
        return {self.STATE_KEY: -1 if self.last_step is None else self.last_step}

    def load_state_dict(self, state: dict, run: RunContext) -> None:
        self.last_step = int(state[self.STATE_KEY])
        self.restored = True

    def prepare(self, run: RunContext, control: Control) -> None:
        """Set up before the first step (after the schedule is known); subclasses override it."""

    def act(self, step: int, tokens: int, control: Control) -> None:
        """Do the work of one evaluation step (on every process: the forward passes may be collective)."""
        raise NotImplementedError

    def on_fit_start(self, run: RunContext, control: Control) -> None:
        self.run = run
        self.steps = set(run.eval_steps)
        self.prepare(run, control)
        done = self.last_step == run.start_step if self.restored else run.resumed
        if run.start_step in self.steps and not done:
            self._act(run.start_step, run.start_tokens, control)

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step in self.steps:
            self._act(record.step, record.tokens, control)

    def act_at_end(self, end: FitEnd, control: Control) -> bool:
        """The final action of a completed run whose last step was not on the schedule; False when
        the callback never started (an earlier callback's start failed)."""
        if self.run is None:
            return False
        if end.status == "completed" and end.step not in self.steps and self.last_step != end.step:
            self._act(end.step, end.tokens, control)
        return True

    def _act(self, step: int, tokens: int, control: Control) -> None:
        self.act(step, tokens, control)
        self.last_step = step
