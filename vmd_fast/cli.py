"""The ``vmd-fast`` command line.

``vmd-fast diagnose --method zoom|sia --target NAME|PATH|module:factory --attributes "a,b,c"
--n-images N --out DIR`` runs a diagnosis of the embedded world (or of your models) and
prints where its report went; ``vmd-fast attack`` runs SIA, PGD or FGSM on a folder of
images or on rendered faces and writes the adversarial images; ``vmd-fast train
counterfactual|adversarial`` fine-tunes a target; ``vmd-fast report DIR [DIR2]``
re-renders a saved report or compares two; ``vmd-fast zoo list|show|train|check`` and
``vmd-fast bench`` reach the zoo and the kernel benchmarks.

``torchrun --nproc-per-node K -m vmd_fast.cli diagnose|train ...`` (or a multi-node
torchrun rendezvous) runs the same command on K ranks: the diagnosis shards its batches of
images and the training is data-parallel (:mod:`vmd_fast.distributed`), with the result of
one process; rank 0 writes the report or the weights (docs/scale.md).

Models come from the zoo (``smile_classifier``), from ``package.module:factory`` or from
local files (``--target weights.pth --arch resnet50``, ``--generator ffhq.pkl``,
``--clip ViT-B-32.bin --clip-arch ViT-B-32``, ``--editor attgan.pth --editor-attributes
...``); nothing is downloaded.

Errors a person can act on (an unknown attribute or model, a missing file, a target whose
output matches no adapter, a GPU asked for and absent) are one line on stderr and exit
status 2; ``--debug`` shows the trace.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

import torch


class UsageError(Exception):
    """A mistake in the command line's inputs, reported as one line."""


def _device(name: Optional[str]) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asks for a GPU, but torch sees none here")
    return device


def _number(text: str) -> float:
    """A float, or a fraction such as ``8/255`` (budgets are usually written that way)."""
    try:
        if "/" in text:
            num, _, den = text.partition("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a fraction like 8/255") from None


def _split(text: Optional[str]) -> List[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def load_target(spec: str, device: torch.device, args=None) -> torch.nn.Module:
    """The target a zoo name, ``package.module:factory``, a weights file or a training run names."""
    from vmd_fast.io import resolve

    return resolve("target", spec, device, arch=getattr(args, "arch", None),
                   num_classes=getattr(args, "num_classes", None), task=getattr(args, "task", None),
                   label=getattr(args, "label", None))


def _optional(role: str, spec: Optional[str], device, args) -> Optional[torch.nn.Module]:
    """The generator / CLIP / editor the flags name, or ``None`` for the zoo's default."""
    if spec is None:
        return None
    from vmd_fast.io import resolve

    return resolve(role, spec, device, arch=getattr(args, "clip_arch", None),
                   attributes=_split(getattr(args, "editor_attributes", None)))


def _editor(args, device) -> torch.nn.Module:
    from vmd_fast.io import resolve

    return resolve("editor", args.editor or "editor", device, attributes=_split(args.editor_attributes))


def _tokenizer(clip):
    """The tokenizer a CLIP model carries (``clip.tokenizer``), else the package's default."""
    return getattr(clip, "tokenizer", None) if clip is not None else None


def _check_adapter(target, example: torch.Tensor):
    """The target adapter, or a one-line error when the target's output matches none."""
    from vmd_fast.diagnose import adapter_for

    try:
        return adapter_for(target, example=example)
    except ValueError as err:
        raise UsageError(f"--target: {err}") from None


# --- diagnose ---------------------------------------------------------------------------
def cmd_diagnose(args) -> int:
    from vmd_fast import distributed

    # Under torchrun every rank runs this; the diagnosis shards its images, rank 0 reports.
    with distributed.launch(_device(args.device)) as device:
        return _diagnose(args, device)


# Flags that only one diagnosis method reads: given to the other, they are a usage error,
# not silently ignored.
_METHOD_FLAGS = {
    "zoom": (("threshold", "--threshold"), ("max_channels", "--max-channels"), ("cache_dir", "--cache-dir"),
             ("no_decoupling", "--no-decoupling"), ("generator", "--generator"), ("clip", "--clip"),
             ("clip_arch", "--clip-arch")),
    "sia": (("editor", "--editor"), ("editor_attributes", "--editor-attributes")),
}


def _check_method_flags(args) -> None:
    for method, flags in _METHOD_FLAGS.items():
        # "not given" is None, or False for a switch (a 0 that was given counts: --max-channels none)
        given = [flag for name, flag in flags if getattr(args, name, None) is not None
                 and getattr(args, name) is not False]
        if method != args.method and given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{', '.join(given)} {verb} only to --method {method}, not --method {args.method}")


def _max_channels(text: str) -> int:
    """A positive channel count, or ``none`` for no cap (0 here, ``None`` for ZOOM)."""
    if text.strip().lower() == "none":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer or 'none'")
    return value


def _diagnose(args, device: torch.device) -> int:
    from vmd_fast import distributed

    _check_method_flags(args)
    target = load_target(args.target, device, args)
    if args.method == "zoom":
        from vmd_fast import zoom

        generator = _optional("generator", args.generator, device, args)
        clip = _optional("clip", args.clip, device, args)
        if clip is None:  # loaded here, not inside the diagnosis, because the decoupling check scores with it too
            from vmd_fast import zoo

            clip = zoo.load("clip", device=device)
        attributes = _split(args.attributes) or list(zoom.DEFAULT_ATTRIBUTES)
        overrides = {k: v for k, v in (("steps", args.steps), ("seed", args.seed), ("threshold", args.threshold))
                     if v is not None}
        if args.max_channels is not None:
            overrides["max_channels"] = args.max_channels or None
        if args.batch_size is not None:
            overrides["rows_per_batch"] = args.batch_size * len(attributes)
        result = zoom.diagnose(target, attributes, n_images=args.n_images, generator=generator, clip=clip,
                               device=device, cache_dir=args.cache_dir, checkpoint=args.out if args.resume else None,
                               tokenizer=_tokenizer(clip), **overrides)
    else:
        from vmd_fast import sia

        editor = _editor(args, device)
        unknown = [a for a in _split(args.attributes) if a not in editor.attributes]
        if unknown:
            raise UsageError(f"--attributes {unknown} are not attributes of the editor ({', '.join(editor.attributes)})")
        overrides = {"steps": args.steps} if args.steps is not None else {}
        if args.batch_size is not None:
            overrides["batch_size"] = args.batch_size
        result = sia.diagnose(target, n_images=args.n_images, editor=editor, device=device, seed=args.seed or 0, **overrides)
    if not distributed.is_main():
        return 0
    if args.method == "zoom" and not args.no_decoupling:
        # CLIP scores how much each counterfactual changed every attribute (thesis Fig. 3.6).
        result.decoupling(zoom.ClipScorer.for_world(clip, result.attributes, tokenizer=_tokenizer(clip)))
    paths = result.save(args.out)
    top = result.ranking()[0]
    print(f"{args.method.upper()} diagnosis of {result.target}: most sensitive attribute '{top}' "
          f"(sensitivity {result.sensitivity[top]:.4f}); report: {paths['html']}")
    record = result.metrics.get("decoupling")
    if record and record.get("diagonal") is not None:
        print(f"decoupling (CLIP): an edit changes its own attribute by {record['diagonal']:.3f} "
              f"and the others by {record['off_diagonal']:.3f} on average")
    return 0


# --- attack -----------------------------------------------------------------------------
def _attack_inputs(args, editor_attributes: Optional[Sequence[str]]):
    """``(images, names, attributes)`` on the host from --images (and --image-attributes) or
    rendered faces; :func:`cmd_attack` moves them to the device a batch at a time."""
    from vmd_fast.io import images as image_io

    if args.images:
        x, names = image_io.load_image_folder(args.images, size=args.size, limit=args.n_images)
        a = None
        if editor_attributes is not None:
            if not args.image_attributes:
                raise UsageError("--method sia on --images needs --image-attributes CSV (columns: file, "
                                 f"{', '.join(editor_attributes)}) with each image's attributes in [0, 1]")
            a = image_io.read_attribute_table(args.image_attributes, names, editor_attributes)
        return x, names, a
    from vmd_fast.domains import faces

    n = args.n_images or 16
    params = faces.sample_params(n, generator=torch.Generator().manual_seed(args.seed))
    x = faces.render(params).images
    names = [f"world_{i:05d}.png" for i in range(n)]
    a = None
    if editor_attributes is not None:
        unknown = [name for name in editor_attributes if name not in faces.ATTRIBUTES]
        if unknown:
            raise UsageError(f"the editor's attributes {unknown} are not attributes of the embedded world "
                             f"({', '.join(faces.EDITOR_ATTRIBUTES)}); attack your own --images with --image-attributes")
        a = faces.attribute_vector(params, editor_attributes)
    return x, names, a


def cmd_attack(args) -> int:
    from vmd_fast import attacks
    from vmd_fast.diagnose.metrics import psnr
    from vmd_fast.io import images as image_io

    device = _device(args.device)
    target = load_target(args.target, device, args)
    editor = _editor(args, device) if args.method == "sia" else None
    from vmd_fast.io.prefetch import DevicePrefetcher, row_batches

    x, names, a = _attack_inputs(args, editor.attributes if editor is not None else None)
    adapter = _check_adapter(target, x[:1].to(device))
    eps = args.eps if args.eps is not None else (1.5 / 255 if args.method == "sia" else 8 / 255)
    alpha = args.alpha if args.alpha is not None else (0.25 / 255 if args.method == "sia" else 2 / 255)
    steps = args.steps if args.steps is not None else (200 if args.method == "sia" else 10)
    generator = torch.Generator().manual_seed(args.seed)
    adversarial, success, changes = [], [], []
    inputs = (x,) if a is None else (x, a)
    # On CUDA each batch is pinned and copied while the attack on the one before runs.
    for batch in DevicePrefetcher(row_batches(*inputs, batch_size=args.batch_size), device):
        xb, ab = (batch, None) if a is None else batch
        if args.method == "sia":
            from vmd_fast import sia

            result = sia.attack(adapter, xb, ab, editor=editor, eps_x=eps, step=alpha,
                                steps=steps, eps_a=args.eps_attributes, step_attributes=args.step_attributes,
                                generator=generator)
            adv, flipped = result.adversarial, result.success
            changes.append((result.a_T - result.a_0).cpu())
        else:
            if args.method == "fgsm":
                adv = attacks.fgsm(adapter, xb, eps=eps)
            else:
                adv = attacks.pgd(adapter, xb, eps=eps, alpha=alpha, steps=steps, generator=generator)
            with torch.no_grad():
                flipped = adapter.flipped(adapter.outputs(adv), adapter.reference(adapter.outputs(xb)))
        adversarial.append(adv.detach().cpu())
        success.append(flipped.cpu())
    adv = torch.cat(adversarial)
    success = torch.cat(success)
    linf = (adv - x).flatten(1).abs().amax(1).cpu()
    quality = psnr(adv.float(), x.float()).cpu()
    os.makedirs(args.out, exist_ok=True)
    image_dir = os.path.join(args.out, "adversarial")
    image_io.save_images(adv, names, image_dir)
    if args.save_originals:
        image_io.save_images(x, names, os.path.join(args.out, "original"))
    attributes = list(editor.attributes) if editor is not None else []
    rows = []
    for i, name in enumerate(names):
        row = {"file": name, "adversarial": os.path.splitext(name)[0] + ".png", "success": bool(success[i]),
               "linf": float(linf[i]), "psnr": float(quality[i])}
        if changes:
            row["attribute_change"] = {attr: float(v) for attr, v in zip(attributes, torch.cat(changes)[i])}
        rows.append(row)
    config = {"method": args.method, "target": args.target, "eps": eps, "alpha": alpha, "steps": steps,
              "images": args.images or f"embedded world, seed {args.seed}", "n_images": len(names)}
    if args.method == "sia":
        config.update(eps_attributes=args.eps_attributes, step_attributes=args.step_attributes,
                      editor=args.editor or "editor")
    record = {"config": config, "success_rate": float(success.float().mean()), "images": rows}
    json_path, csv_path = os.path.join(args.out, "attack.json"), os.path.join(args.out, "attack.csv")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "adversarial", "success", "linf", "psnr"] + [f"change.{attr}" for attr in attributes])
        for row in rows:
            extra = [f"{row['attribute_change'][attr]:.6g}" for attr in attributes] if changes else []
            writer.writerow([row["file"], row["adversarial"], int(row["success"]), f"{row['linf']:.6g}",
                             f"{row['psnr']:.6g}"] + extra)
    print(f"{args.method.upper()} attack on {len(names)} images: success rate {record['success_rate']:.3f}; "
          f"adversarial images: {image_dir}; per-image results: {csv_path} and {json_path}")
    return 0


# --- train ------------------------------------------------------------------------------
def _world_labels(params, label: str) -> torch.Tensor:
    from vmd_fast.domains import faces

    if label in faces.CATEGORICAL_ATTRIBUTES:
        return getattr(params, label).long()
    if label in faces.BINARY_ATTRIBUTES:
        return faces.attribute_vector(params, [label])[:, 0]
    raise UsageError(f"--label {label!r} is not a binary or categorical attribute of the embedded world "
                     f"({', '.join(faces.BINARY_ATTRIBUTES + tuple(faces.CATEGORICAL_ATTRIBUTES))})")


def _world_dataset(n: int, seed: int, label: str, editor_attributes: Optional[Sequence[str]]):
    from torch.utils.data import TensorDataset

    from vmd_fast.domains import faces

    params = faces.sample_params(n, generator=torch.Generator().manual_seed(seed))
    x, y = faces.render(params).images, _world_labels(params, label)
    if editor_attributes is None:
        return TensorDataset(x, y)
    return TensorDataset(x, y, faces.attribute_vector(params, editor_attributes))


def cmd_train(args) -> int:
    from vmd_fast import distributed

    # Under torchrun every rank runs this; training is data-parallel, rank 0 writes.
    with distributed.launch(_device(args.device)) as device:
        return _train(args, device)


def _train(args, device: torch.device) -> int:
    from dataclasses import asdict

    from safetensors.torch import save_file

    from vmd_fast import __version__, distributed, train
    from vmd_fast.diagnose import target_label, target_name
    from vmd_fast.io.models import TRAINED_RECORD

    checkpoint = os.path.join(args.out, "checkpoint")
    if os.path.exists(os.path.join(checkpoint, "train-state.json")) and not args.resume:
        raise UsageError(f"--out {args.out!r} holds an earlier training run; pass --resume to continue it or choose another --out")
    target = load_target(args.target, device, args)
    if not any(p.is_floating_point() for p in target.parameters()):
        raise UsageError(f"--target {args.target!r} has no parameters to train")
    label = args.label or target_label(target)
    if label is None:
        raise UsageError("--label: the target does not say which attribute it classifies; name one of the world's attributes")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    editor = None
    if args.kind == "adversarial" and args.attack != "pgd":
        editor = _editor(args, device)
    train_data = _world_dataset(args.n_train, args.seed or 0, label, editor.attributes if editor is not None else None)
    eval_data = _world_dataset(args.n_eval, (args.seed or 0) + 1_000_003, label, None) if args.n_eval else None
    _check_adapter(target, train_data.tensors[0][:1].to(device))
    if args.kind == "adversarial":
        if args.steps is not None:
            overrides["attack_steps"] = args.steps
        model, history = train.adversarial(target, train_data, attack=args.attack, editor=editor, eval_data=eval_data,
                                           checkpoint=checkpoint, device=device, **overrides)
    else:
        attributes = _split(args.attributes)
        if not attributes:
            raise UsageError("--attributes: counterfactual training needs the attribute prompts to edit, e.g. 'a hat,a beard'")
        if args.steps is not None:
            overrides["zoom_steps"] = args.steps
        if args.counterfactual_labels is not None:
            overrides["counterfactual_labels"] = args.counterfactual_labels
        generator = _optional("generator", args.generator, device, args)
        clip = _optional("clip", args.clip, device, args)
        model, history = train.counterfactual(target, train_data, attributes, generator=generator, clip=clip,
                                              eval_data=eval_data, checkpoint=checkpoint, device=device,
                                              tokenizer=_tokenizer(clip), **overrides)
    if not distributed.is_main():
        return 0
    weights = os.path.join(args.out, "model.safetensors")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights)
    record = {
        "method": args.kind, "attack": args.attack if args.kind == "adversarial" else None,
        "target": {"spec": args.target, "name": target_name(target), "arch": args.arch, "num_classes": args.num_classes,
                   "task": args.task, "label": args.label},
        "label": label, "attributes": _split(args.attributes), "n_train": args.n_train, "n_eval": args.n_eval,
        "config": asdict(train.TrainConfig(**overrides)), "history": history.epochs,
        "versions": {"vmd_fast": __version__, "torch": torch.__version__},
    }
    record_path = os.path.join(args.out, TRAINED_RECORD)
    with open(record_path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    last = ", ".join(f"{k} {v:.4f}" for k, v in history.last().items())
    print(f"{args.kind} training of {target_name(target)}: {len(history.epochs)} epoch(s), last: {last}; "
          f"weights: {weights}; history: {record_path}; diagnose it with --target {args.out}")
    return 0


# --- report -----------------------------------------------------------------------------
def cmd_report(args) -> int:
    from vmd_fast.diagnose import DiagnosisResult
    from vmd_fast.diagnose.result import write_comparison

    directories = [args.directory] + ([args.other] if args.other else [])
    results = []
    for directory in directories:
        if not os.path.isdir(directory):
            raise UsageError(f"{directory!r} is not a directory")
        try:
            results.append(DiagnosisResult.load(directory))
        except FileNotFoundError as err:
            raise UsageError(str(err)) from None
    if len(results) == 1:
        paths = results[0].save(args.out or args.directory)
        print(f"report: {paths['html']}")
        return 0
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.directory)),
                                   f"compare_{os.path.basename(os.path.normpath(args.directory))}"
                                   f"_vs_{os.path.basename(os.path.normpath(args.other))}")
    labels = _split(args.labels) or [os.path.basename(os.path.normpath(d)) for d in directories]
    if len(labels) != 2:
        raise UsageError(f"--labels needs two names, got {labels}")
    path = write_comparison(results[0], results[1], out, labels=labels)
    print(f"comparison: {path}")
    return 0


# --- zoo, bench -------------------------------------------------------------------------
def zoo_show(name: str, as_json: bool = False) -> str:
    """The metadata and metrics of zoo asset ``name`` as text (or its JSON)."""
    from vmd_fast import zoo
    from vmd_fast.zoo.assets import failed_checks, flatten_metrics

    known = [info["name"] for info in zoo.list()]
    if name not in known:
        from vmd_fast.zoo.registry import recipes

        if name in recipes():
            raise UsageError(f"zoo model {name!r} has a recipe but no shipped weights; "
                             f"train it with `vmd-fast zoo train {name}`")
        raise UsageError(f"{name!r} is not a zoo model ({', '.join(known)})")
    info = zoo.read_info(name)
    if as_json:
        return json.dumps(info, indent=2)
    failures = failed_checks(info.get("metrics", {}), {m: tuple(c) for m, c in info.get("checks", {}).items()})
    lines = [f"{name}: {info.get('description', info['kind'])}",
             f"  kind: {info['kind']}; task: {info.get('task', '-')}; labels: {', '.join(info.get('labels', [])) or '-'}"]
    if info.get("bias"):
        bias = info["bias"]
        lines.append(f"  planted bias: P({bias['spurious']} = {bias['label']}) = {bias['p']}")
    if info.get("twin_of"):
        lines.append(f"  balanced twin of: {info['twin_of']}")
    lines.append("  metrics: " + ", ".join(f"{k} = {v:.4g}" for k, v in flatten_metrics(info["metrics"]).items()))
    checks = ", ".join(f"{m} {op} {t}" for m, (op, t) in info.get("checks", {}).items())
    lines.append(f"  checks: {checks or '-'} [{'met' if not failures else 'NOT MET: ' + '; '.join(failures)}]")
    training = info.get("training", {})
    lines.append(f"  training: seed {info.get('seed')}, {training.get('seconds', '?')} s, "
                 f"{training.get('steps', '?')} steps; torch {info.get('torch')}, vmd_fast {info.get('vmd_fast')}")
    lines.append(f"  weights: {info['bytes'] / 1e3:.0f} kB, sha256 {info['sha256']}")
    lines.append("  config: " + json.dumps(info.get("config", {}), sort_keys=True))
    return "\n".join(lines)


def cmd_zoo(args) -> int:
    if args.rest[:1] == ["show"]:
        show = argparse.ArgumentParser(prog="vmd-fast zoo show", description="metadata and metrics of a zoo model")
        show.add_argument("name")
        show.add_argument("--json", action="store_true", help="print the asset's JSON")
        options = show.parse_args(args.rest[1:])
        print(zoo_show(options.name, options.json))
        return 0
    from vmd_fast.zoo import __main__ as zoo_main

    return zoo_main.main(args.rest) or 0


def cmd_bench(args) -> int:
    from vmd_fast import bench

    return bench.main(args.rest) or 0


# --- the parser -------------------------------------------------------------------------
def _add_model_flags(p, roles: Sequence[str]) -> None:
    p.add_argument("--target", default="smile_classifier",
                   help="zoo name, package.module:factory, a weights file (with --arch) or a `vmd-fast train` output directory")
    p.add_argument("--arch", help="architecture of a --target weights file: torchvision name (resnet50) or timm:NAME")
    p.add_argument("--num-classes", type=int, help="outputs of a --target weights file's head (default: from the weights)")
    p.add_argument("--task", help="the target's task: binary, multiclass, attributes, keypoints, segmentation (default: inferred)")
    p.add_argument("--label", help="the attribute a binary target classifies (e.g. smiling)")
    if "generator" in roles:
        p.add_argument("--generator", help="zoo name, module:factory or a StyleGAN2-ADA .pkl (default: the zoo's)")
    if "clip" in roles:
        p.add_argument("--clip", help="zoo name, module:factory or an open_clip checkpoint (with --clip-arch)")
        p.add_argument("--clip-arch", help="open_clip architecture of a --clip file (e.g. ViT-B-32)")
    if "editor" in roles:
        p.add_argument("--editor", help="zoo name, module:factory or an AttGAN checkpoint (with --editor-attributes)")
        p.add_argument("--editor-attributes", help="comma-separated attributes of an AttGAN --editor, in its order")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmd-fast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full trace of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    diag = sub.add_parser("diagnose", help="find the attributes a model is sensitive to (SIA or ZOOM)")
    diag.add_argument("--method", choices=("zoom", "sia"), default="zoom")
    _add_model_flags(diag, ("generator", "clip", "editor"))
    diag.add_argument("--attributes", help="comma-separated attribute prompts (ZOOM) or editor attributes (SIA)")
    diag.add_argument("--n-images", type=int, default=32)
    diag.add_argument("--steps", type=int, help="optimisation steps (default: the method's)")
    diag.add_argument("--batch-size", type=int, help="images optimised together (default: SIA 64; ZOOM 256 rows / attributes)")
    diag.add_argument("--threshold", type=_number,
                      help="ZOOM: lambda of the edit directions, |M dt| >= lambda (default 0.05)")
    diag.add_argument("--max-channels", type=_max_channels,
                      help="ZOOM: keep at most N style channels per edit direction, or 'none' (default 64)")
    diag.add_argument("--out", default="outputs/diagnosis", help="report directory")
    diag.add_argument("--cache-dir", default=None, help="where ZOOM caches relevance matrices")
    diag.add_argument("--resume", action="store_true", help="checkpoint into --out and resume from it")
    diag.add_argument("--no-decoupling", action="store_true",
                      help="ZOOM: skip scoring the counterfactuals' attribute changes with CLIP (thesis Fig. 3.6)")
    diag.set_defaults(func=cmd_diagnose)

    attack = sub.add_parser("attack", help="SIA, PGD or FGSM on a folder of images or on rendered faces")
    attack.add_argument("--method", choices=("sia", "pgd", "fgsm"), default="pgd")
    _add_model_flags(attack, ("editor",))
    attack.add_argument("--images", help="a folder of images (default: faces rendered from the embedded world)")
    attack.add_argument("--image-attributes", help="CSV (file, one column per editor attribute) for SIA on --images")
    attack.add_argument("--size", type=int, help="resize --images to SIZE x SIZE")
    attack.add_argument("--n-images", type=int, help="rendered faces (default 16), or the first N of --images")
    attack.add_argument("--eps", type=_number, help="L_inf image budget (default: 8/255; SIA 1.5/255)")
    attack.add_argument("--alpha", type=_number, help="step size (default: 2/255; SIA 0.25/255)")
    attack.add_argument("--eps-attributes", type=_number, default=1.0, help="SIA's attribute budget eps_a")
    attack.add_argument("--step-attributes", type=_number,
                        help="SIA's step for the attributes (default: --alpha; they move at most steps x step)")
    attack.add_argument("--steps", type=int, help="steps (default: PGD 10, SIA 200)")
    attack.add_argument("--batch-size", type=int, default=64)
    attack.add_argument("--save-originals", action="store_true", help="also write the inputs as PNG")
    attack.add_argument("--out", default="outputs/attack", help="output directory")
    attack.set_defaults(func=cmd_attack)

    tr = sub.add_parser("train", help="counterfactual or adversarial fine-tuning of a target on rendered faces")
    tr.add_argument("kind", choices=("counterfactual", "adversarial"))
    _add_model_flags(tr, ("generator", "clip", "editor"))
    tr.add_argument("--attack", choices=("sia", "pgd", "spt"), default="pgd", help="adversarial: the attack")
    tr.add_argument("--attributes", help="counterfactual: comma-separated attribute prompts to edit")
    tr.add_argument("--counterfactual-labels", choices=("prediction", "probability"), default=None,
                    help="counterfactual: fit each counterfactual to the original prediction's class (default) "
                         "or its probabilities")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--steps", type=int, help="attack steps (adversarial) or ZOOM steps (counterfactual) per batch")
    tr.add_argument("--n-train", type=int, default=512, help="rendered training faces")
    tr.add_argument("--n-eval", type=int, default=256, help="rendered faces for the accuracy per epoch (0: none)")
    tr.add_argument("--out", default="outputs/train", help="output directory (weights, history, checkpoint)")
    tr.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    tr.set_defaults(func=cmd_train)

    report = sub.add_parser("report", help="re-render a saved report, or compare two")
    report.add_argument("directory")
    report.add_argument("other", nargs="?", help="a second report: write a side-by-side comparison")
    report.add_argument("--labels", help="comma-separated names of the two runs in a comparison")
    report.add_argument("--out", help="where to write the page (default: in place; comparisons next to DIRECTORY)")
    report.set_defaults(func=cmd_report)

    for name, func, text in (("zoo", cmd_zoo, "the model zoo: list, show NAME, train, check"),
                             ("bench", cmd_bench, "benchmark the fused kernels")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def _user_errors() -> tuple:
    """Exceptions that describe a mistake in the inputs (shown as one line)."""
    errors = (UsageError, FileNotFoundError, ValueError)
    try:
        from vmd_fast.zoo import AssetError

        errors += (AssetError,)
    except ImportError:
        pass
    return errors


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except _user_errors() as err:
        if args.debug:
            raise
        message = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
        print(f"vmd-fast: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
