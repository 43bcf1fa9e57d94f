"""What every experiment script shares: its command line, the zoo assets it needs, the
data it renders, and how it writes its tables and the verdict on the thesis's relation.

Each script reproduces one relation of the thesis on the embedded synthetic-face world and
writes ``results.md`` and ``results.json`` into ``--out``. The verdict ("relation holds" /
"does not hold") is computed from the measured numbers by a fixed rule stated next to
it; nothing is tuned until it holds.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from vmd_fast.domains import faces

SIZES = ("small", "default")


# ---------------------------------------------------------------------------------------
# Command line


def parse_args(name: str, description: str, argv: Optional[Sequence[str]] = None,
               extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    """The options every script takes; ``extra(parser)`` adds the script's own.

    ``--size small`` is the ~1 minute version the tests and a quick look use; ``default``
    is the reported one, designed to finish in 15 minutes on 2 CPU cores.
    """
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument("--out", default=os.path.join("outputs", "experiments", name),
                        help="folder for results.md and results.json (default: %(default)s)")
    parser.add_argument("--size", choices=SIZES, default="default", help="experiment size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the models' training and the searches")
    parser.add_argument("--assets", default=None,
                        help="a folder of zoo assets looked in before the package's own (e.g. freshly trained "
                             "generator / editor / clip)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.name = name
    args.progress = not args.no_progress
    return args


CT_LABELS = {"prediction": "predicted class", "probability": "probabilities"}
"""--ct-labels value -> how a summary line says it."""


def add_ct_labels_argument(parser: argparse.ArgumentParser) -> None:
    """``--ct-labels``: what counterfactual training fits a counterfactual to."""
    from vmd_fast.train import COUNTERFACTUAL_LABELS

    parser.add_argument("--ct-labels", choices=COUNTERFACTUAL_LABELS, default="prediction",
                        help="CT's counterfactual labels: the original predicted class (Eq. 3.12, default) "
                             "or its probabilities")


def add_ct_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    """``--epochs`` / ``--lr`` / ``--n-diagnose``: CT's schedule and the size of its
    evaluation instead of the size's (longer CT runs, better-powered flip resistance)."""
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="CT (and control) epochs instead of the size's")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="CT (and control) learning rate instead of the size's")
    parser.add_argument("--n-diagnose", type=_positive_int, default=None,
                        help="held-out generator samples the ZOOM evaluation searches on, instead of the size's")


def with_schedule(settings, args: argparse.Namespace):
    """``settings`` (a dataclass with ``epochs``, ``lr`` and ``n_diagnose``) with
    ``--epochs`` / ``--lr`` / ``--n-diagnose`` applied."""
    changes = {k: getattr(args, k) for k in ("epochs", "lr", "n_diagnose") if getattr(args, k, None) is not None}
    return replace(settings, **changes)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (initialisation, augmentation draws); every data set
    and search has its own seeded generator, so a run on the CPU repeats exactly."""
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Zoo assets


class MissingAssets(RuntimeError):
    """Some zoo assets an experiment needs are not on disk."""


def load_assets(names: Iterable[str], assets_dir: Optional[str] = None, device="cpu") -> Dict[str, nn.Module]:
    """The zoo assets ``names``, looked up first in ``assets_dir``, then in the package.

    Raises:
        MissingAssets: with one line naming every missing asset and how to get it.
    """
    from vmd_fast import zoo
    from vmd_fast.zoo.assets import asset_paths

    names = list(names)
    folders = ([assets_dir] if assets_dir else []) + [None]
    found, missing = {}, []
    for name in names:
        folder = next((d for d in folders if all(p.exists() for p in asset_paths(name, d))), "missing")
        if folder == "missing":
            missing.append(name)
        else:
            found[name] = folder
    if missing:
        where = " and ".join(([repr(str(assets_dir))] if assets_dir else []) + [repr(str(zoo.ASSETS_DIR))])
        raise MissingAssets(
            f"missing zoo assets: {', '.join(missing)} (looked in {where}; train them with "
            f"`python -m vmd_fast.zoo train NAME` or pass --assets DIR)"
        )
    return {name: zoo.load(name, device=device, assets_dir=folder) for name, folder in found.items()}


def describe_assets(assets: Dict[str, nn.Module]) -> Dict[str, dict]:
    """name -> where each zoo asset was loaded from and its SHA-256, for the record."""
    return {name: {"sha256": (getattr(m, "zoo_info", None) or {}).get("sha256"),
                   "metrics": (getattr(m, "zoo_info", None) or {}).get("metrics")} for name, m in assets.items()}


def tokenizer_for(clip: nn.Module):
    """The tokenizer ZOOM should use with ``clip``: its own ``tokenizer`` attribute when it
    carries one (the tests' toy CLIP), else ``None`` (vmd_fast's open_clip tokenizer)."""
    return getattr(clip, "tokenizer", None)


def trainable_copy(model: nn.Module) -> nn.Module:
    """A copy of a zoo model that can be trained (the zoo freezes what it loads)."""
    twin = copy.deepcopy(model)
    twin.requires_grad_(True)
    return twin


# ---------------------------------------------------------------------------------------
# Data of the embedded world


def render_set(params: faces.FaceParams, label: str, attributes: Sequence[str], chunk: int = 500) -> TensorDataset:
    """Render faces once into ``(image, label, attributes)`` tensors.

    Returns:
        TensorDataset of images (N, 3, 64, 64) in [0, 1], labels (N,) float 0/1 and the
        attributes (N, A) in ``attributes`` order (an editor's column order).
    """
    images = torch.cat([faces.render(params[start : start + chunk]).images for start in range(0, len(params), chunk)])
    labels = getattr(params, label).float()
    return TensorDataset(images, labels, faces.attribute_vector(params, list(attributes)))


def sample_faces(n: int, seed: int, correlations=(), priors: Optional[dict] = None) -> faces.FaceParams:
    """``n`` seeded faces, optionally with planted correlations or label priors."""
    from vmd_fast.domains import as_correlations

    return faces.sample_params(n, torch.Generator().manual_seed(seed), correlations=as_correlations(correlations),
                               priors=priors)


def balanced_faces(n: int, seed: int, attributes: Sequence[str]) -> faces.FaceParams:
    """About ``n`` faces with every 0/1 combination of ``attributes`` equally often.

    Each combination is drawn with the attributes' priors forced to it, so all other
    attributes keep their own distribution (a fresh balanced set for group accuracies).
    """
    per_group = max(1, n // (2 ** len(attributes)))
    parts = []
    for k in range(2 ** len(attributes)):
        values = {a: float((k >> i) & 1) for i, a in enumerate(attributes)}
        # A prior of exactly 0 or 1 fixes the attribute (the renderer draws u < prior).
        parts.append(sample_faces(per_group, seed * 97 + k, priors=values))
    return faces.FaceParams.cat(parts)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device="cpu") -> torch.Tensor:
    """(N,) logits of a binary classifier, in eval mode, batched."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(model(images[start : start + batch_size].to(device)).reshape(-1).float().cpu())
    return torch.cat(out)


def binary_scores(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """Accuracy, and precision and recall of the positive (minority) class."""
    pred = logits > 0
    truth = labels > 0.5
    tp = float((pred & truth).sum())
    precision = tp / float(pred.sum()) if pred.any() else float("nan")
    recall = tp / float(truth.sum()) if truth.any() else float("nan")
    return {"precision": precision, "recall": recall, "accuracy": float((pred == truth).float().mean())}


def finetune(model: nn.Module, data: Dataset, epochs: int, lr: float, batch_size: int, seed: int,
             progress: bool = True, sample_weights: Optional[torch.Tensor] = None, pos_weight: Optional[float] = None,
             transform=None, device="cpu", desc: str = "training") -> nn.Module:
    """Plain supervised training of a binary classifier on ``(image, label, ...)`` items.

    Args:
        sample_weights: (N,) draw items with these weights, with replacement (resampling).
        pos_weight: weight of the positive class in the BCE (reweighting).
        transform: ``transform(x, y) -> (x, y_soft)`` applied to each batch (augmentations).
    """
    model.to(device).train().requires_grad_(True)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1009 + epoch)
        if sample_weights is not None:
            sampler = torch.utils.data.WeightedRandomSampler(sample_weights, len(data), replacement=True, generator=gen)
            loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
        else:
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
        for batch in tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            x, y = batch[0].to(device), batch[1].to(device).float()
            if transform is not None:
                x, y = transform(x, y)
            logits = model(x).reshape(-1)
            weight = None if pos_weight is None else torch.as_tensor(pos_weight, device=device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return model.eval()


# ---------------------------------------------------------------------------------------
# Results


@dataclass
class Relation:
    """A relation of the thesis and whether the measured numbers satisfy it.

    Args:
        statement: the relation, in the thesis's words.
        rule: the test applied to the numbers (fixed before the run).
        holds: the outcome of ``rule`` on the measured numbers.
        evidence: the numbers it was decided on.
    """

    statement: str
    rule: str
    holds: bool
    evidence: str

    def line(self) -> str:
        verdict = "holds" if self.holds else "does not hold"
        return f"**Relation {verdict}**: {self.statement} (rule: {self.rule}; measured: {self.evidence})."


@dataclass
class Chart:
    """A grouped bar chart of measured numbers, drawn next to ``results.md``.

    Args:
        file: PNG file name inside the experiment's output folder.
        title: the chart's title (also its alt text in the markdown).
        ylabel: the value axis.
        categories: the groups along the horizontal axis.
        series: legend entry -> one value per category (None or NaN: no bar).
    """

    file: str
    title: str
    ylabel: str
    categories: Sequence[str]
    series: Dict[str, Sequence[Optional[float]]]


def draw_chart(chart: Chart, folder: Path) -> Path:
    """Draw ``chart`` as ``folder / chart.file`` (matplotlib, Agg backend); its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(chart.series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(chart.categories) + 2), 3.6), dpi=110)
    for i, (name, values) in enumerate(chart.series.items()):
        heights = [math.nan if v is None else float(v) for v in values]
        ax.bar([c + (i - (len(chart.series) - 1) / 2) * width for c in range(len(chart.categories))], heights,
               width, label=name)
    ax.set_xticks(range(len(chart.categories)), chart.categories, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(chart.ylabel)
    ax.set_title(chart.title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(folder) / chart.file
    fig.savefig(path)
    plt.close(fig)
    return path


def chart_markdown(charts: Sequence[Chart], prefix: str = "") -> list:
    """Markdown lines that show ``charts`` (their files under ``prefix``)."""
    return [f"![{c.title}]({prefix}{c.file})" for c in charts]


def fmt(value, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` decimals, NaN as "n/a", anything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def percent(value: float) -> str:
    """A fraction as a percentage cell, like the thesis's tables."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table; cells go through :func:`fmt`."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} headers: {row!r}")
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)


def environment() -> Dict[str, str]:
    """The machine the numbers were measured on: CPU model, cores, torch, date."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _jsonable(value):
    if is_dataclass(value):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, argparse.Namespace):
        return _jsonable(vars(value))
    return value


def write_results(args: argparse.Namespace, title: str, summary: str, tables: Sequence[tuple],
                  relations: Sequence[Relation], measurements: dict, settings, started: float,
                  charts: Callable[[dict], Sequence[Chart]] = lambda measurements: ()) -> Path:
    """Write ``results.md`` and ``results.json`` into ``args.out`` and say where they went.

    Args:
        tables: ``(caption, headers, rows)`` each.
        measurements: every measured number (the JSON's ``measurements``).
        settings: the size's settings (a dataclass), recorded with the command line.
        started: ``time.time()`` at the start of the run (the wall time is reported).
        charts: the experiment's charts of the (JSON-ready) measurements; drawn as PNGs.

    Returns:
        The output folder.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.time() - started
    env = environment()
    md = [f"### {title}", "", summary, ""]
    for caption, headers, rows in tables:
        md += [f"*{caption}*", "", markdown_table(headers, rows), ""]
    md += [r.line() for r in relations] + [""]
    drawn = list(charts(_jsonable(measurements)))
    for chart in drawn:
        draw_chart(chart, out)
    md += chart_markdown(drawn) + ([""] if drawn else [])
    md.append(f"Size `{args.size}`, seed {args.seed}, {wall:.0f} s on {env['cpu']} "
              f"({env['torch_threads']} torch threads), torch {env['torch']}, {env['date']}.")
    (out / "results.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    record = {"experiment": args.name, "title": title, "size": args.size, "seed": args.seed,
              "settings": _jsonable(settings), "arguments": _jsonable(args), "environment": env,
              "wall_seconds": wall, "relations": [_jsonable(r) for r in relations],
              "measurements": _jsonable(measurements)}
    (out / "results.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"{args.name}: results written to {out / 'results.md'} and {out / 'results.json'}")
    return out


def run_main(experiment, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``experiment(argv)``; a missing asset ends it with its one-line message."""
    try:
        experiment(argv)
    except MissingAssets as error:
        print(f"error: {error}")
        return 2
    return 0


# ---------------------------------------------------------------------------------------
# ZOOM pieces shared by the counterfactual-training experiments


def world_prompts(exclude: Sequence[str] = ()) -> Dict[str, str]:
    """attribute -> ZOOM prompt of the embedded world, without the attributes ``exclude``
    (a classifier's own label: editing it changes the true answer)."""
    from vmd_fast.zoom import WORLD_PROMPTS

    return {a: p for a, p in WORLD_PROMPTS.items() if a not in exclude}


def relevance(generator: nn.Module, clip: nn.Module, args: argparse.Namespace, n_images: int) -> Dict[str, torch.Tensor]:
    """ZOOM's relevance matrix, cached next to the experiments' outputs."""
    from vmd_fast import zoom

    cache = Path(args.out).parent / "relevance-cache"
    return zoom.relevance_matrix(generator, clip, zoom.RelevanceConfig(n_images=n_images, seed=args.seed),
                                 cache_dir=str(cache), progress=args.progress)
