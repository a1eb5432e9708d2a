"""Pareto frontiers across the jobs of a sweep (and the one plotting routine every frontier uses).

    python -m src.pareto <sweep dir> --x val/nfe:min --y val/accuracy:max [--series KEY] [--label KEY]

Every job of ``python train.py -m ...`` writes ``<job dir>/metrics.json`` (its final metrics and its
command-line overrides, see :func:`src.utils.sweep.write_run_summary`). This tool reads them all,
groups jobs into points (``--series`` splits points into curves, ``--label`` names a point; jobs
that differ only in other overrides, e.g. ``seed``, are averaged: mean and standard error), marks
the non-dominated points over all series, and writes

- ``<sweep dir>/pareto_<y>_vs_<x>.csv``: one row per point (series, label, x, y, their s.e., n, pareto),
- ``<sweep dir>/pareto_<y>_vs_<x>.png``: the points, error bars, and the frontier as a step line,
- with ``--wandb``: one W&B run (job type ``pareto``) in the sweep's W&B group holding the table and a
  scatter plot, next to the sweep's own runs (offline unless a key is set; ``wandb sync`` uploads it).

The same happens at the end of a multirun through :class:`ParetoCallback` (a Hydra callback;
``hparams_search=diffpo_pareto`` and ``hparams_search=mallowspo_beta`` enable it).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.utils.sweep import MARKER

log = logging.getLogger(__name__)

SUMMARY = "metrics.json"
MODES = ("min", "max")


@dataclass
class Point:
    x: float
    y: float
    series: str = ""
    label: str = ""
    x_se: float = 0.0
    y_se: float = 0.0
    n: int = 1
    pareto: bool = False
    jobs: list[str] = field(default_factory=list)


def parse_axis(spec: str, default_mode: str) -> tuple[str, str]:
    """``"val/nfe:min"`` -> ``("val/nfe", "min")``; no suffix -> ``default_mode``."""
    name, _, mode = spec.rpartition(":") if spec.endswith((":min", ":max")) else (spec, "", default_mode)
    if mode not in MODES:
        raise ValueError(f"axis {spec!r}: mode must be one of {MODES}")
    return name, mode


def load_jobs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job summary under ``sweep_dir`` (any depth), sorted by job folder. Failed jobs (no summary,
    or ``FAILED.txt``) are reported and left out."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep dir {root} does not exist")
    failed = sorted(str(p.parent.relative_to(root)) for p in root.rglob(MARKER))
    jobs = []
    for p in sorted(root.rglob(SUMMARY), key=_natural):  # job 2 before job 10
        rec = json.loads(p.read_text())
        rec["dir"] = str(p.parent.relative_to(root)) or "."
        if rec["dir"] not in failed:
            jobs.append(rec)
    if failed:
        log.warning("%d failed job(s) left out of the frontier: %s", len(failed), ", ".join(failed))
    if not jobs:
        raise FileNotFoundError(
            f"no job under {root} wrote {SUMMARY} (is it a sweep dir of this framework's train.py?)"
        )
    return jobs


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def pareto_mask(xs: Sequence[float], ys: Sequence[float], *, x_mode: str = "min", y_mode: str = "max") -> list[bool]:
    """True for points no other point dominates (at least as good on both axes, better on one).
    NaN points are never on the frontier."""
    sx = 1.0 if x_mode == "min" else -1.0
    sy = -1.0 if y_mode == "max" else 1.0  # both axes turned into "smaller is better"
    pts = [(sx * x, sy * y) for x, y in zip(xs, ys)]
    out = []
    for i, (a, b) in enumerate(pts):
        if math.isnan(a) or math.isnan(b):
            out.append(False)
            continue
        dominated = any(
            (c <= a and d <= b and (c < a or d < b))
            for j, (c, d) in enumerate(pts)
            if j != i and not (math.isnan(c) or math.isnan(d))
        )
        out.append(not dominated)
    return out


def points_from_jobs(
    jobs: list[dict[str, Any]], *, x: str, y: str, series: str | None = None, label: str | None = None
) -> list[Point]:
    """One point per (series value, label value); jobs sharing both are averaged (mean, s.e.)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for j in jobs:
        m, ov = j.get("metrics", {}), j.get("overrides", {})
        missing = [k for k in (x, y) if k not in m]
        if missing:
            raise KeyError(f"job {j['dir']} has no metric {missing[0]!r}; it has: {', '.join(sorted(m)) or 'none'}")
        key = (_fmt(ov.get(series, "")) if series else "", _fmt(ov.get(label, j["dir"])) if label else j["dir"])
        groups.setdefault(key, []).append(j)

    def mean_se(vals: list[float]) -> tuple[float, float]:
        if len(vals) == 1:
            return vals[0], 0.0
        return statistics.mean(vals), statistics.stdev(vals) / math.sqrt(len(vals))

    pts = []
    for (s, lab), js in groups.items():
        (xm, xs), (ym, ys) = mean_se([_num(j["metrics"][x]) for j in js]), mean_se([_num(j["metrics"][y]) for j in js])
        pts.append(Point(x=xm, y=ym, x_se=xs, y_se=ys, series=s, label=lab, n=len(js), jobs=[j["dir"] for j in js]))
    return pts


def mark_frontier(points: list[Point], *, x_mode: str, y_mode: str) -> list[Point]:
    for p, on in zip(points, pareto_mask([p.x for p in points], [p.y for p in points], x_mode=x_mode, y_mode=y_mode)):
        p.pareto = on
    return points


def write_csv(points: list[Point], path: Path, *, x: str, y: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "label", x, f"{x}_se", y, f"{y}_se", "n", "pareto", "jobs"])
        for p in points:
            w.writerow([p.series, p.label, p.x, p.x_se, p.y, p.y_se, p.n, int(p.pareto), " ".join(p.jobs)])
    return path


def plot_frontier(
    points: list[Point],
    path: Path,
    *,
    x: str,
    y: str,
    title: str = "",
    x_mode: str = "min",
    y_mode: str = "max",
    styles: dict[str, str] | None = None,
    logx: bool = False,
    frontier: bool = True,
) -> Path:
    """Plot points by series (error bars = s.e.; a series is joined by a line in x order unless its
    style is a marker-only format such as ``"r*"``), label each point, and draw the non-dominated set
    as a step line. Used by this tool, the DiFFPO module's per-validation plot and the README scripts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = styles or {}
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for s in dict.fromkeys(p.series for p in points):
        ps = sorted((p for p in points if p.series == s), key=lambda p: p.x)
        fmt = styles.get(s, "o-")
        ax.errorbar(
            [p.x for p in ps],
            [p.y for p in ps],
            xerr=[p.x_se for p in ps],
            yerr=[p.y_se for p in ps],
            fmt=fmt,
            capsize=2,
            markersize=12 if "*" in fmt else 5,
            label=s or None,
        )
        for p in ps:
            if p.label:
                ax.annotate(p.label, (p.x, p.y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = sorted((p for p in points if p.pareto), key=lambda p: p.x)
    if frontier and len(front) > 0:
        ax.step(
            [p.x for p in front],
            [p.y for p in front],
            where="post" if (x_mode == "min") == (y_mode == "max") else "pre",
            color="black",
            alpha=0.35,
            linewidth=4,
            zorder=0,
            label="Pareto frontier",
        )
    ax.set_xlabel(f"{x} ({'lower' if x_mode == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y} ({'lower' if y_mode == 'min' else 'higher'} is better)")
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    if any(p.series for p in points) or front:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_wandb(
    points: list[Point], *, x: str, y: str, group: str, project: str, out_dir: Path, png: Path | None = None
) -> str:
    """One W&B run (job_type ``pareto``) in the sweep's group: a table of the points and a scatter plot.
    Offline unless a key is configured (same rule as ``logger=wandb``). Returns the run's local dir."""
    import wandb

    from src.utils.resolvers import _wandb_offline

    cols = ["series", "label", x, y, f"{x}_se", f"{y}_se", "n", "pareto"]
    rows = [[p.series, p.label, p.x, p.y, p.x_se, p.y_se, p.n, p.pareto] for p in points]
    run = wandb.init(
        project=project,
        group=group,
        job_type="pareto",
        name=f"pareto:{group}",
        dir=str(out_dir),
        mode="offline" if _wandb_offline() else "online",
        reinit="finish_previous",
        config={"x": x, "y": y, "num_points": len(points)},
    )
    try:
        table = wandb.Table(columns=cols, data=rows)
        run.log({"pareto/table": table, "pareto/scatter": wandb.plot.scatter(table, x, y, title=f"{y} vs {x}")})
        front = sorted((r for r in rows if r[-1]), key=lambda r: r[2])
        if front:
            ft = wandb.Table(columns=cols, data=front)
            run.log({"pareto/frontier": wandb.plot.line(ft, x, y, title=f"Pareto frontier: {y} vs {x}")})
        if png is not None:
            run.log({"pareto/plot": wandb.Image(str(png))})
        run.summary["pareto/num_frontier"] = sum(p.pareto for p in points)
        return str(run.dir)
    finally:
        run.finish()


def sweep_group(sweep_dir: Path, task_name: str | None = None) -> str:
    """The W&B group of a sweep's runs: ``<task_name>/<sweep folder name>`` (see ``logger=wandb``)."""
    return f"{task_name or 'sweep'}/{Path(sweep_dir).name}"


def _slug(name: str) -> str:
    return name.replace("/", "_").replace("@", "at")


def frontier(
    sweep_dir: str | Path,
    *,
    x: str,
    y: str,
    series: str | None = None,
    label: str | None = None,
    wandb: bool = False,
    project: str = "posttrain",
    group: str | None = None,
    title: str | None = None,
    logx: bool = False,
) -> dict[str, Any]:
    """The whole tool: read jobs, build points, mark the frontier, write CSV/PNG (and W&B)."""
    sweep_dir = Path(sweep_dir)
    (x, x_mode), (y, y_mode) = parse_axis(x, "min"), parse_axis(y, "max")
    jobs = load_jobs(sweep_dir)
    pts = mark_frontier(points_from_jobs(jobs, x=x, y=y, series=series, label=label), x_mode=x_mode, y_mode=y_mode)
    stem = f"pareto_{_slug(y)}_vs_{_slug(x)}"
    csv_path = write_csv(pts, sweep_dir / f"{stem}.csv", x=x, y=y)
    title = title if title is not None else f"{sweep_dir.name}: {len(jobs)} jobs, {len(pts)} points"
    png = plot_frontier(pts, sweep_dir / f"{stem}.png", x=x, y=y, x_mode=x_mode, y_mode=y_mode, title=title, logx=logx)
    out: dict[str, Any] = {"csv": csv_path, "png": png, "points": pts, "jobs": len(jobs)}
    if wandb:
        task = next((j.get("task_name") for j in jobs if j.get("task_name")), None)
        out["wandb_dir"] = log_wandb(
            pts, x=x, y=y, group=group or sweep_group(sweep_dir, task), project=project, out_dir=sweep_dir, png=png
        )
    for p in pts:
        log.info(
            "%s %-12s %s=%.4g±%.2g %s=%.4g±%.2g n=%d %s",
            "*" if p.pareto else " ",
            p.series,
            x,
            p.x,
            p.x_se,
            y,
            p.y,
            p.y_se,
            p.n,
            p.label,
        )
    return out


class ParetoCallback(Callback):
    """Hydra callback: build the frontier of the multirun that just ended (see the module docstring).
    ``wandb: auto`` logs the W&B summary run when the sweep's jobs log to W&B (``logger=wandb|many``)."""

    def __init__(
        self,
        x: str,
        y: str,
        series: str | None = None,
        label: str | None = None,
        wandb: bool | str = "auto",
        logx: bool = False,
    ) -> None:
        self.kw = {"x": x, "y": y, "series": series, "label": label, "logx": logx}
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        use_wandb = self.wandb
        if use_wandb == "auto":
            use_wandb = any("Wandb" in str(v.get("_target_", "")) for v in (config.get("logger") or {}).values())
        project = "posttrain"
        if use_wandb:
            project = next(v.project for v in config.logger.values() if "Wandb" in str(v.get("_target_", "")))
        try:
            out = frontier(config.hydra.sweep.dir, wandb=bool(use_wandb), project=project, **self.kw)
        except (FileNotFoundError, KeyError) as exc:  # every job failed, or a metric is missing: say so, keep going
            log.error("Pareto frontier not written: %s", exc)
            return
        log.info("Pareto frontier of %d jobs: %s, %s", out["jobs"], out["csv"], out["png"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m src.pareto", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", help="a multirun folder (logs/<task>/multiruns/<time>) or any folder of runs")
    ap.add_argument("--x", required=True, help="metric on the x axis, optionally :min (default) or :max")
    ap.add_argument("--y", required=True, help="metric on the y axis, optionally :max (default) or :min")
    ap.add_argument("--series", default=None, help="override key that splits points into curves (e.g. module.variant)")
    ap.add_argument(
        "--label", default=None, help="override key that names a point (e.g. module.beta); default: job dir"
    )
    ap.add_argument("--wandb", action="store_true", help="also log a W&B summary run in the sweep's group")
    ap.add_argument("--project", default="posttrain")
    ap.add_argument("--group", default=None, help="W&B group (default: <task_name>/<sweep folder>)")
    ap.add_argument("--logx", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = frontier(
        a.sweep_dir,
        x=a.x,
        y=a.y,
        series=a.series,
        label=a.label,
        wandb=a.wandb,
        project=a.project,
        group=a.group,
        logx=a.logx,
    )
    print(
        f"{sum(p.pareto for p in out['points'])}/{len(out['points'])} points on the frontier; wrote {out['csv']} and {out['png']}"
    )
    return out


if __name__ == "__main__":
    main()
