"""Shared fixtures: a session-wide corpus cache and tiny, fast run configs (micro models, CPU)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from smalllm.config import RunConfig, load_config
from smalllm.train.callbacks.base import Callback, Control, StepRecord

TINY_OVERRIDES = [
    "model.preset=micro-w32",
    "data.seq_len=32",
    "data.tokenizer.kind=bpe",
    "data.tokenizer.vocab_size=300",
    "data.background.synthetic.num_words=200",
    "data.background.synthetic.num_documents=1500",
    "data.background.holdout_documents=50",
    "train.max_tokens=8192",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "train.num_threads=1",
    "train.log_every=2",
    "eval.every_steps=8",
    "eval.batch_size=64",
    "eval.background_sequences=8",
    "logging.tensorboard=false",
    "logging.progress=false",
]
TINY_TASKS = [
    "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32},"
    " {name: copy, frequency: 0.05, unit: example_fraction, placement: document, params: {length: 4}, eval_size: 16}]"
]


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory) -> Path:
    """Keep every built corpus of the test session in one temporary cache (never ~/.cache)."""
    path = tmp_path_factory.mktemp("smalllm-cache")
    os.environ["SMALLLM_CACHE"] = str(path)
    return path


def quiet(_message: str) -> None:
    """Trainer log sink for in-process runs."""


def tiny_config(run_dir: Path | str, *overrides: str) -> RunConfig:
    """A run that trains micro-w32 on a small synthetic corpus in a second or two."""
    return load_config(None, [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={run_dir}", *overrides])


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    return tiny_config(tmp_path / "run")


class StopAt(Callback):
    """Request a stop after step ``step``, as SIGTERM would (the checkpointer then saves)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, record: StepRecord, control: Control) -> None:
        if record.step == self.step:
            control.request_stop("test")


# Test tiers: ``make test-fast`` runs ``-m "not slow"`` (<= 90 s on 2 cores), ``make test`` everything.
# A test is slow when one call of it took over ~3 s in ``pytest --durations=0`` on the 2-core CI
# machine (seconds below, measured under load, all parametrizations together). Each name must be a
# test function (checked by tests/test_layers.py), so a renamed test cannot silently turn fast.
SLOW_TESTS = {
    # Builds a sweep's results and draws its report pages (frontier, heatmaps, curves): 6.8 s.
    "test_sweep_report_writes_the_frontier_estimate": 6.8,
    # A 4-cell sweep of two named grids (tiny LEGO runs) and its report: 52 s beside a 2-worker sweep.
    "test_sweep_of_two_arms_gets_an_arms_page": 52,
    # A 4-cell gap sweep with interference at every injection, probes and the report: 48 s under load.
    "test_gap_sweep_with_interference_and_probes_gets_a_mechanisms_page": 48,
    # Writes 9 cells' configs (omegaconf) and reads them back, fits with 20 resamples, draws 4 plots:
    # 14 s at load average ~7.5, 6 s at ~3.
    "test_smalllm_fit_end_to_end": 14,
    # The toy's acceptance runs (quick preset): 35 + 30 s at load average ~8, 10 + 10 s at ~2.
    "test_quick_critical_widths_within_one_rung": 65,
    "test_quick_rank1_matches_theory": 10,
    "test_cli_all_writes_a_run_directory": 14,
    "test_widths_train_independently_and_repeat_exactly": 3,
    "test_sigkill_and_resume_is_bit_identical": 73,
    "test_too_few_table_tokens_same_message_dry_run_and_run": 9,
    "test_tiny_grid_end_to_end": 54,
    "test_killed_sweep_resumes_without_rerunning_finished_cells": 51,
    "test_failing_cell_is_recorded_and_the_others_finish": 35,
    "test_a_cell_failing_inside_training_is_failed_until_retried": 33,
    "test_one_writer_at_a_time_and_a_killed_holders_lock_is_taken_over": 28,
    "test_a_skill_name_with_a_slash_reaches_every_table_whole": 26,
    "test_sigterm_and_sigint_stop_cleanly_and_resume": 25,
    "test_outside_plugin_is_discovered_and_trains": 25,
    "test_emitted_shell_script_leaves_the_same_records_as_smalllm_sweep": 150,
    "test_two_processes_match_one": 46,
    # tests/test_interference.py (s, measured at load average ~5 on 2 cores)
    "test_two_processes_measure_what_one_does": 51,
    "test_callback_on_and_off_train_identical_weights": 7,
    "test_schedule_injections_and_resume": 4,
    "test_memory_estimate_is_within_30_percent_of_a_measured_training_step": 14,
    "test_bad_input_subprocess": 40,
    "test_broken_plugins_are_named_and_the_other_tasks_still_list": 10,
    "test_a_file_size_limit_fails_the_run_with_one_line": 9,
    "test_page_code_runs": 8,
    "test_foreign_directory_survives_a_real_process": 8,
    "test_packaged_experiment_configs_validate": 7,
    "test_metrics_after_crash_and_resume_equal_the_uninterrupted_run": 23,
    "test_file_size_limit_during_build": 5,
    "test_dry_run_of_1b_prints_a_plan": 5,
    "test_dry_run_that_does_not_fit_prints_the_plan_and_refuses": 5,
    "test_closed_pipe_stops_quietly": 4,
    "test_two_distributions_with_one_task_name_is_an_error_naming_both": 8,
    "test_same_seed_same_stream_and_seek_equals_iteration": 11,
    "test_resume_inside_a_logging_window_is_bit_identical": 3,
    "test_checkpoint_loads_at_the_lowest_allowed_transformers": 7,
    "test_debug_shows_traceback": 3,
    "test_a_custom_shape_trains": 3.2,
    "test_tensorboard_holds_every_record_of_metrics_jsonl": 3.8,
    "test_eval_model_with_two_revisions_writes_a_curve_with_baselines": 7,
    "test_lm_eval_accuracy_equals_choice_acc": 19,
    # tests/test_probes.py: probes two checkpoints of a tiny run (T_CMP, T_ADD), then one again.
    "test_smalllm_probe_end_to_end": 5,  # 4.7 s on a quiet machine, 19 s under heavy load
    # A stopped run continued, 3 runs of 100 steps (brute force), the linear graph reusing two of
    # them, one refused rerun: 6.3 s at load average ~2, 11 s at ~3.5, 29-36 s at ~6.
    "test_a_planted_dependency_is_found_by_both_methods": 11,
    # Measured with `pytest -m "not slow" --durations=45` (s, on a busy machine); each module keeps
    # faster tests of the same code in the fast tier.
    "test_training_does_not_import_matplotlib": 9,
    "test_overwrite_refuses_a_run_holding_a_users_file_below_its_top_level": 5,
    "test_eval_of_a_run_in_training_before_its_first_checkpoint": 2.5,
    "test_a_foreign_sweep_dir_is_refused_and_left_untouched": 2,
    "test_all_corrupt_gives_none_and_resume_refuses": 1.6,
    "test_corpus_and_tokenizer_outputs_carry_markers_and_are_replaced": 1.5,
    "test_a_second_live_sweep_on_the_same_dir_is_refused": 1.4,
    "test_resume_without_a_checkpoint_is_an_error": 1.4,
    "test_multi_shard_corpus_windows_match_one_stream": 1.35,
    "test_write_report": 1.3,
    # tests/test_launch.py (s, on a busy machine)
    "test_stdout_to_a_file_gets_one_plain_progress_line_per_log_interval": 34,
    "test_accelerate_launch_cpu_with_two_processes_is_an_error": 26,
    "test_4b_dry_run_fits_under_8_gpu_fsdp_and_exits_3_on_one_gpu": 17,
    "test_summary_records_device_world_size_precision_versions_and_commit": 7,
    "test_progress_seconds_adds_lines_between_records": 13,
    "test_pretrained_tokenizer_from_a_local_directory_with_a_padded_embedding": 8,
    "test_olmo_token_file_trains_as_the_background_in_the_given_order": 4,
    "test_token_files_and_order_are_checked_with_one_line_errors": 3,
    "test_dry_run_reports_passes_over_the_background_and_warns_above_one": 3,
    # `make test-fast` must stay <= 90 s on 2 cores: the slowest fast-tier tests by
    # `pytest -m 'not slow' --durations=120` on a quiet machine (s, summed over parameters); every
    # module keeps faster tests of the same code in the fast tier.
    "test_any_subset_of_the_default_callbacks_trains": 4.2,
    "test_bad_task_spec_same_message_dry_run_and_run": 3.4,
    "test_same_seed_gives_identical_loss_curve": 2.9,
    "test_a_plugin_with_fewer_instances_than_it_says_is_refused_unless_it_memorises": 2.5,
    "test_eval_of_a_run_follows_its_rotated_checkpoint": 2.0,
    "test_resume_is_bit_identical": 1.8,
    "test_a_failed_swap_puts_the_old_corpus_back": 1.7,
    "test_eval_sets_come_from_the_test_split": 1.6,
    "test_an_answer_set_that_misses_or_repeats_answers_is_refused": 1.5,
    "test_resume_refuses_a_corpus_edited_since_the_run_started": 1.3,
    "test_overwrite_keeps_the_old_run_when_the_new_one_is_refused": 1.3,
    "test_an_exception_mid_run_is_recorded_as_failed": 1.1,
    "test_only_the_run_record_spells_run_directory_names": 1.0,
    "test_other_model_seed_changes_the_curve": 0.9,
    "test_nan_skip_drops_the_batch_and_continues": 0.9,
    "test_corpus_output_holding_a_users_file_in_its_tokenizer_is_not_replaced": 0.9,
    "test_default_table_holds_only_background_tokens_with_a_text_form": 0.7,
    "test_every_step_skipped_is_a_failure": 0.7,
    "test_data_seed_changes_order_and_phase": 0.7,
    "test_emitted_scripts_quote_every_value": 0.7,
    "test_nan_stop_exits_with_one_line_and_keeps_last_good_checkpoint": 0.6,
    "test_run_step_is_the_loop_step_and_fit_continues_after_it": 0.6,
    "test_a_run_from_an_older_stream_format_is_not_resumed": 0.6,
    "test_emitted_scripts_pick_fsdp_for_large_cells_and_build_first": 0.6,
    "test_overwrite_replaces_an_owned_run": 0.6,
    "test_checkpoint_state_holds_the_open_logging_window": 0.5,
    # Three tiny online-mixture runs (reference, stopped, resumed) and two `data inspect`s.
    "test_online_policy_state_survives_kill_and_resume": 5,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` by relative path: files by mode and sha256, directories (so one
    created empty counts as a write) and symbolic links by target. Compare two to prove that a
    refused command wrote, changed and lost nothing."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        elif not path.is_file():  # a FIFO or socket: opening it to hash could block
            found[rel] = f"special:{oct(path.stat().st_mode)}"
        else:
            found[rel] = f"{oct(path.stat().st_mode)}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return found


def assert_one_line_error(rc: int, out: str, err: str, expect: str) -> None:
    """A refusal as the CLI promises it: non-zero exit, one ``smalllm: error:`` line holding
    ``expect``, no traceback."""
    lines = err.strip().splitlines()
    assert rc != 0, f"exit code 0; stdout: {out[-500:]}"
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("smalllm: error: "), lines[0]
    assert expect in lines[0], f"{expect!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err
