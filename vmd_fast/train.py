"""Fixing what a diagnosis found: counterfactual training (thesis 3.3.5) and adversarial
fine-tuning with SIA, PGD or SPT examples (thesis 2.4.5).

Both keep the usual supervised loss on real data and add a loss on examples generated on
the fly, against the model being trained, with the fused ops:

* :func:`counterfactual`: ``theta* = argmin CE(f(x_hat), f_0(x))`` where ``x_hat`` is a ZOOM
  multi-attribute counterfactual of a generated image ``x`` and ``f_0`` the model before
  training (its prediction is the label the counterfactual must not change);
* :func:`adversarial`: CE of the true label on adversarial examples of the real batch.

Under ``torchrun`` (:mod:`torch.distributed` initialised) both train with
:class:`~torch.nn.parallel.DistributedDataParallel`. The data order comes from a
:class:`DistributedSampler` on one process as on W (epoch e's permutation is seeded with
``seed + e``) and rank r takes every W-th index of it, so the ranks' batches of
``batch_size / W`` together are the single process's batch of ``batch_size``; the
generated examples of a batch are split between the ranks. With ``len(train_data)`` and
``n_generated`` multiples of W this is the single-process run up to the float rounding of
the gradient all-reduce (PGD's random start is drawn per rank, so PGD training is the
same run in distribution only).

Training checkpoints after every epoch (model, optimiser, history) and resumes from it;
a :class:`History` of per-epoch metrics comes back with the model. Checkpoints are
safetensors and JSON, plus the optimiser state read with ``torch.load(weights_only=True)``
(a restricted unpickler: nothing in the file is executed).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from vmd_fast import attacks, distributed, ops, sia, zoom
from vmd_fast.diagnose.targets import adapter_for, target_label
from vmd_fast.io.prefetch import DevicePrefetcher


COUNTERFACTUAL_LABELS = ("prediction", "probability")


@dataclass
class TrainConfig:
    """Settings shared by both trainers.

    Args:
        epochs, batch_size, lr, weight_decay: the optimisation (Adam); ``batch_size`` is
            the global batch (split between the ranks under ``torchrun``).
        generated_weight: weight of the loss on generated examples against the real loss.
        seed: seeds the data order and the generated examples.
        zoom_steps, zoom_lr, zoom_eps, n_generated: counterfactual search per batch
            (``n_generated`` images, multi-attribute, thesis eta = 0.2, eps = 30).
        zoom_threshold, zoom_max_channels: how the counterfactuals' edit directions are
            built, as in diagnosis (:class:`vmd_fast.zoom.ZoomConfig`'s ``threshold`` and
            ``max_channels``), so that training fixes what the diagnosis found.
        attack_steps: steps of the SIA / PGD / SPT attack per batch.
        counterfactual_labels: what counterfactual training fits a counterfactual to: the
            original model's predicted class of the unedited image (``"prediction"``, the
            thesis's "original predictions as labels", Eq. 3.12) or its probabilities
            (``"probability"``, which keeps an unsure prediction unsure).
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    generated_weight: float = 1.0
    seed: int = 0
    zoom_steps: int = 10
    zoom_lr: float = 0.2
    zoom_eps: float = 30.0
    zoom_threshold: float = zoom.ZoomConfig.threshold  # the diagnosis's defaults, not copies
    zoom_max_channels: Optional[int] = zoom.ZoomConfig.max_channels
    n_generated: int = 32
    attack_steps: int = 20
    counterfactual_labels: str = "prediction"

    def __post_init__(self):
        if self.counterfactual_labels not in COUNTERFACTUAL_LABELS:
            raise ValueError(f"counterfactual_labels must be one of {COUNTERFACTUAL_LABELS}, "
                             f"got {self.counterfactual_labels!r}")
        if not isinstance(self.zoom_threshold, (int, float)) or not self.zoom_threshold >= 0:
            raise ValueError(f"zoom_threshold must be a number >= 0, got {self.zoom_threshold!r}")
        zoom.check_max_channels(self.zoom_max_channels, "zoom_max_channels")


@dataclass
class History:
    """Per-epoch metrics (``epochs[i]`` is a dict of floats) of a training run."""

    epochs: List[Dict[str, float]] = field(default_factory=list)

    def last(self) -> Dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _unpack(batch):
    if isinstance(batch, dict):
        return batch["image"], batch["label"], batch.get("attributes")
    if len(batch) == 3:
        return batch
    return batch[0], batch[1], None


def supervised_loss(model: nn.Module, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE for the model's task: BCE for one logit (labels 0/1 or probabilities), CE for
    (N, K) logits (class indices or (N, K) probabilities)."""
    task = getattr(model, "task", None) or ("binary" if outputs.shape[-1] == 1 else "multiclass")
    if task == "binary":
        return F.binary_cross_entropy_with_logits(outputs.reshape(-1).float(), labels.reshape(-1).float())
    if task in ("multiclass",):
        if labels.dim() == 2:
            return -(labels * outputs.float().log_softmax(dim=1)).sum(dim=1).mean()
        return F.cross_entropy(outputs.float(), labels.long())
    if task == "attributes":
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float())
    raise ValueError(f"training supports binary, multiclass and attributes targets, got task {task!r}")


def soft_labels(model: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """The prediction as a training target: probabilities (sigmoid or softmax)."""
    task = getattr(model, "task", None) or ("binary" if outputs.shape[-1] == 1 else "multiclass")
    return torch.sigmoid(outputs.float()) if task in ("binary", "attributes") else outputs.float().softmax(dim=1)


def predicted_labels(model: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """The predicted class as a training target, in :func:`soft_labels`'s shape (0/1 or one-hot)."""
    probabilities = soft_labels(model, outputs)
    if probabilities.shape[-1] == 1 or getattr(model, "task", None) == "attributes":
        return (probabilities > 0.5).float()
    return F.one_hot(probabilities.argmax(dim=1), probabilities.shape[1]).float()


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 256, device=None) -> float:
    """Top-1 accuracy (thresholded at 0.5 for one logit) of ``model`` on ``data``."""
    device = device or next(model.parameters()).device
    correct = total = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size):
            x, y, _ = _unpack(batch)
            out = model(x.to(device))
            pred = (out.reshape(-1) > 0).long() if out.shape[-1] == 1 else out.argmax(dim=1)
            correct += int((pred.cpu() == y.reshape(-1).long()).sum())
            total += y.shape[0]
    model.train(was_training)
    return correct / max(total, 1)


class _Checkpointer:
    """Every rank resumes from the checkpoint; only rank 0 writes it."""

    def __init__(self, directory: Optional[str]):
        self.directory = directory
        if directory and distributed.is_main():
            os.makedirs(directory, exist_ok=True)

    def load(self, model: nn.Module, optimiser: torch.optim.Optimizer, config: dict):
        from safetensors.torch import load_file

        if not self.directory or not os.path.exists(os.path.join(self.directory, "train-state.json")):
            return 0, History()
        with open(os.path.join(self.directory, "train-state.json"), encoding="utf-8") as f:
            state = json.load(f)
        # The number of epochs may grow (train longer); everything else must match.
        if {k: v for k, v in state["config"].items() if k != "epochs"} != {k: v for k, v in config.items() if k != "epochs"}:
            raise ValueError(f"the checkpoint in {self.directory!r} was made with other settings; use another directory")
        model.load_state_dict(load_file(os.path.join(self.directory, "model.safetensors")))
        optimiser.load_state_dict(torch.load(os.path.join(self.directory, "optimiser.pt"), weights_only=True))
        return state["epoch"], History(state["history"])

    def save(self, model, optimiser, config: dict, epoch: int, history: History) -> None:
        from safetensors.torch import save_file

        if not self.directory or not distributed.is_main():
            return
        path = lambda name: os.path.join(self.directory, name)  # noqa: E731
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path("model.safetensors.tmp"))
        torch.save(optimiser.state_dict(), path("optimiser.pt.tmp"))
        with open(path("train-state.json.tmp"), "w", encoding="utf-8") as f:
            json.dump({"epoch": epoch, "history": history.epochs, "config": config}, f)
        for name in ("model.safetensors", "optimiser.pt", "train-state.json"):
            os.replace(path(name + ".tmp"), path(name))


def _fit(model, train_data, config: TrainConfig, make_generated, eval_fn, checkpoint, device, progress, desc, run_config):
    world = distributed.get_world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of the number of ranks ({world})")
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    store = _Checkpointer(checkpoint)
    start_epoch, history = store.load(model, optimiser, run_config)
    # DDP averages the ranks' gradients; make_generated and attacks use the bare model.
    net = model
    if distributed.is_distributed():
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    for epoch in range(start_epoch, config.epochs):
        # One sampler for one process and for many: the permutation of epoch e is seeded with
        # seed + e, and rank r takes every W-th index of it.
        sampler = DistributedSampler(train_data, num_replicas=world, rank=distributed.get_rank(), shuffle=True,
                                     seed=config.seed, drop_last=False)
        sampler.set_epoch(epoch)
        # On a GPU the batches come from pinned memory, each copied while the one before trains.
        loader = DevicePrefetcher(DataLoader(train_data, batch_size=config.batch_size // world, sampler=sampler,
                                             pin_memory=device.type == "cuda"), device)
        totals = {"loss_real": 0.0, "loss_generated": 0.0}
        batches = 0
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{config.epochs}", disable=not (progress and distributed.is_main()))
        for step, batch in enumerate(bar):
            x, y, a = _unpack(batch)
            generated = make_generated(model, x, y, a, epoch * 100003 + step)
            model.train()
            loss_real = supervised_loss(model, net(x), y)
            loss = loss_real
            if generated is not None:
                gx, gy = generated
                loss_generated = supervised_loss(model, net(gx), gy)
                loss = loss + config.generated_weight * loss_generated
                totals["loss_generated"] += float(loss_generated.detach())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            totals["loss_real"] += float(loss_real.detach())
            batches += 1
        metrics = distributed.all_reduce_mean({k: v / max(batches, 1) for k, v in totals.items()})
        metrics.update(eval_fn(model))
        history.epochs.append(metrics)
        store.save(model, optimiser, run_config, epoch + 1, history)
    model.eval()
    return model, history


def counterfactual(
    model: nn.Module,
    train_data: Dataset,
    attributes: Sequence[str],
    generator: Optional[nn.Module] = None,
    clip: Optional[nn.Module] = None,
    config: Optional[TrainConfig] = None,
    eval_data: Optional[Dataset] = None,
    relevance: Optional[Dict[str, torch.Tensor]] = None,
    checkpoint: Optional[str] = None,
    device=None,
    progress: bool = True,
    tokenizer=None,
    **overrides,
):
    """Counterfactual training (thesis 3.3.5) of a binary or multi-class classifier.

    Each batch of real data is paired with ``n_generated`` generator images whose ZOOM
    multi-attribute counterfactuals (along ``attributes``, against the model as it is now)
    are labelled with the *original* model's prediction of the unedited image (its class,
    or its probabilities with ``counterfactual_labels="probability"``). Under
    ``torchrun`` each rank searches its block of the ``n_generated`` latents.

    Returns:
        ``(model, History)``; the history holds the real and counterfactual losses and,
        with ``eval_data``, the accuracy per epoch.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
    if cfg.n_generated % distributed.get_world_size():
        raise ValueError(f"n_generated ({cfg.n_generated}) must be a multiple of the number of ranks "
                         f"({distributed.get_world_size()})")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if generator is None or clip is None:
        from vmd_fast import zoo

        generator = generator if generator is not None else zoo.load("generator", device=device)
        clip = clip if clip is not None else zoo.load("clip", device=device)
    if relevance is None:
        relevance = zoom.relevance_matrix(generator, clip, progress=progress)
    ds = zoom.global_directions(relevance, zoom.text_directions(clip, list(attributes), tokenizer=tokenizer),
                                cfg.zoom_threshold, cfg.zoom_max_channels)
    frozen = copy.deepcopy(model).to(device).eval().requires_grad_(False)
    zcfg = zoom.ZoomConfig(steps=cfg.zoom_steps, lr=cfg.zoom_lr, eps=cfg.zoom_eps, gamma=0.0)

    def make_generated(current, x, y, a, seed):
        current.eval()
        current.requires_grad_(False)  # the search differentiates w.r.t. w only
        g = torch.Generator().manual_seed(cfg.seed * 7919 + seed)
        rows = distributed.shard(cfg.n_generated)  # all latents are drawn, so each is the single-process one
        z = torch.randn(cfg.n_generated, generator.z_dim, generator=g)[rows.start : rows.stop].to(device)
        with torch.no_grad():
            s0 = generator.flatten_styles(generator.mapping_to_styles(z))
            x0 = generator.synthesize(generator.unflatten_styles(s0))
            label = (predicted_labels if cfg.counterfactual_labels == "prediction" else soft_labels)(frozen, frozen(x0))
        adapter = adapter_for(current, example=x0)
        with torch.no_grad():
            ref = adapter.reference(adapter.outputs(x0))
        search = zoom._Search(generator, adapter, ref, ops.SSIMReference(x0), clip, None, zcfg, s0,
                              ds[None].expand(len(z), *ds.shape).contiguous(), None)
        search.run(0, cfg.zoom_steps, use_graph=False)
        with torch.no_grad():
            counterfactuals = search.images(search.w)
        current.requires_grad_(True)
        return counterfactuals, (label.reshape(-1) if label.shape[-1] == 1 else label)

    def evaluate(current):
        return {"accuracy": accuracy(current, eval_data, device=device)} if eval_data is not None else {}

    run_config = {"method": "counterfactual", "attributes": list(attributes), **asdict(cfg)}
    return _fit(model, train_data, cfg, make_generated, evaluate, checkpoint, device, progress,
                "counterfactual training", run_config)


ATTACKS = ("sia", "pgd", "spt")


def adversarial(
    model: nn.Module,
    train_data: Dataset,
    attack: str = "sia",
    editor: Optional[nn.Module] = None,
    config: Optional[TrainConfig] = None,
    eval_data: Optional[Dataset] = None,
    checkpoint: Optional[str] = None,
    device=None,
    progress: bool = True,
    eps_x: float = 1.5 / 255,
    step: float = 0.25 / 255,
    protect: Optional[Sequence[str]] = None,
    **overrides,
):
    """Adversarial fine-tuning with SIA, PGD or SPT examples of each real batch (thesis 2.4.5).

    ``train_data`` yields ``(image, label)`` (PGD) or ``(image, label, attributes)``
    (SIA and SPT need the editor's attributes of each image).

    ``protect``: editor attributes SIA and SPT must hold near their start; default: the
    target's own label when the editor has it (as :func:`vmd_fast.sia.diagnose` does),
    since an adversary that removes the eyeglasses an eyeglasses classifier sees would be
    trained on with the label it no longer has.

    Returns:
        ``(model, History)``.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    cfg = config or TrainConfig()
    if overrides:
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if attack != "pgd" and editor is None:
        from vmd_fast import zoo

        editor = zoo.load("editor", device=device)
    if protect is None:
        label = target_label(model)
        protect = (label,) if attack != "pgd" and label in (getattr(editor, "attributes", None) or ()) else ()
    protect = tuple(protect)

    def make_generated(current, x, y, a, seed):
        current.eval()
        current.requires_grad_(False)
        if attack == "pgd":
            adv = attacks.pgd(current, x, y, eps=eps_x, alpha=step, steps=cfg.attack_steps,
                              generator=torch.Generator().manual_seed(cfg.seed + seed))
        else:
            if a is None:
                raise ValueError(f"attack={attack!r} needs (image, label, attributes) items in train_data")
            if attack == "sia":
                adv = sia.attack(current, x, a, editor=editor, steps=cfg.attack_steps, eps_x=eps_x, step=step,
                                 protect=protect).adversarial
            else:
                adv = sia.spt_attack(current, x, a, editor=editor, steps=cfg.attack_steps, protect=protect).adversarial
        current.requires_grad_(True)
        return adv.detach(), y

    def evaluate(current):
        return {"accuracy": accuracy(current, eval_data, device=device)} if eval_data is not None else {}

    run_config = {"method": "adversarial", "attack": attack, "eps_x": eps_x, "step": step, **asdict(cfg)}
    if protect:  # only when set, so that checkpoints of runs that protect nothing still resume
        run_config["protect"] = list(protect)
    return _fit(model, train_data, cfg, make_generated, evaluate, checkpoint, device, progress,
                f"{attack}-adversarial training", run_config)
