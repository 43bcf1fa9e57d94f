"""The result of a diagnosis (SIA or ZOOM) and its report on disk.

One :class:`DiagnosisResult` shape serves both methods, so that their histograms can be
compared side by side: per image and attribute, how much the target's prediction moved
(``changes``, thesis ``|f(x) - f(x_hat_i)|``) and whether it flipped, the counterfactual
images and the codes that made them (ZOOM's edit strengths ``w``, SIA's attribute
changes), and optionally one multi-attribute counterfactual per image.

``save(dir)`` writes ``result.json`` (everything but the tensors), ``sensitivity.csv``,
``histogram.png``, ``counterfactuals.png``, ``index.html`` (self-contained, images
inlined) and ``tensors.safetensors``; ``DiagnosisResult.load(dir)`` reads them back
(JSON and safetensors only: nothing is unpickled). :func:`write_comparison` puts two
results side by side on one page (before / after training, SIA vs ZOOM).
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import os
import platform
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from vmd_fast.diagnose.metrics import decoupling, decoupling_summary, normalized, sdar

FORMAT_VERSION = 1
_TENSOR_FIELDS = ("changes", "flipped", "originals", "counterfactuals", "codes")
_MULTI_FIELDS = ("counterfactuals", "codes", "flipped", "changes")


@dataclass
class DiagnosisResult:
    """What a diagnosis found.

    Args:
        method: ``"zoom"`` or ``"sia"`` (or a user's name for their own method).
        target: the target model's name.
        task: the target adapter's task.
        attributes: the A attribute names, in column order.
        changes: (N, A) ``|f(x) - f(x_hat_i)|`` for image n edited along attribute i.
        flipped: (N, A) bool, whether that counterfactual flipped the prediction.
        originals: (N, 3, H, W) the original images (or an empty tensor).
        counterfactuals: (N, A, 3, H, W) single-attribute counterfactuals (or empty).
        codes: (N, A) the attribute codes that made them (ZOOM: w_i; SIA: a_T - a_0).
        multi: the multi-attribute mode's ``counterfactuals`` (N, 3, H, W), ``codes``
            (N, A), ``flipped`` (N,) and ``changes`` (N,), or ``None``.
        config: the run's configuration (JSON-able).
        metrics: other measured figures (PSNR, SSIM, attack success rate, ...).
    """

    method: str
    target: str
    task: str
    attributes: List[str]
    changes: torch.Tensor
    flipped: torch.Tensor
    originals: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    counterfactuals: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    codes: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    multi: Optional[Dict[str, torch.Tensor]] = None
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        a = len(self.attributes)
        if self.changes.dim() != 2 or self.changes.shape[1] != a:
            raise ValueError(f"changes must have shape (N, {a}), got {tuple(self.changes.shape)}")
        if self.flipped.shape != self.changes.shape:
            raise ValueError(f"flipped must have the shape of changes {tuple(self.changes.shape)}, got {tuple(self.flipped.shape)}")

    # --- the figures --------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return self.changes.shape[0]

    @property
    def sensitivity(self) -> Dict[str, float]:
        """attribute -> h_i = E_x |f(x) - f(x_hat_i)| (thesis ch. 3; SIA's Eq. 2.2 analogue)."""
        means = self.changes.double().mean(dim=0)
        return {name: float(v) for name, v in zip(self.attributes, means)}

    @property
    def sensitivity_sem(self) -> Dict[str, float]:
        """attribute -> standard error of the mean of its changes over images."""
        n = self.n_images
        std = self.changes.double().std(dim=0, correction=1) if n > 1 else torch.zeros(len(self.attributes))
        return {name: float(v) / max(n, 1) ** 0.5 for name, v in zip(self.attributes, std)}

    @property
    def flip_rates(self) -> Dict[str, float]:
        """attribute -> fraction of its single-attribute counterfactuals that flipped."""
        rates = self.flipped.float().mean(dim=0)
        return {name: float(v) for name, v in zip(self.attributes, rates)}

    @property
    def multi_flip_rate(self) -> Optional[float]:
        return None if self.multi is None else float(self.multi["flipped"].float().mean())

    @property
    def sdar(self) -> float:
        return sdar(self.sensitivity)

    def decoupling(self, scorer: Callable[[torch.Tensor], torch.Tensor], annotated: Optional[Sequence[str]] = None,
                   batch_size: int = 256, record: bool = True) -> torch.Tensor:
        """How much each single-attribute counterfactual changed every attribute (thesis Fig. 3.6).

        An annotator scores the originals and every counterfactual; entry ``(i, j)`` is the
        mean absolute change of score ``j`` along edit ``i``
        (:func:`vmd_fast.diagnose.decoupling`). The thesis uses CLIP as the annotator
        (:class:`vmd_fast.zoom.ClipScorer`); any attribute classifier with outputs in
        [0, 1] works the same way. The changes are taken against ``originals``: for ZOOM the
        generator's own samples; for SIA the input images, so its matrix also holds what
        the editor's reconstruction alone changes.

        Args:
            scorer: images ``(M, 3, H, W)`` -> scores ``(M, B)``, e.g. probabilities.
            annotated: the B names of the scores (default: ``scorer.attributes``). Where
                they equal the diagnosed attributes the record also holds the mean
                diagonal and off-diagonal change.
            batch_size: images scored per call.
            record: store the record in ``metrics["decoupling"]``, so that ``save``
                writes it into the JSON and the HTML report.

        Returns:
            (A, B) matrix of mean absolute score changes.
        """
        if not callable(scorer):
            raise TypeError(f"scorer must be callable (images -> (M, B) scores), got {type(scorer).__name__}")
        if self.originals.numel() == 0 or self.counterfactuals.numel() == 0:
            raise ValueError("decoupling needs the originals and the counterfactuals, and this result has none")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n, a = self.counterfactuals.shape[:2]

        def score(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = [scorer(images[k:k + batch_size]) for k in range(0, images.shape[0], batch_size)]
            for s in out:
                if not isinstance(s, torch.Tensor) or s.dim() != 2 or s.shape[1] != out[0].shape[1]:
                    raise ValueError(f"scorer must return (M, B) tensors, got {getattr(s, 'shape', type(s))}")
            return torch.cat(out).float().cpu()

        original = score(self.originals)
        edited = score(self.counterfactuals.flatten(0, 1)).view(n, a, -1)
        matrix = decoupling(original, edited)
        names = list(annotated if annotated is not None else getattr(scorer, "attributes", None)
                     or [f"score {j}" for j in range(matrix.shape[1])])
        if len(names) != matrix.shape[1]:
            raise ValueError(f"annotated names {len(names)} scores, the scorer gave {matrix.shape[1]}")
        if record:
            self.metrics["decoupling"] = {
                "annotator": getattr(scorer, "name", type(scorer).__name__),
                **decoupling_summary(matrix, self.attributes, names),
            }
        return matrix

    def ranking(self) -> List[str]:
        """Attributes from the most to the least sensitive."""
        sens = self.sensitivity
        return sorted(self.attributes, key=lambda name: -sens[name])

    def summary(self) -> dict:
        """The JSON-able figures (what ``result.json`` holds besides the configuration)."""
        return {
            "method": self.method,
            "target": self.target,
            "task": self.task,
            "n_images": self.n_images,
            "attributes": list(self.attributes),
            "sensitivity": self.sensitivity,
            "sensitivity_normalized": normalized(self.sensitivity),
            "sensitivity_sem": self.sensitivity_sem,
            "ranking": self.ranking(),
            "flip_rate": self.flip_rates,
            "multi_flip_rate": self.multi_flip_rate,
            "sdar": self.sdar,
            "metrics": self.metrics,
        }

    # --- on disk ------------------------------------------------------------------------
    def save(self, directory: str, grid_images: int = 8) -> Dict[str, str]:
        """Write the report into ``directory`` (created if needed).

        Returns:
            name -> path of every file written (``json``, ``csv``, ``histogram``,
            ``grid``, ``multi_grid`` when there is a multi-attribute mode, ``html``,
            ``tensors``).
        """
        from safetensors.torch import save_file

        from vmd_fast import __version__

        os.makedirs(directory, exist_ok=True)
        paths = {name: os.path.join(directory, file) for name, file in (
            ("json", "result.json"), ("csv", "sensitivity.csv"), ("histogram", "histogram.png"),
            ("grid", "counterfactuals.png"), ("html", "index.html"), ("tensors", "tensors.safetensors"),
        )}
        record = {
            "format_version": FORMAT_VERSION,
            **self.summary(),
            "config": self.config,
            "versions": {"vmd_fast": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        with open(paths["json"], "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
        with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["attribute", "sensitivity", "sensitivity_normalized", "sem", "flip_rate"])
            norm, sem, rates = normalized(self.sensitivity), self.sensitivity_sem, self.flip_rates
            for name in self.ranking():
                writer.writerow([name, f"{self.sensitivity[name]:.6g}", f"{norm[name]:.6g}", f"{sem[name]:.6g}", f"{rates[name]:.6g}"])
        tensors = {name: getattr(self, name).contiguous() for name in _TENSOR_FIELDS}
        tensors["flipped"] = tensors["flipped"].to(torch.uint8)
        if self.multi is not None:
            for name in _MULTI_FIELDS:
                value = self.multi[name].contiguous()
                tensors[f"multi.{name}"] = value.to(torch.uint8) if value.dtype == torch.bool else value
        # Copies: safetensors refuses tensors that share memory (e.g. SIA's codes in both modes).
        save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, paths["tensors"])
        _plot_histogram(self, paths["histogram"])
        _save_grid(self.originals, self.counterfactuals, grid_images, paths["grid"])
        if self.multi is not None and self.originals.numel() > 0:
            paths["multi_grid"] = os.path.join(directory, "multi_counterfactuals.png")
            _save_grid(self.originals, self.multi["counterfactuals"][:, None], grid_images, paths["multi_grid"])
        _write_html(self, record, paths)
        return paths

    @classmethod
    def load(cls, directory: str) -> "DiagnosisResult":
        """Read a report written by :meth:`save` (JSON + safetensors; nothing is unpickled)."""
        from safetensors.torch import load_file

        json_path = os.path.join(directory, "result.json")
        if not os.path.exists(json_path):
            raise FileNotFoundError(f"no diagnosis report in {directory!r} (result.json is missing)")
        with open(json_path, encoding="utf-8") as f:
            record = json.load(f)
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path} has format_version {record.get('format_version')}, expected {FORMAT_VERSION}")
        tensors = load_file(os.path.join(directory, "tensors.safetensors"))
        multi = None
        if "multi.flipped" in tensors:
            multi = {name: tensors[f"multi.{name}"] for name in _MULTI_FIELDS}
            multi["flipped"] = multi["flipped"].bool()
        return cls(
            method=record["method"], target=record["target"], task=record["task"],
            attributes=record["attributes"], changes=tensors["changes"], flipped=tensors["flipped"].bool(),
            originals=tensors["originals"], counterfactuals=tensors["counterfactuals"], codes=tensors["codes"],
            multi=multi, config=record.get("config", {}), metrics=record.get("metrics", {}),
        )


def _plot_histogram(result: DiagnosisResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = result.ranking()
    sens, sem = result.sensitivity, result.sensitivity_sem
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(order) + 1.5), 3.2), dpi=120)
    ax.bar(range(len(order)), [sens[a] for a in order], yerr=[sem[a] for a in order], capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=45, ha="right")
    ax.set_ylabel("sensitivity  E|f(x) - f(x̂)|")
    ax.set_title(f"{result.method.upper()} diagnosis of {result.target} ({result.n_images} images; bars: s.e.m.)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _save_grid(originals: torch.Tensor, edits: torch.Tensor, k: int, path: str) -> None:
    """Rows of ``original | edit_1 | ... | edit_A`` for the first ``k`` images."""
    from PIL import Image

    if originals.numel() == 0 or edits.numel() == 0:
        Image.new("RGB", (1, 1)).save(path)
        return
    k = min(k, originals.shape[0])
    rows = torch.cat([originals[:k, None], edits[:k]], dim=1)  # (k, 1 + A, 3, H, W)
    n, cols, c, h, w = rows.shape
    pad = 2
    canvas = torch.ones(3, n * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        for j in range(cols):
            canvas[:, pad + i * (h + pad) : pad + i * (h + pad) + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = rows[i, j].float().clamp(0, 1)
    array = (canvas.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).resize((array.shape[1] * 2, array.shape[0] * 2), Image.NEAREST).save(path)


def _inline_png(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _write_html(result: DiagnosisResult, record: dict, paths: Dict[str, str]) -> None:
    esc = html.escape
    norm, sem, rates = normalized(result.sensitivity), result.sensitivity_sem, result.flip_rates
    rows = "".join(
        f"<tr><td>{esc(a)}</td><td>{result.sensitivity[a]:.4f}</td><td>{sem[a]:.4f}</td>"
        f"<td>{norm[a]:.3f}</td><td>{rates[a]:.3f}</td></tr>"
        for a in result.ranking()
    )
    multi = ""
    if result.multi is not None:
        multi = f"<p>Multi-attribute counterfactuals: flip rate <b>{result.multi_flip_rate:.3f}</b>.</p>"
        if "multi_grid" in paths:
            multi += f'<img alt="multi-attribute counterfactuals" src="{_inline_png(paths["multi_grid"])}">'
    metrics = "".join(f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in result.metrics.items() if k != "decoupling")
    decoupled = _decoupling_html(result.metrics.get("decoupling"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(result.method.upper())} diagnosis of {esc(result.target)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%;image-rendering:pixelated}}</style></head>
<body>
<h1>{esc(result.method.upper())} diagnosis of <code>{esc(result.target)}</code></h1>
<p>Task: {esc(result.task)}; {result.n_images} images; {len(result.attributes)} attributes;
SDAR {result.sdar:.4f}; most sensitive: <b>{esc(result.ranking()[0])}</b>.</p>
<h2>Sensitivity</h2>
<img id="histogram" alt="sensitivity histogram" src="{_inline_png(paths["histogram"])}">
<table><tr><th>attribute</th><th>sensitivity</th><th>s.e.m.</th><th>normalized</th><th>flip rate</th></tr>{rows}</table>
<h2>Counterfactuals</h2>
<p>Each row: the original, then its counterfactual along each attribute ({esc(", ".join(result.attributes))}).</p>
<img alt="counterfactual grid" src="{_inline_png(paths["grid"])}">
{multi}
{decoupled}
<h2>Other measurements</h2><ul>{metrics or "<li>none</li>"}</ul>
<h2>Configuration and versions</h2>
<pre>{esc(json.dumps({"config": record["config"], "versions": record["versions"], "created": record["created"]}, indent=2))}</pre>
</body></html>
"""
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page)


def _decoupling_html(record: Optional[dict]) -> str:
    """The decoupling matrix as a table, each cell shaded by its value (empty without one)."""
    if not record:
        return ""
    esc = html.escape
    top = max([v for row in record["matrix"] for v in row] + [1e-12])
    head = "".join(f"<th>{esc(name)}</th>" for name in record["annotated"])
    body = "".join(
        f"<tr><td>{esc(edit)}</td>" + "".join(
            f'<td style="background:rgba(76,114,176,{0.8 * v / top:.2f})">{v:.3f}</td>' for v in row) + "</tr>"
        for edit, row in zip(record["edited"], record["matrix"])
    )
    summary = ""
    if record.get("diagonal") is not None:
        off = record.get("off_diagonal")
        summary = (f" Mean change of the edited attribute <b>{record['diagonal']:.3f}</b>"
                   + (f", of the others <b>{off:.3f}</b>." if off is not None else "."))
    return (f"<h2>Decoupling of the edits</h2><p>Rows: the attribute each counterfactual edited; columns: "
            f"the mean absolute change of {esc(str(record.get('annotator', 'the annotator')))}'s score of "
            f"each attribute (thesis Fig. 3.6).{summary}</p><table><tr><th>edited</th>{head}</tr>{body}</table>")


COMPARISON_COLOURS = ("#4c72b0", "#dd8452")


def _plot_comparison(results, labels, path: str) -> List[str]:
    """Grouped sensitivity bars of two results over the union of their attributes
    (ordered by the first result's ranking, then the second's); returns that order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(results[0].ranking()) + [a for a in results[1].ranking() if a not in results[0].attributes]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(order) + 2.0), 3.4), dpi=120)
    width = 0.4
    for k, (result, label, colour) in enumerate(zip(results, labels, COMPARISON_COLOURS)):
        sens, sem = result.sensitivity, result.sensitivity_sem
        xs = [i + (k - 0.5) * width for i, a in enumerate(order) if a in sens]
        ax.bar(xs, [sens[a] for a in order if a in sens], width=width, yerr=[sem[a] for a in order if a in sens],
               capsize=2, color=colour, label=f"{label}: {result.method.upper()} of {result.target}")
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=45, ha="right")
    ax.set_ylabel("sensitivity  E|f(x) - f(x̂)|")
    ax.legend(fontsize=8)
    ax.set_title("sensitivity of both runs (bars: s.e.m. over images)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return order


def write_comparison(first: DiagnosisResult, second: DiagnosisResult, directory: str,
                     labels: Sequence[str] = ("A", "B")) -> str:
    """A side-by-side report of two diagnoses (before / after training, SIA vs ZOOM, ...).

    Writes into ``directory``: ``comparison.png`` (grouped sensitivity bars),
    ``comparison.csv`` (per attribute: sensitivity, s.e.m. and flip rate of each run),
    ``comparison.json`` and a self-contained ``index.html`` (images inlined) with both
    runs' bars, flip rates, summary figures, histograms and configurations.

    Args:
        first, second: the two results; their attributes may differ (a missing one is
            shown as ``-``).
        directory: created if needed.
        labels: names of the two runs on the page.

    Returns:
        the path of ``index.html``.
    """
    labels = [str(label) for label in labels]
    if len(labels) != 2:
        raise ValueError(f"labels must name the two runs, got {labels!r}")
    os.makedirs(directory, exist_ok=True)
    results = (first, second)
    bars = os.path.join(directory, "comparison.png")
    order = _plot_comparison(results, labels, bars)
    histograms = []
    for result, label in zip(results, labels):
        path = os.path.join(directory, f"histogram_{len(histograms)}.png")
        _plot_histogram(result, path)
        histograms.append(path)

    def cell(values: Dict[str, float], name: str, fmt: str) -> str:
        return format(values[name], fmt) if name in values else "-"

    per_attribute = []
    for name in order:
        entry = {"attribute": name}
        for label, result in zip(labels, results):
            for key, values in (("sensitivity", result.sensitivity), ("sem", result.sensitivity_sem),
                                ("flip_rate", result.flip_rates)):
                entry[f"{label}.{key}"] = values.get(name)
        per_attribute.append(entry)
    with open(os.path.join(directory, "comparison.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(per_attribute[0]))
        for entry in per_attribute:
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in entry.values()])
    record = {"labels": labels, "runs": [r.summary() for r in results], "configs": [r.config for r in results],
              "attributes": per_attribute}
    with open(os.path.join(directory, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)

    esc = html.escape
    head = "".join(f'<th colspan="3" style="color:{c}">{esc(l)}</th>' for l, c in zip(labels, COMPARISON_COLOURS))
    sub = "<th>sensitivity</th><th>s.e.m.</th><th>flip rate</th>" * 2
    rows = "".join(
        f"<tr><td>{esc(name)}</td>" + "".join(
            f"<td>{cell(r.sensitivity, name, '.4f')}</td><td>{cell(r.sensitivity_sem, name, '.4f')}</td>"
            f"<td>{cell(r.flip_rates, name, '.3f')}</td>" for r in results) + "</tr>"
        for name in order
    )
    summary_rows = "".join(
        f"<tr><td>{esc(title)}</td>" + "".join(f"<td>{esc(value(r))}</td>" for r in results) + "</tr>"
        for title, value in (
            ("method", lambda r: r.method.upper()), ("target", lambda r: r.target), ("task", lambda r: r.task),
            ("images", lambda r: str(r.n_images)), ("most sensitive", lambda r: r.ranking()[0]),
            ("SDAR", lambda r: f"{r.sdar:.4f}"),
            ("multi-attribute flip rate", lambda r: "-" if r.multi_flip_rate is None else f"{r.multi_flip_rate:.3f}"),
        )
    )
    columns = "".join(
        f'<div class="run"><h3 style="color:{c}">{esc(l)}</h3>'
        f'<img alt="sensitivity histogram of {esc(l)}" src="{_inline_png(h)}">'
        f"<h4>Other measurements</h4><pre>{esc(json.dumps(r.metrics, indent=2))}</pre>"
        f"<h4>Configuration</h4><pre>{esc(json.dumps(r.config, indent=2))}</pre></div>"
        for r, l, c, h in zip(results, labels, COMPARISON_COLOURS, histograms)
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Comparison: {esc(labels[0])} vs {esc(labels[1])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}.runs{{display:flex;gap:2em}}.run{{flex:1;min-width:0}}
pre{{white-space:pre-wrap;font-size:85%}}</style></head>
<body>
<h1>{esc(labels[0])} vs {esc(labels[1])}</h1>
<table><tr><th></th><th style="color:{COMPARISON_COLOURS[0]}">{esc(labels[0])}</th>
<th style="color:{COMPARISON_COLOURS[1]}">{esc(labels[1])}</th></tr>{summary_rows}</table>
<h2>Sensitivity</h2>
<img id="comparison" alt="sensitivity of both runs" src="{_inline_png(bars)}">
<table><tr><th rowspan="2">attribute</th>{head}</tr><tr>{sub}</tr>{rows}</table>
<h2>Each run</h2>
<div class="runs">{columns}</div>
</body></html>
"""
    path = os.path.join(directory, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
