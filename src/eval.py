"""Evaluation entry points behind ``eval.py``.

* ``evaluate(cfg)``: rebuild a training run from its config and validate a Lightning checkpoint
  (``python eval.py ckpt_path=<.ckpt>``), for every module.
* ``evaluate_task(cfg)``: math benchmarks on any causal LM (``python eval.py task=gsm8k|math500``):
  greedy pass@1 and unbiased pass@k from ``task.n`` samples per problem, drawn with the framework's
  own rollout backend and scored by ``math_reward``. Writes ``completions.jsonl`` (every completion
  and its score) and ``metrics.json`` to the run folder and prints one summary line. The model is
  ``model=...`` (``smollm2``, ``hf_causal model.name_or_path=<hub name or folder>``, e.g. a run's
  exported ``hf_model``), optionally with the policy weights of a training checkpoint
  (``ckpt_path=<.ckpt>``).
* the same for tool use (``task=api_bank|bfcl``): the task's ``record_fn`` turns its records into chat prompts and
  its ``scorer`` gives each completion a score and a failure reason; the metrics add accuracy per level /
  category, the pooled accuracy, the format-valid rate and the count of each failure reason, and every completion
  is recorded with the calls as the scorer read them (``src/datamodules/tasks/tool_use.py``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from src.datamodules.errors import DataError
from src.train import build

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not Path(ckpt).exists():
        raise FileNotFoundError(
            f"ckpt_path={ckpt!r} does not exist; pass ckpt_path=<path to .ckpt>, or task=gsm8k|math500 to "
            "evaluate a model on a math benchmark"
        )
    objs = build(cfg)
    trainer = objs["trainer"]
    results = trainer.validate(objs["module"], datamodule=objs["datamodule"], ckpt_path=ckpt, verbose=False)[0]
    metrics = {k: float(v) for k, v in results.items()}
    for k in sorted(metrics):  # the result on the terminal, and on disk for sweeps and src.report
        print(f"{k:40s} {metrics[k]:.4f}")
    if objs["trainer"].is_global_zero and cfg.paths.get("output_dir"):
        from src.utils.sweep import write_run_summary

        write_run_summary(cfg.paths.output_dir, metrics, task_name=cfg.get("task_name"))
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; available: {', '.join(sorted(metrics))}")
    return metrics, (metrics[name] if name else None)


def load_policy_weights(model: torch.nn.Module, ckpt_path: str) -> torch.nn.Module:
    """Load the ``policy.*`` weights of a training checkpoint into ``model`` (strictly); LoRA is merged.

    ``model`` must be built as in training (same ``model=`` config, including ``model.policy.lora``),
    so a mismatch is an error that names the keys, not a silently half-loaded model.
    """
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = state.get("state_dict", state)
    policy = {k[len("policy.") :]: v for k, v in sd.items() if k.startswith("policy.")}
    if not policy:
        raise KeyError(f"{ckpt_path}: no 'policy.*' weights (keys start with {sorted({k.split('.')[0] for k in sd})})")
    missing, unexpected = model.load_state_dict(policy, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise KeyError(
            f"{ckpt_path} does not match the model built from model=...: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; use the model config (and LoRA settings) of the run"
        )
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def task_records(task: DictConfig, tokenizer) -> list[dict[str, Any]]:
    """The first ``task.limit`` problems of the split, in file order, prompted as in training
    (``PromptDataModule``: template, chat template, BOS). The task's settings are checked first, so every caller
    (``eval.py task=...``, a run's ``eval_tasks`` before training) fails on a bad value before any model loads."""
    from src.datamodules.prompt import PromptDataModule
    from src.datamodules.records import read_records

    _check_task(task)
    dm = PromptDataModule(
        tokenizer=tokenizer,
        batch_size=1,
        path=task.path,
        question_key=task.question_key,
        answer_key=task.answer_key,
        answer_format=task.answer_format,
        prompt_template=task.prompt_template,
        chat=task.chat,
        max_prompt_length=task.max_prompt_length,
        record_fn=hydra.utils.instantiate(task.record_fn) if task.get("record_fn") else None,
    )
    dm.config_prefix = "task"  # the mapping hint names task.question_key, not data.*
    rows = read_records(task.path, split=task.split, name=task.get("subset"))
    if task.get("limit") is not None:
        rows = rows[: task.limit]
    try:
        dm.check_fields(rows, task.path)
    except DataError as e:
        fields = next((set(loc.record) for loc in rows[: dm.SCHEMA_PROBE] if isinstance(loc.record, dict)), set())
        fits = [name for name, keys in task_fields().items() if name != task.name and keys <= fields]
        if not fits:
            raise
        raise DataError(f"{e}; the fields are those of task={fits[0]}: did you mean task={fits[0]}?") from None
    return dm._prepare(rows, task.path)


def task_fields() -> dict[str, set[str]]:
    """``{task name: {question_key, answer_key}}`` of every ``configs/task/*.yaml`` (a file's own keys win)."""
    from omegaconf import OmegaConf

    out, raw = {}, {}
    for p in sorted((Path(__file__).resolve().parents[1] / "configs" / "task").glob("*.yaml")):
        raw[p.stem] = OmegaConf.to_container(OmegaConf.load(p))
    for stem, conf in raw.items():
        base = {k: v for d in conf.get("defaults", []) if isinstance(d, str) and d in raw for k, v in raw[d].items()}
        merged = {**base, **conf}
        out[merged.get("name", stem)] = {merged["question_key"], merged["answer_key"]}
    return out


def _check_task(task: DictConfig) -> None:
    """Bad settings fail before any model is loaded."""
    if task.get("limit") is not None and task.limit < 1:
        raise ValueError(f"task.limit must be >= 1 or null, got {task.limit}")
    if task.n < 0 or any(k < 1 or k > max(task.n, 1) for k in task.k):
        raise ValueError(f"task.k={list(task.k)} needs 1 <= k <= task.n={task.n} (samples per problem)")
    if task.n > 0 and task.temperature <= 0:
        raise ValueError(f"task.n={task.n} samples need task.temperature > 0, got {task.temperature}")
    if task.batch_size < 1 or task.max_new_tokens < 1:
        raise ValueError("task.batch_size and task.max_new_tokens must be >= 1")


def evaluate_task(cfg: DictConfig) -> tuple[dict[str, float], float | None]:
    """Greedy pass@1 and sampled pass@k of a causal LM on ``cfg.task``; see the module docstring."""
    import lightning as L

    from src.utils.sweep import write_run_summary

    task = cfg.task
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    tokenizer = hydra.utils.instantiate(cfg.model.tokenizer)
    records = task_records(task, tokenizer)  # the data is checked before any model loads
    model = hydra.utils.instantiate(cfg.model.policy)(tokenizer)
    if cfg.get("ckpt_path"):
        model = load_policy_weights(model, cfg.ckpt_path)
    out_dir = Path(cfg.paths.output_dir)
    metrics = score_task(model, tokenizer, task, out_dir=out_dir, seed=int(cfg.seed or 0), records=records)
    write_run_summary(out_dir, metrics, task_name=cfg.get("task_name"))
    g = f"eval/{task.name}"
    summary = ", ".join(f"{k[len(g) + 1 :]}={v:.4g}" for k, v in metrics.items())
    print(f"{task.name} | {cfg.model.get('name_or_path', cfg.model.policy._target_)} | {summary}")
    return metrics, metrics[f"{g}/pass@1"]


@torch.no_grad()
def score_task(
    model: torch.nn.Module,
    tokenizer,
    task: DictConfig,
    *,
    out_dir: Path,
    seed: int = 0,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Score ``model`` on ``task`` (its first ``task.limit`` records): ``eval/<task.name>/...`` metrics, every
    completion to ``out_dir/completions.jsonl``. Shared by ``eval.py task=...`` and a training run's
    ``eval_tasks`` (the trained policy scored after fit); the model is left in eval mode."""
    from src.datamodules.prompt import collate_prompts
    from src.datamodules.tasks.math import math_reward
    from src.modules.metrics import pass_at_k
    from src.rollout.hf import HFGenerateBackend
    from src.utils.keyed_random import row_keys

    if records is None:  # given: read (and checked) by task_records
        records = task_records(task, tokenizer)
    if not model.can_generate():
        raise TypeError(
            f"eval.py task=... evaluates causal LMs; {type(model).__name__} cannot generate. "
            "Evaluate a diffusion (DiFFPO) run with ckpt_path=<.ckpt> and its module config"
        )
    device = torch.device(task.device if task.get("device") else ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).eval()
    backend = HFGenerateBackend(tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the task's scorer: (completion, answer) -> (score, failure reason or "ok"); math tasks use the verifier
    scorer = hydra.utils.instantiate(task.scorer) if task.get("scorer") else None
    describe = hydra.utils.instantiate(task.describe) if task.get("describe") else None
    greedy_ok, sample_ok, n_tokens, truncated = [], [], [], 0
    groups, reasons, valid = {}, {}, []
    t0 = time.perf_counter()
    with open(out_dir / "completions.jsonl", "w") as f:
        for start in tqdm(
            range(0, len(records), task.batch_size), desc=f"{task.name} ({len(records)} problems)", unit="batch"
        ):
            rows = records[start : start + task.batch_size]
            batch = collate_prompts(rows, pad_id=tokenizer.pad_token_id)
            ids, mask = batch["prompt_ids"].to(device), batch["prompt_mask"].to(device)
            runs = [
                (
                    "greedy",
                    1,
                    backend.generate(model, ids, mask, n=1, max_new_tokens=task.max_new_tokens, do_sample=False),
                )
            ]
            if task.n > 0:  # keyed draws: a problem's samples do not depend on the batch it lands in
                keys = row_keys(seed, 0, torch.tensor([r["index"] for r in rows]), task.n).to(device)
                runs.append(
                    (
                        "sample",
                        task.n,
                        backend.generate(
                            model,
                            ids,
                            mask,
                            n=task.n,
                            max_new_tokens=task.max_new_tokens,
                            temperature=task.temperature,
                            top_p=task.top_p,
                            do_sample=True,
                            keys=keys,
                        ),
                    )
                )
            for kind, n, ro in runs:
                lengths = ro.action_mask.sum(-1).tolist()
                ended = (ro.completion_ids == tokenizer.eos_token_id).any(-1).tolist()
                for j, text in enumerate(ro.texts):
                    r = rows[j // n]
                    extra: dict[str, Any] = {}
                    if scorer is None:
                        score = math_reward(text, r["answer"], timeout_s=task.timeout_s)
                        correct = score == 1.0
                    else:
                        score, reason = scorer(text, r["answer"])
                        correct = reason == "ok"
                        extra = {
                            "reason": reason,
                            "group": r.get("group"),
                            **(describe(text, r["answer"]) if describe else {}),
                        }
                    (greedy_ok if kind == "greedy" else sample_ok).append(float(correct))
                    if kind == "greedy":
                        n_tokens.append(lengths[j])
                        truncated += not ended[j]
                        if scorer is not None:  # per group, failure reasons, format validity (greedy)
                            groups.setdefault(str(r.get("group") or "all"), []).append(float(correct))
                            reasons[extra["reason"]] = reasons.get(extra["reason"], 0) + 1
                            if "format_valid" in extra:
                                valid.append(float(extra["format_valid"]))
                    record = {"index": start + j // n, "kind": kind, "sample": j % n, "prompt": r["prompt"]}
                    record.update(answer=r["answer"], completion=text, score=score, **extra)
                    record.update(tokens=lengths[j], finished=bool(ended[j]))
                    f.write(json.dumps(record) + "\n")
    seconds = time.perf_counter() - t0
    g = f"eval/{task.name}"
    metrics = {
        f"{g}/pass@1": sum(greedy_ok) / len(greedy_ok),
        f"{g}/num_problems": float(len(records)),
        f"{g}/mean_tokens": sum(n_tokens) / len(n_tokens),
        f"{g}/truncated_frac": truncated / len(records),
        f"{g}/seconds": seconds,
    }
    if scorer is not None:
        metrics[f"{g}/accuracy"] = metrics[f"{g}/pass@1"]  # pooled over every row, not the mean of the groups
        if len(groups) > 1 or "all" not in groups:
            for name, oks in sorted(groups.items()):
                metrics[f"{g}/{name}/accuracy"] = sum(oks) / len(oks)
        if valid:
            metrics[f"{g}/format_valid"] = sum(valid) / len(valid)
        for reason, count in sorted(reasons.items()):
            if reason != "ok":
                metrics[f"{g}/fail/{reason}"] = float(count)
    if task.n > 0:
        per_problem = [sum(sample_ok[i * task.n : (i + 1) * task.n]) for i in range(len(records))]
        metrics[f"{g}/mean_sample_acc"] = sum(sample_ok) / len(sample_ok)
        for k in task.k:
            metrics[f"{g}/pass@{k}_sampled"] = sum(pass_at_k(task.n, int(c), k) for c in per_problem) / len(records)
    log.info("%s: %s (completions: %s)", task.name, metrics[f"{g}/pass@1"], out_dir / "completions.jsonl")
    return metrics
