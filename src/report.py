"""One summariser for every experiment table: mean ± std per group over the jobs of a sweep.

    python -m src.report <sweep dir | records.jsonl> --group module.variant [--group ...] \
        --metrics val/bandit/true_reward,val/bandit/kl_ref [--baseline module.variant=dpo] \
        [--format md|csv] [--out table.md] [--plot x_metric:min,y_metric:max]

Input: a sweep dir of ``python train.py -m ...`` (every job wrote ``metrics.json``: final metrics and
command-line overrides, :func:`src.utils.sweep.write_run_summary`), or a JSONL file of such records
(``{"overrides": {...}, "metrics": {...}}`` a line: how raw results are committed under
``docs/results/``). Jobs that share the ``--group`` overrides form one row; what else differs
between them (``seed``) is what the mean ± std (sample standard deviation, n - 1) is over, and the row
says how many jobs it holds. ``--baseline KEY=VALUE`` adds a table of differences to that group,
paired by ``seed`` (mean ± standard error, and in how many seeds the difference is positive).
``--plot x,y`` draws the group means with standard errors through :mod:`src.pareto`. A metric written
``A / B`` is the per-job ratio of two metrics (e.g. ``val/distill/js / val/rollout/length``: per token), and
``mean:M`` the mean of every logged value of ``M`` in the job. ``--curve M`` tabulates (and ``--curve-out``
plots) ``M`` at every logged step, mean ± std per group: learning curves from each job's ``csv/metrics.csv``.
``--export records.jsonl --series M,...`` writes the records with those histories, for ``docs/results/``.

At the end of a multirun :class:`ReportCallback` (a Hydra callback that the ``hparams_search`` table
configs enable) writes ``report.md`` and ``report.csv`` into the sweep dir the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.pareto import Point, load_jobs, mark_frontier, parse_axis, plot_frontier


def load_records(source: str | Path) -> list[dict[str, Any]]:
    """Job records from a sweep dir (its ``metrics.json`` files) or a JSONL file of records. A sweep dir's
    records also know their job folder (``_dir``), where :func:`job_series` finds the logged history."""
    path = Path(source)
    if path.is_dir():
        recs = load_jobs(path)
        for r in recs:
            r["_dir"] = str(path / r["dir"])
        return recs
    if path.is_file():
        recs = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from e
                rec.setdefault("dir", f"{path.name}:{i}")
                recs.append(rec)
        return recs
    return load_jobs(path)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def job_series(rec: dict[str, Any], metric: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every logged value of ``metric`` in a job: from the record's ``series`` (a committed
    JSONL record, :func:`export_records`) or its job folder's ``csv/metrics.csv``. Missing is an error."""
    if metric in rec.get("series", {}):
        return [(int(a), float(b)) for a, b in rec["series"][metric]]
    path = Path(rec.get("_dir", "")) / "csv" / "metrics.csv"
    if "_dir" not in rec or not path.is_file():
        raise KeyError(f"job {rec['dir']}: no logged history of {metric!r} (no series and no {path})")
    with open(path, newline="") as f:
        out = [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f) if r.get(metric) not in (None, "")]
    if not out:
        raise KeyError(f"job {rec['dir']}: {path} never logged {metric!r}")
    return out


def metric_value(rec: dict[str, Any], metric: str) -> float:
    """A job's value of ``metric``, of ``A / B`` (the ratio of two of its metrics), or of ``mean:M`` (the mean of
    every logged value of ``M``, e.g. ``mean:train/time/update_s``: seconds per update over the run)."""
    if metric.startswith("mean:"):
        return statistics.mean(v for _, v in job_series(rec, metric[5:]))
    m = rec.get("metrics", {})
    names = metric.split(" / ")
    missing = [n for n in names if n not in m]
    if missing:
        raise KeyError(f"metric {missing[0]!r} missing in job {rec['dir']} (it has: {', '.join(sorted(m)) or 'none'})")
    if len(names) == 1:
        return _num(m[metric])
    num, den = _num(m[names[0]]), _num(m[names[1]])
    return num / den if den else float("nan")


def group_records(records: list[dict[str, Any]], keys: Sequence[str]) -> dict[tuple[str, ...], list[dict]]:
    """Records by their values of the override ``keys`` (first-seen order); a missing key reads ``-``."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for r in records:
        ov = r.get("overrides", {})
        groups.setdefault(tuple(str(ov.get(k, "-")) for k in keys), []).append(r)
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records: list[dict[str, Any]], *, group: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group: ``{group values, n, metric: (mean, std)}``. A metric a job lacks is an error
    that names the job and what it has (a typo must not become an empty column)."""
    rows = []
    for key, recs in group_records(records, group).items():
        row: dict[str, Any] = dict(zip(group, key))
        row["n"] = len(recs)
        for m in metrics:
            row[m] = mean_std([metric_value(r, m) for r in recs])
        rows.append(row)
    return rows


def paired_differences(
    records: list[dict[str, Any]],
    *,
    group: Sequence[str],
    metrics: Sequence[str],
    baseline: str,
    pair_key: str = "seed",
) -> list[dict[str, Any]]:
    """Per non-baseline group: ``metric: (mean diff, s.e., wins, n)`` against the baseline group, paired
    by ``pair_key``. ``baseline``: ``KEY=VALUE`` with KEY one of ``group``."""
    key, _, value = baseline.partition("=")
    if key not in group:
        raise ValueError(f"--baseline {baseline!r}: {key!r} is not a --group key ({', '.join(group)})")
    groups = group_records(records, group)
    idx = list(group).index(key)

    def by_pair(recs: list[dict]) -> dict[str, dict]:
        return {str(r.get("overrides", {}).get(pair_key)): r for r in recs}

    out = []
    for k, recs in groups.items():
        if k[idx] == value:
            continue
        base_key = (*k[:idx], value, *k[idx + 1 :])  # the same row with the baseline's value
        if base_key not in groups:
            raise ValueError(f"--baseline {baseline!r}: no baseline jobs for {dict(zip(group, k))}")
        ref, mine = by_pair(groups[base_key]), by_pair(recs)
        row: dict[str, Any] = dict(zip(group, k))
        for m in metrics:
            d = [metric_value(r, m) - metric_value(ref[p], m) for p, r in mine.items() if p in ref]
            se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
            row[m] = (statistics.mean(d) if d else float("nan"), se, sum(x > 0 for x in d), len(d))
        out.append(row)
    return out


def _short(metric: str) -> str:
    return metric.removeprefix("val/")


def to_markdown(rows: list[dict[str, Any]], *, group: Sequence[str], metrics: Sequence[str], digits: int = 3) -> str:
    head = [*group, "n", *(_short(m) for m in metrics)] if rows and "n" in rows[0] else [*group, *map(_short, metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[g]) for g in group]
        if "n" in r:
            cells.append(str(r["n"]))
        for m in metrics:
            v = r[m]
            if len(v) == 2:
                cells.append(f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}")
            else:  # paired difference: mean ± s.e. [wins/n]
                cells.append(f"{v[0]:+.{digits}f} ± {v[1]:.{digits}f} [{v[2]}/{v[3]}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]], *, group: Sequence[str], metrics: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*group, "n", *(f"{m}{s}" for m in metrics for s in ("_mean", "_std"))])
    for r in rows:
        w.writerow([*(r[g] for g in group), r["n"], *(x for m in metrics for x in r[m])])
    return buf.getvalue()


def plot(rows: list[dict[str, Any]], *, group: Sequence[str], x: str, y: str, out: Path, title: str = "") -> Path:
    """Group means with standard errors; the first group key is the series, the rest the point label."""
    (xn, xm), (yn, ym) = parse_axis(x, "min"), parse_axis(y, "max")
    pts = []
    for r in rows:
        (mx, sx), (my, sy) = r[xn], r[yn]
        root = math.sqrt(r["n"])
        label = ",".join(str(r[g]) for g in group[1:])
        pts.append(Point(x=mx, y=my, x_se=sx / root, y_se=sy / root, series=str(r[group[0]]), label=label, n=r["n"]))
    return plot_frontier(mark_frontier(pts, x_mode=xm, y_mode=ym), out, x=xn, y=yn, title=title or f"{yn} vs {xn}")


def report(
    source: str | Path,
    *,
    group: Sequence[str],
    metrics: Sequence[str],
    baseline: str | None = None,
    digits: int = 3,
) -> str:
    """The markdown table(s) for ``source``: the summary, and the paired differences with ``baseline``."""
    recs = load_records(source)
    text = to_markdown(summarise(recs, group=group, metrics=metrics), group=group, metrics=metrics, digits=digits)
    if baseline:
        diffs = paired_differences(recs, group=group, metrics=metrics, baseline=baseline)
        text += f"\n\npaired by seed, difference to {baseline}: mean ± s.e. [seeds where it is > 0 / seeds]\n\n"
        text += to_markdown(diffs, group=group, metrics=metrics, digits=digits)
    return text


def curves(
    records: list[dict[str, Any]], *, group: Sequence[str], metric: str
) -> dict[tuple[str, ...], list[tuple[int, float, float, int]]]:
    """Per group, ``(step, mean, std, n)`` of ``metric`` over the group's jobs at every step they all logged (a
    learning curve: e.g. held-out accuracy at each validation)."""
    out = {}
    for key, recs in group_records(records, group).items():
        per_job = [dict(job_series(r, metric)) for r in recs]
        steps = sorted(set.intersection(*(set(d) for d in per_job)))
        out[key] = [(st, *mean_std([d[st] for d in per_job]), len(per_job)) for st in steps]
    return out


def curves_markdown(table: dict[tuple[str, ...], list], *, group: Sequence[str], digits: int = 3) -> str:
    steps = sorted({st for rows in table.values() for st, *_ in rows})
    head = ["step", *(",".join(k) for k in table)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for st in steps:
        cells = [str(st)]
        for rows in table.values():
            hit = [r for r in rows if r[0] == st]
            cells.append(f"{hit[0][1]:.{digits}f} ± {hit[0][2]:.{digits}f}" if hit else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(
    table: dict[tuple[str, ...], list], *, metric: str, out: Path, x_scale: float = 1.0, x_label: str = "step"
) -> Path:
    """Mean ± standard error per group against ``step * x_scale``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, rows in table.items():
        x = [r[0] * x_scale for r in rows]
        m = [r[1] for r in rows]
        se = [r[2] / math.sqrt(r[3]) for r in rows]
        ax.plot(x, m, marker="o", ms=3, label=",".join(key))
        ax.fill_between(x, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)], alpha=0.15)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def export_records(source: str | Path, out: str | Path, *, series: Sequence[str] = ()) -> Path:
    """A sweep's job records as JSONL (what ``docs/results/`` commits), each with the logged history of the
    ``series`` metrics, so curves and ``mean:`` metrics rebuild without the job folders."""
    lines = []
    for r in load_records(source):
        rec = {k: v for k, v in r.items() if not k.startswith("_")}
        if series:
            rec["series"] = {m: job_series(r, m) for m in series}
        lines.append(json.dumps(rec))
    Path(out).write_text("\n".join(lines) + "\n")
    return Path(out)


class ReportCallback(Callback):
    """Hydra callback: at the end of a multirun, ``report.md`` and ``report.csv`` in the sweep dir.

    Args:
        group: override keys that define a row.
        metrics: metrics to average.
        baseline: optional ``KEY=VALUE`` group for paired differences.
        plot: optional ``"x_metric:min,y_metric:max"``: also ``report.png``.
    """

    def __init__(
        self, *, group: list[str], metrics: list[str], baseline: str | None = None, plot: str | None = None
    ) -> None:
        self.group, self.metrics, self.baseline, self.plot = list(group), list(metrics), baseline, plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        text = report(sweep, group=self.group, metrics=self.metrics, baseline=self.baseline)
        (sweep / "report.md").write_text(text + "\n")
        rows = summarise(load_records(sweep), group=self.group, metrics=self.metrics)
        (sweep / "report.csv").write_text(to_csv(rows, group=self.group, metrics=self.metrics))
        if self.plot:
            x, y = self.plot.split(",")
            plot(rows, group=self.group, x=x, y=y, out=sweep / "report.png")
        print(text)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="sweep dir (jobs with metrics.json) or a JSONL file of job records")
    ap.add_argument("--group", action="append", required=True, help="override key defining a row (repeatable)")
    ap.add_argument("--metrics", required=True, help="comma-separated metric names")
    ap.add_argument("--baseline", help="KEY=VALUE: also paired differences to this group (by seed)")
    ap.add_argument("--format", choices=("md", "csv"), default="md")
    ap.add_argument("--digits", type=int, default=3)
    ap.add_argument("--out", help="write the table here (and print it)")
    ap.add_argument("--plot", help="x_metric[:min|max],y_metric[:min|max]: group means with s.e.")
    ap.add_argument("--plot-out", help="where the plot goes (default: next to --out, or report.png)")
    ap.add_argument("--curve", help="a metric's learning curve per group (mean ± std at every logged step)")
    ap.add_argument("--curve-out", help="plot the --curve here (png)")
    ap.add_argument("--curve-x-scale", type=float, default=1.0, help="multiply steps by this on the plot's x axis")
    ap.add_argument("--curve-x-label", default="step")
    ap.add_argument("--export", help="write the records as JSONL here, with the history of --series metrics")
    ap.add_argument("--series", default="", help="comma-separated metrics whose history --export keeps")
    a = ap.parse_args(argv)
    metrics = [m for m in a.metrics.split(",") if m]
    if a.export:
        print("wrote", export_records(a.source, a.export, series=[m for m in a.series.split(",") if m]))
    if a.curve:
        table = curves(load_records(a.source), group=a.group, metric=a.curve)
        print(f"{a.curve}, mean ± std over jobs:\n\n" + curves_markdown(table, group=a.group, digits=a.digits) + "\n")
        if a.curve_out:
            out = plot_curves(
                table, metric=a.curve, out=Path(a.curve_out), x_scale=a.curve_x_scale, x_label=a.curve_x_label
            )
            print("wrote", out)
    if a.format == "csv":
        text = to_csv(
            summarise(load_records(a.source), group=a.group, metrics=metrics), group=a.group, metrics=metrics
        )
    else:
        text = report(a.source, group=a.group, metrics=metrics, baseline=a.baseline, digits=a.digits)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.plot:
        x, y = a.plot.split(",")
        rows = summarise(load_records(a.source), group=a.group, metrics=metrics)
        dest = Path(a.plot_out or (Path(a.out).with_suffix(".png") if a.out else "report.png"))
        print("wrote", plot(rows, group=a.group, x=x, y=y, out=dest))
    print(text)
    return text


if __name__ == "__main__":
    main()
