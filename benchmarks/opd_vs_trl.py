"""On-policy distillation step: our OPDModule (OPD+, reverse KL) vs TRL 1.16's ``DistillationTrainer`` (beta=1).

Same student (SmolLM2-135M-Instruct, as in experiment=opd_tooluse), same teacher (SmolLM2-135M-Instruct: the
experiment's teacher is it with a merged LoRA adapter, the same architecture and cost; the stage needs the full
ToolRL file, the benchmark runs from a fresh clone), same ToolRL prompts (the shipped fixture, chat-templated by our datamodule; TRL is given
the very prompt texts in our loader's order, so both sides train on the same batches), the same completion
budget, one completion per prompt, fp32 on CPU, gradient checkpointing off on both sides (TRL's default is on),
AdamW at the same learning rate. Each side runs in its own process (its peak RSS is its own); the processes
alternate ``ours, trl, ours, trl, ...``; every step after the warm-up is timed and the step times of all runs of a
side are pooled: median [range].

What each side computes per step: both sample the completions with HF ``generate`` (KV cache) and run the teacher
once on prompt + completion. TRL's loss is the generalised JSD at ``beta=1``, i.e. the reverse KL summed over the
*whole vocabulary* at every completion position (its chunked kernel: student and teacher log-softmax over 49 152
entries per position). Ours is OPD+'s score-function estimator: only the log-probabilities of the *sampled* tokens
are needed (student and teacher), so the LM head runs on completion positions only and no vocabulary-sized
tensor is kept for the backward (``module.logprob_chunk``). A sampled estimator has variance a full-vocabulary
one does not; the quality case (``--quality``) trains both for the same steps and compares what they reach.

    python -m benchmarks.opd_vs_trl                 # the speed / memory rows (in make bench)
    python -m benchmarks.opd_vs_trl --quality --data <toolrl rlla_sft.json> --api-bank <api_bank_level1.json> \\
        --bfcl <BFCL_v4_simple_python.json>         # TRL trained like experiment=opd_tooluse, then scored by it
    python -m benchmarks.opd_vs_trl --profile       # where each side's memory goes (torch.profiler), RSS per step
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, case_cli, peak_rss_mb, rss_mb, run_case, spread

FIXTURE = ROOT / "tests" / "fixtures" / "tool_use" / "toolrl_rlla_sft.json"
SMOLLM2 = ROOT / ".cache" / "smollm2"


def _ours_cfg(out: str, *, data: str, batch: int, steps: int, new_tokens: int, lr: float, extra=()):
    """experiment=opd_tooluse with the benchmark's models (no stages), batch and budget; no eval, no logs."""
    from omegaconf import open_dict

    from src.experiments import compose_run

    overrides = [
        "experiment=opd_tooluse",
        f"data.path={data}",
        "model=smollm2",
        "teacher=smollm2",
        "eval_tasks=null",
        "module.rollout.n=1",
        f"module.rollout.max_new_tokens={new_tokens}",
        f"module.optimizer.lr={lr}",
        f"data.global_batch_size={batch}",
        f"trainer.max_steps={steps}",
        "+trainer.limit_val_batches=0",
        "validate_before_fit=false",
        "callbacks=none",
        "logger=[]",
        "export=false",
        *extra,
    ]
    cfg = compose_run(overrides, output_dir=out)
    with open_dict(cfg):
        cfg.paths.log_dir = out
        cfg.paths.cache_dir = str(ROOT / ".cache")
        cfg.model.policy.cache_dir = cfg.teacher.policy.cache_dir = str(SMOLLM2)
        cfg.model.tokenizer.cache_dir = cfg.teacher.tokenizer.cache_dir = str(SMOLLM2)
    return cfg


def _prompts_in_order(dm, n: int) -> list[str]:
    """The chat-templated prompt texts in the order our training loop draws them (epoch 0)."""
    from src.datamodules.base import ResumableSampler

    order = list(ResumableSampler(dm.train_set, num_replicas=1, rank=0, seed=dm.seed))
    return [dm.train_set[i]["prompt"] for i in order][:n]


class StepTimes:
    """Wall time of every optimizer step (batch start to batch end), both frameworks' hooks; resident memory after
    each step; with ``profile_step``, that step's tensor allocations (torch.profiler, ``profile_memory`` only: a
    whole profiled run, with stacks and shapes, held over 13 GB here)."""

    def __init__(self, profile_step: int | None = None) -> None:
        self.t0, self.times, self.rss, self.profile_step, self.prof, self.memory = None, [], [], profile_step, None, {}

    def start(self) -> None:
        if self.profile_step is not None and len(self.times) == self.profile_step:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        self.t0 = time.perf_counter()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.t0)
        self.rss.append(rss_mb())  # does resident memory keep growing from step to step?
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.memory = step_tensor_memory(self.prof)
            self.prof = None


def step_tensor_memory(prof) -> dict:
    """From one profiled step, ops in start order, each with its own (self) net allocation; frees no op owns are
    ``[memory]`` events: the peak of tensor memory allocated above the step's start (what torch's allocator asked
    for, not what the process holds; the gap to RSS is the C heap's), what is still allocated at its end, and the
    bytes allocated in all (MB), at op granularity."""
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = allocated = 0
    for e in events:
        delta = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        live += delta
        peak = max(peak, live)
        allocated += max(delta, 0)
    mb = 2**20
    return {"step_tensor_peak_mb": peak / mb, "step_tensor_end_mb": live / mb, "step_allocated_mb": allocated / mb}


def _ours(
    batch: int, steps: int, warmup: int, new_tokens: int, lr: float = 2e-5, extra: tuple = (), profile: bool = False
) -> dict:
    import lightning as L

    from src.train import build

    base = rss_mb()
    timer = StepTimes(profile_step=steps - 1 if profile else None)

    class Tick(L.Callback):
        def on_train_batch_start(self, *a):
            timer.start()

        def on_train_batch_end(self, *a):
            timer.end()

    with tempfile.TemporaryDirectory() as d:
        cfg = _ours_cfg(d, data=str(FIXTURE), batch=batch, steps=steps, new_tokens=new_tokens, lr=lr, extra=extra)
        objs = build(cfg)
        lengths = []
        module = objs["module"]
        orig = module.log_metrics

        def log_metrics(stage, metrics, *a, **k):  # the completion length each step actually generated
            if stage == "train" and "rollout/length" in metrics:
                lengths.append(float(metrics["rollout/length"]))
            return orig(stage, metrics, *a, **k)

        module.log_metrics = log_metrics
        objs["trainer"].callbacks.append(Tick())
        objs["trainer"].fit(module, datamodule=objs["datamodule"])
    return _result(timer, base, lengths, warmup)


def _result(timer: StepTimes, base: float, lengths: list[float], warmup: int) -> dict:
    """A case's JSON line: timed steps after ``warmup``, peak RSS growth, RSS after every step, the profile."""
    return {
        "step_s": timer.times[warmup:],
        "peak_extra_mb": peak_rss_mb() - base,
        "rss_after_step_mb": [r - base for r in timer.rss],
        "length": _mean(lengths),
        **timer.memory,
    }


def _mean(xs):
    return statistics.mean(xs) if xs else float("nan")


def _trl_trainer(student, teacher, tok, prompts, out_dir, *, beta, batch, steps, new_tokens, lr, seed=0):
    """TRL's DistillationTrainer set up as our run: ``prompts`` in the given order (no shuffle), fp32, no gradient
    checkpointing, the same constant lr, ``beta`` = the divergence (TRL: 0 forward KL, 1 reverse KL)."""
    import torch
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(
        output_dir=out_dir,
        beta=beta,
        temperature=1.0,
        max_completion_length=new_tokens,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=lr,
        lr_scheduler_type="constant",  # as ours (TRL's default decays linearly to 0)
        max_steps=steps,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        seed=seed,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tok,
    )
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    return trainer


def _trl(batch: int, steps: int, warmup: int, new_tokens: int, lr: float = 2e-5, profile: bool = False) -> dict:
    import torch
    from transformers import TrainerCallback

    from src.models.hf import smollm2_causal_lm, smollm2_tokenizer
    from src.train import build

    base = rss_mb()
    with tempfile.TemporaryDirectory() as d:  # our datamodule, only for its prompt order
        dm = build(_ours_cfg(d, data=str(FIXTURE), batch=batch, steps=steps, new_tokens=new_tokens, lr=lr))[
            "datamodule"
        ]
        prompts = _prompts_in_order(dm, batch * steps)
    torch.manual_seed(0)
    tok = smollm2_tokenizer(cache_dir=str(SMOLLM2))
    student = smollm2_causal_lm(tok, cache_dir=str(SMOLLM2)).train()
    teacher = smollm2_causal_lm(tok, cache_dir=str(SMOLLM2))
    timer, lengths = StepTimes(profile_step=steps - 1 if profile else None), []

    class Tick(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timer.start()

        def on_step_end(self, args, state, control, **kw):
            timer.end()

        def on_log(self, args, state, control, logs=None, **kw):
            for k, v in (logs or {}).items():
                if "mean_length" in k and "completion" in k:
                    lengths.append(float(v))

    with tempfile.TemporaryDirectory() as d:
        trainer = _trl_trainer(
            student, teacher, tok, prompts, d, beta=1.0, batch=batch, steps=steps, new_tokens=new_tokens, lr=lr
        )
        trainer.add_callback(Tick())
        trainer.train()
    return _result(timer, base, lengths, warmup)


def _trl_train(
    student: str,
    teacher: str,
    prompts: list[str],
    out: str,
    *,
    batch: int,
    steps: int,
    new_tokens: int,
    lr: float,
    beta: float,
    seed: int,
) -> None:
    """TRL's DistillationTrainer on ``prompts`` in the given order (no shuffle), the final student saved to ``out``."""
    import torch

    from src.models.hf import load_causal_lm
    from src.models.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    tok = load_tokenizer(student)
    with tempfile.TemporaryDirectory() as d:
        trainer = _trl_trainer(
            load_causal_lm(tok, name_or_path=student).train(),
            load_causal_lm(tok, name_or_path=teacher),
            tok,
            prompts,
            d,
            beta=beta,
            batch=batch,
            steps=steps,
            new_tokens=new_tokens,
            lr=lr,
            seed=seed,
        )
        trainer.train()
        trainer.model.save_pretrained(out)
        tok.save_pretrained(out)


def quality(data: str, api_bank: str, bfcl: str, seeds=(1, 2, 3), divergence: str = "reverse_kl") -> list[Path]:
    """TRL trained as experiment=opd_tooluse trains (its student and teacher stages, its prompts in its order with
    its ``n`` samples per prompt as repeated rows, its steps, budget and lr), then scored by that experiment with
    ``train=false`` (held-out divergences and API-Bank / BFCL): ``logs/bench/opd_vs_trl/seed<s>/metrics.json``."""
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from src.models.hf import export_smollm2
    from src.train import build

    beta = {"reverse_kl": 1.0, "forward_kl": 0.0}[divergence]
    paths = [f"data.path={data}", f"eval_tasks.api_bank.path={api_bank}", f"eval_tasks.bfcl.path={bfcl}"]
    done = []
    for seed in seeds:
        run_dir = ROOT / "logs" / "bench" / "opd_vs_trl" / f"{divergence}_seed{seed}"
        if (run_dir / "metrics.json").exists():  # resumable: a finished seed is kept
            done.append(run_dir)
            continue
        with tempfile.TemporaryDirectory() as d:
            from omegaconf import open_dict

            from src.experiments import compose_run

            cfg = compose_run(["experiment=opd_tooluse", f"seed={seed}", *paths], output_dir=d)
            with open_dict(cfg):
                cfg.paths.log_dir = d
                cfg.paths.cache_dir = str(ROOT / ".cache")
            objs = build(cfg)  # builds the stages if missing
            m = cfg.module
            n, steps, batch = int(m.rollout.n), int(cfg.trainer.max_steps), int(cfg.data.global_batch_size)
            prompts = [p for p in _prompts_in_order(objs["datamodule"], batch * steps) for _ in range(n)]
            student = cfg.model.get("name_or_path") or str(export_smollm2(cfg.model.policy.cache_dir))
            teacher = str(cfg.teacher.name_or_path)
            lr, new_tokens = float(m.optimizer.lr), int(m.rollout.max_new_tokens)
            print(OmegaConf.to_yaml({"student": student, "teacher": teacher, "steps": steps, "rows": batch * n}))
        model_dir = run_dir / "hf_model"
        _trl_train(
            student,
            teacher,
            prompts,
            str(model_dir),
            batch=batch * n,
            steps=steps,
            new_tokens=new_tokens,
            lr=lr,
            beta=beta,
            seed=seed,
        )
        cmd = [
            sys.executable,
            "train.py",
            "experiment=opd_tooluse",
            "train=false",
            f"seed={seed}",
            *paths,
            "model=hf_causal",
            f"model.name_or_path={model_dir}",
            f"hydra.run.dir={run_dir}",
            "validate_before_fit=false",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True)
        done.append(run_dir)
    return done


def main(batch: int = 2, steps: int = 6, warmup: int = 1, new_tokens: int = 32, repeats: int = 2) -> list[dict]:
    kw = {"batch": batch, "steps": steps, "warmup": warmup, "new_tokens": new_tokens}
    ours, trl = [], []
    for _ in range(repeats):  # alternating processes: drift in machine speed hits both sides alike
        ours.append(run_case("opd_vs_trl", "ours", **kw))
        trl.append(run_case("opd_vs_trl", "trl", **kw))

    def side(runs):
        times = [t for r in runs for t in r["step_s"]]
        mb = statistics.median(r["peak_extra_mb"] for r in runs)
        length = statistics.mean(r["length"] for r in runs)
        return times, mb, f"{spread(times, digits=2)} s/step, {mb:.0f} MB, {length:.0f} tokens/completion"

    (t_o, mb_o, s_o), (t_t, mb_t, s_t) = side(ours), side(trl)
    head = (
        f"On-policy distillation step, reverse KL: SmolLM2-135M-Instruct student and teacher, ToolRL prompts "
        f"(~800 tokens), {batch} prompts x 1 completion of <= {new_tokens} tokens, CPU fp32, grad-ckpt off, "
        f"{steps - warmup} timed steps after {warmup} x {repeats} alternating runs per side"
    )
    return [
        {
            "benchmark": head,
            "baseline": f"TRL DistillationTrainer (beta=1, full-vocabulary): {s_t}",
            "ours": f"OPDModule (opd_plus, sampled tokens): {s_o}",
            "memory_ratio": mb_t / max(mb_o, 1e-9),
            "speed_ratio": statistics.median(t_t) / statistics.median(t_o),
        }
    ]


# glibc raises its mmap threshold (up to 32 MB) each time a large mmapped block is freed, so later buffers of that
# size come from the heap, which returns memory only from its top: with shapes that vary from step to step, freed
# holes stay resident. Setting the threshold explicitly turns that adjustment off (every block >= 128 KiB is
# mmapped and unmapped on free): if the extra RSS is such holes, it goes away, and tensor memory does not change.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def profile_main(batch: int = 2, steps: int = 4, new_tokens: int = 32) -> list[dict]:
    """Where each side's memory goes: RSS after every step, the last step's tensor allocations (profiled), each
    side with glibc's default heap and with a fixed mmap threshold. Memory only: the profiler slows the last step."""
    kw = {"batch": batch, "steps": steps, "warmup": 0, "new_tokens": new_tokens, "profile": True}
    rows = []
    for heap, env in (("glibc default", {}), ("fixed mmap threshold", FIXED_MMAP)):
        for case in ("ours", "trl"):
            r = run_case("opd_vs_trl", case, env=env, **kw)
            rows.append(
                {
                    "case": case,
                    "heap": heap,
                    "peak_rss_growth_mb": round(r["peak_extra_mb"]),
                    "rss_after_each_step_mb": [round(x) for x in r["rss_after_step_mb"]],
                    "last_step_tensor_peak_mb": round(r["step_tensor_peak_mb"]),
                    "last_step_tensor_end_mb": round(r["step_tensor_end_mb"]),
                    "last_step_allocated_mb": round(r["step_allocated_mb"]),
                    "tokens_per_completion": r["length"],
                }
            )
    return rows


if __name__ == "__main__":
    import argparse
    import sys

    if "--quality" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--quality", action="store_true")
        for k in ("--data", "--api-bank", "--bfcl"):
            ap.add_argument(k, required=True)
        ap.add_argument("--seeds", default="1,2,3")
        a = ap.parse_args()
        for d in quality(a.data, a.api_bank, a.bfcl, seeds=[int(s) for s in a.seeds.split(",")]):
            print(d, json.dumps(json.loads((d / "metrics.json").read_text())["metrics"]))
    elif "--profile" in sys.argv:
        for row in profile_main():
            print(json.dumps(row))
    else:
        case_cli({"ours": _ours, "trl": _trl}, main)
