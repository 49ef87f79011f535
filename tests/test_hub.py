"""Hub-ready checkpoints: Auto* loading, KV-cache generation, the model card, the lower transformers
bound, and ``smalllm push`` against a mocked hub API (never the network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import quiet, tiny_config

from smalllm.checkpoints import latest_checkpoint
from smalllm.cli import main
from smalllm.errors import SmalllmError
from smalllm.run_record import CHECKPOINT_CARD, CHECKPOINT_STATE, RunDir
from smalllm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
LOWER_BOUND = Path(os.environ.get("SMALLLM_LOWER_BOUND", ROOT / ".venv" / "lower-bound"))
"""Packages at pyproject.toml's lowest transformers (``make lower-bound``), laid over this venv."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hub") / "run"
    Trainer(tiny_config(run_dir), log=quiet).fit()
    return run_dir


def test_checkpoint_loads_with_auto_classes_and_generates_with_the_cache(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = latest_checkpoint(RunDir(tiny_run).checkpoints_dir)
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), local_files_only=True).eval()
    assert model.config.use_cache and model.generation_config.use_cache
    ids = torch.tensor([tok("3 < 7").input_ids])
    common = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    cached = model.generate(ids, use_cache=True, **common)
    uncached = model.generate(ids, use_cache=False, **common)
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, uncached)


def test_model_card_lists_tasks_frequencies_and_final_metrics(tiny_run):
    ckpt = latest_checkpoint(RunDir(tiny_run).checkpoints_dir)
    card = (ckpt / CHECKPOINT_CARD).read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "| t_cmp | 0.01 | per_token | prefix |" in card
    assert "| copy | 0.05 | example_fraction | document |" in card
    assert "84,736" in card  # micro-w32's parameters at vocabulary 300
    assert "8,192 (step 32" in card and "synthetic Zipf text" in card
    final = RunDir(tiny_run).read_metrics()
    last_eval = [r for r in final if r["kind"] == "eval"][-1]
    assert f"| t_cmp | {last_eval['eval/t_cmp/acc']:.4f} | {last_eval['eval/t_cmp/choice_acc']:.4f} |" in card
    assert "smalllm train reproduce.yaml" in card and "preset: micro-w32" in card


@pytest.mark.skipif(
    not (LOWER_BOUND / "transformers").is_dir(), reason="no lower-bound transformers (make lower-bound)"
)
def test_checkpoint_loads_at_the_lowest_allowed_transformers(tiny_run):
    ckpt = latest_checkpoint(RunDir(tiny_run).checkpoints_dir)
    script = (
        "import sys, torch, transformers\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "assert transformers.__version__.startswith('4.46'), transformers.__version__\n"
        "d = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(d, local_files_only=True)\n"
        "m = AutoModelForCausalLM.from_pretrained(d, local_files_only=True).eval()\n"
        "ids = torch.tensor([tok('3 < 7').input_ids])\n"
        "kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)\n"
        "a, b = m.generate(ids, use_cache=True, **kw), m.generate(ids, use_cache=False, **kw)\n"
        "assert m.config.use_cache and torch.equal(a, b)\n"
        "print(tok.eos_token, tok.pad_token, a.tolist())\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{LOWER_BOUND}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(ckpt)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("<eod> <pad>")


class FakeHub:
    """Records what ``HfApi`` would be asked, and which files an upload would send."""

    def __init__(self, monkeypatch) -> None:
        import huggingface_hub

        self.calls: list[tuple[str, dict]] = []
        self.uploaded: list[str] = []

        def create_repo(api, repo_id, **kw):
            self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

        def create_branch(api, repo_id, **kw):
            self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(api, **kw):
            from huggingface_hub.utils import filter_repo_objects

            self.calls.append(("upload_folder", kw))
            folder = Path(kw["folder_path"])
            rel = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            self.uploaded = sorted(filter_repo_objects(rel, allow_patterns=kw["allow_patterns"]))
            return "https://hub.invalid/commit/abc"

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def test_push_uploads_model_tokenizer_and_card_but_no_optimizer_state(tiny_run, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(tiny_run), "me/tiny", "--revision", "step32", "--private"]) == 0
    names = [name for name, _ in hub.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1]["private"] is True and hub.calls[1][1]["branch"] == "step32"
    assert hub.calls[2][1]["revision"] == "step32"
    assert hub.uploaded == [
        CHECKPOINT_CARD,
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert CHECKPOINT_STATE not in hub.uploaded
    assert "pushed" in capsys.readouterr().out


def test_push_refuses_bad_input_before_any_upload(tiny_run, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    assert main(["push", str(tiny_run), "not a repo id"]) == 2
    assert main(["push", str(tiny_run), "me/tiny", "--checkpoint", "7"]) == 2
    assert main(["push", str(tmp_path), "me/tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("smalllm: error: ") for line in err)
    assert "--checkpoint: '7'" in err[1]
    assert hub.calls == []


def test_a_failed_upload_is_one_line(tiny_run, monkeypatch):
    import huggingface_hub

    from smalllm.hub import push

    def refuse(api, repo_id, **kw):
        raise OSError("no route to host\nsecond line")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    with pytest.raises(SmalllmError, match=r"^push: uploading to 'me/tiny' failed \(OSError: no route"):
        push(tiny_run, "me/tiny", log=quiet)
