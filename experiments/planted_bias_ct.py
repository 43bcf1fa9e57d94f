"""Counterfactual training on a planted-bias classifier (thesis 3.3.5 and 3.4.2).

The zoo's planted-bias classifier (default ``smile_bias_hat``: a smile classifier trained
where the hat agrees with the smile 95% of the time) is counterfactually trained
(:func:`vmd_fast.train.counterfactual`) on renders of the same biased distribution, mixed
with ZOOM counterfactuals along every world attribute but its label. Before and after:

* ZOOM's sensitivity to the planted attribute (thesis Eq. 3.5, ``E |f(x) - f(x_hat)|``)
  and its rank among the attributes, on held-out generator samples;
* the renderer's ground truth: how often flipping only the planted attribute of a fresh
  render flips the prediction;
* accuracy per group (label x planted attribute) on a fresh set with the four groups
  equally large, and the worst group's.

A control fine-tunes on the same renders with no counterfactuals, so that what CT adds
can be told from what more training on the biased data does. The relation: CT lowers
the planted attribute's sensitivity and raises the worst-group accuracy.

Run: ``python -m experiments.planted_bias_ct [--size small] [--assets DIR]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from experiments import common
from vmd_fast import train, zoom
from vmd_fast.domains import faces
from vmd_fast.zoo.metrics import group_accuracies

NAME = "planted_bias_ct"


@dataclass
class Settings:
    """Sizes of one run (see :class:`experiments.table_3_3_counterfactual_training.Settings`).

    Args:
        n_groups: fresh renders of the group evaluation (a quarter per group).
    """

    n_train: int
    n_groups: int
    n_diagnose: int
    diagnose_steps: int
    epochs: int
    batch_size: int
    lr: float
    n_generated: int
    train_zoom_steps: int
    relevance_images: int


SIZES = {
    "small": Settings(n_train=64, n_groups=128, n_diagnose=2, diagnose_steps=10, epochs=1, batch_size=32, lr=1e-4,
                      n_generated=8, train_zoom_steps=5, relevance_images=2),
    "default": Settings(n_train=2048, n_groups=2000, n_diagnose=16, diagnose_steps=50, epochs=1, batch_size=64,
                        lr=1e-4, n_generated=32, train_zoom_steps=20, relevance_images=2),
}


def _extra(parser):
    parser.add_argument("--target", default="smile_bias_hat", help="zoo planted-bias classifier (default: %(default)s)")
    common.add_ct_labels_argument(parser)
    common.add_ct_schedule_arguments(parser)


def measure(model, label: str, planted: str, groups, prompts, generator, clip, rel, s: Settings, args) -> dict:
    """ZOOM sensitivities, the renderer's flip rate of the planted attribute, group accuracies."""
    params, images = groups
    logits = common.predict(model, images, device=args.device)
    truth, spurious = getattr(params, label), getattr(params, planted)
    out = group_accuracies((logits > 0).float() == truth, truth, spurious)
    out["accuracy"] = float(((logits > 0).float() == truth).float().mean())
    flipped = params.replace(**{planted: 1.0 - spurious})
    flipped_logits = common.predict(model, faces.render(flipped).images, device=args.device)
    out["renderer_flip_rate"] = float(((logits > 0) != (flipped_logits > 0)).float().mean())
    result = zoom.diagnose(model, list(prompts.values()), n_images=s.n_diagnose, generator=generator, clip=clip,
                           relevance=rel, steps=s.diagnose_steps, multi=False, seed=args.seed + 10_000,
                           device=args.device, progress=args.progress, tokenizer=common.tokenizer_for(clip),
                           cuda_graph=False)
    by_attribute = {attribute: result.sensitivity[prompt] for attribute, prompt in prompts.items()}
    out["zoom_sensitivity"] = by_attribute
    ranking = sorted(by_attribute, key=by_attribute.get, reverse=True)
    out["zoom_rank"] = ranking.index(planted) + 1
    return out


def charts(measurements: dict) -> list:
    """ZOOM's sensitivity histogram of the biased, the control and the CT model."""
    models = measurements["models"]
    attributes = list(next(iter(models.values()))["zoom_sensitivity"])
    return [common.Chart("zoom_sensitivity.png", f"ZOOM sensitivities, planted: {measurements['bias']['spurious']}",
                         "sensitivity", attributes,
                         {m: [models[m]["zoom_sensitivity"][a] for a in attributes] for m in models})]


def experiment(argv: Optional[Sequence[str]] = None) -> dict:
    args = common.parse_args(NAME, __doc__.splitlines()[0], argv, _extra)
    started = time.time()
    s = common.with_schedule(SIZES[args.size], args)
    common.seed_everything(args.seed)
    assets = common.load_assets([args.target, "generator", "clip"], args.assets, args.device)
    biased, generator, clip = assets[args.target], assets["generator"], assets["clip"]
    bias = biased.zoo_info["bias"]
    label, planted = bias["label"], bias["spurious"]
    correlations = biased.zoo_info["config"].get("correlations", [(label, planted, bias["p"])])
    prompts = common.world_prompts(exclude=[label])
    train_set = common.render_set(common.sample_faces(s.n_train, args.seed + 2, correlations), label, [label])
    params = common.balanced_faces(s.n_groups, args.seed + 1, [label, planted])
    groups = (params, faces.render(params).images)
    rel = common.relevance(generator, clip, args, s.relevance_images)

    def evaluate(model):
        return measure(model, label, planted, groups, prompts, generator, clip, rel, s, args)

    rows = {"biased": evaluate(biased)}
    control = common.finetune(common.trainable_copy(biased), train_set, s.epochs, s.lr, s.batch_size, args.seed,
                              args.progress, device=args.device, desc="fine-tune (control)")
    rows["fine-tuned, no counterfactuals"] = evaluate(control)
    ct, history = train.counterfactual(
        common.trainable_copy(biased), train_set, list(prompts.values()), generator=generator, clip=clip,
        relevance=rel, device=args.device, progress=args.progress, tokenizer=common.tokenizer_for(clip),
        epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, n_generated=s.n_generated,
        zoom_steps=s.train_zoom_steps, seed=args.seed, counterfactual_labels=args.ct_labels)
    rows["CT"] = evaluate(ct)

    columns = list(rows)
    table = [
        [f"ZOOM sensitivity to '{prompts[planted]}'"] + [rows[c]["zoom_sensitivity"][planted] for c in columns],
        [f"its rank among {len(prompts)} attributes"] + [rows[c]["zoom_rank"] for c in columns],
        [f"renderer: flipping only {planted} flips the prediction (%)"]
        + [common.percent(rows[c]["renderer_flip_rate"]) for c in columns],
        ["accuracy, balanced groups (%)"] + [common.percent(rows[c]["accuracy"]) for c in columns],
    ]
    for l in (0, 1):
        for p in (0, 1):
            key = f"label={l},spurious={p}"
            table.append([f"accuracy {label}={l}, {planted}={p} (%)"] + [common.percent(rows[c][key]) for c in columns])
    table.append(["worst-group accuracy (%)"] + [common.percent(rows[c]["worst_group_accuracy"]) for c in columns])
    before, after = rows["biased"], rows["CT"]
    relation = common.Relation(
        statement=f"counterfactual training lowers the planted attribute's ({planted}) sensitivity and raises the "
                  "worst-group accuracy",
        rule=f"CT's ZOOM sensitivity to '{prompts[planted]}' < the biased model's and its worst-group accuracy > "
             "the biased model's",
        holds=after["zoom_sensitivity"][planted] < before["zoom_sensitivity"][planted]
        and after["worst_group_accuracy"] > before["worst_group_accuracy"],
        evidence=f"sensitivity {before['zoom_sensitivity'][planted]:.4f} -> {after['zoom_sensitivity'][planted]:.4f}, "
                 f"worst-group accuracy {100 * before['worst_group_accuracy']:.2f} -> "
                 f"{100 * after['worst_group_accuracy']:.2f} %")
    summary = (f"Target `{args.target}`: `{label}` trained where P({planted} = {label}) = {bias['p']}. CT and the "
               f"control: {s.epochs} epoch(s) on {s.n_train} renders of that biased distribution, lr {s.lr:g}; CT "
               f"adds {s.n_generated} counterfactuals of {s.train_zoom_steps} ZOOM steps per batch along "
               f"{len(prompts)} attributes, labelled with the biased model's {common.CT_LABELS[args.ct_labels]}. ZOOM sensitivities on {s.n_diagnose} held-out generator samples, "
               f"{s.diagnose_steps} steps; groups: {len(params)} fresh renders, a quarter per group.")
    common.write_results(args, f"Counterfactual training on a planted bias ({args.target})", summary,
                         [("Before and after.", ["Metric"] + columns, table)], [relation],
                         {"assets": common.describe_assets(assets), "models": rows, "ct_history": history.epochs,
                          "prompts": prompts, "bias": bias}, s, started,
                         charts=charts)
    return {"rows": rows, "relation": relation}


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main(experiment, argv)


if __name__ == "__main__":
    raise SystemExit(main())
