"""Table 2.9: learning from a 1:99 imbalanced set, SIA augmentation against the usual fixes
(thesis 2.4.6).

A binary attribute classifier is trained from scratch on renders where its attribute is
present in 1% of the faces, with each strategy:

* none: the plain loss;
* reweighting: the positive class's BCE weighted by n_negative / n_positive;
* resampling: items drawn with probability inversely proportional to their class size
  (``torch.utils.data.WeightedRandomSampler``);
* CutMix: ``torchvision.transforms.v2.CutMix`` on a batch with probability 0.5;
* AutoAugment: ``torchvision.transforms.AutoAugment`` (ImageNet policy) on each uint8 image;
* SIA: SIA adversaries of the minority samples, against the plain classifier, added to the
  set with their label (SIA holds the label attribute); several per sample, each from a
  random start in attribute space as PGD starts from a random point of its ball;
* SIA + reweighting: both.

Every model starts from the same initial weights and is measured on a fresh balanced set:
precision and recall of the minority class, accuracy. The thesis's relation: SIA
augmentation gives the best minority-class recall.

Run: ``python -m experiments.table_2_9_imbalanced [--size small] [--assets DIR]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch.utils.data import ConcatDataset, TensorDataset
from torchvision import transforms
from torchvision.transforms import v2
from tqdm.auto import tqdm

from experiments import common
from vmd_fast import sia
from vmd_fast.models.targets import build_target

NAME = "table_2_9_imbalanced"
IMBALANCE = 0.01  # P(label = 1) in training: 1:99
CUTMIX_PROBABILITY = 0.5  # the thesis's action probability
STEP = 0.25 / 255
EPS_X = 1.5 / 255
STRATEGIES = ("none", "reweighting", "resampling", "CutMix", "AutoAugment", "SIA", "SIA + reweighting")


@dataclass
class Settings:
    """Sizes of one run.

    Args:
        n_train: training renders (1% positive).
        n_test: fresh balanced test renders.
        epochs, batch_size, lr: training from scratch (Adam).
        widths: the classifier's channels (the zoo's targets use (24, 48, 64, 96)).
        sia_copies: SIA adversaries per minority sample.
        sia_steps: SIA steps per adversary.
        random_start: half-width of the uniform start around the sample's attributes.
    """

    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    lr: float
    widths: Tuple[int, ...]
    sia_copies: int
    sia_steps: int
    random_start: float


SIZES = {
    "small": Settings(n_train=800, n_test=64, epochs=1, batch_size=64, lr=1e-3, widths=(8, 16), sia_copies=2,
                      sia_steps=5, random_start=0.3),
    "default": Settings(n_train=6000, n_test=2000, epochs=8, batch_size=64, lr=1e-3, widths=(24, 48, 64, 96),
                        sia_copies=5, sia_steps=50, random_start=0.3),
}


def _extra(parser):
    parser.add_argument("--label", default="eyeglasses", help="the minority attribute (default: %(default)s)")


def cutmix_transform(seed: int):
    """CutMix on a batch with probability 0.5; the soft label is the positive class's share."""
    cutmix = v2.CutMix(num_classes=2)
    gen = torch.Generator().manual_seed(seed)

    def apply(x, y):
        if float(torch.rand((), generator=gen)) >= CUTMIX_PROBABILITY:
            return x, y
        mixed, soft = cutmix(x, y.long())  # soft: (N, 2) label shares
        return mixed, soft[:, 1]

    return apply


def autoaugment_transform():
    """AutoAugment's ImageNet policy on each image, as uint8 as torchvision expects."""
    policy = transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET)

    def apply(x, y):
        images = (x * 255).round().to(torch.uint8)
        return torch.stack([policy(image) for image in images]).float() / 255, y

    return apply


def sia_augmentation(model, editor, train_set: TensorDataset, label: str, s: Settings, args) -> TensorDataset:
    """SIA adversaries of the minority samples of ``train_set``, labelled 1.

    Returns:
        TensorDataset of ``sia_copies`` x n_minority images, labels and attributes.
    """
    x_all, y_all, a_all = train_set.tensors
    positives = torch.nonzero(y_all > 0.5).flatten()
    names = list(editor.attributes)
    column = names.index(label) if label in names else None
    gen = torch.Generator().manual_seed(args.seed + 7)
    images = []
    for _ in tqdm(range(s.sia_copies), desc="SIA augmentation", disable=not args.progress, leave=False):
        for start in range(0, len(positives), s.batch_size):
            index = positives[start : start + s.batch_size]
            x, a = x_all[index].to(args.device), a_all[index]
            start_a = (a + (torch.rand(a.shape, generator=gen) * 2 - 1) * s.random_start).clamp(0, 1)
            if column is not None:
                start_a[:, column] = a[:, column]  # the label attribute starts (and stays) where it is
            result = sia.attack(model, x, start_a.to(args.device), editor=editor, steps=s.sia_steps, eps_x=EPS_X,
                                step=STEP, protect=(label,) if column is not None else (), cuda_graph=False)
            images.append(result.adversarial.cpu())
    images = torch.cat(images) if images else x_all[:0]
    return TensorDataset(images, torch.ones(len(images)), torch.zeros(len(images), a_all.shape[1]))


def charts(measurements: dict) -> list:
    """Minority-class precision and recall and the balanced accuracy of every strategy."""
    scores = measurements["strategies"]
    keys = ("precision", "recall", "accuracy")
    return [common.Chart("strategies.png", "Table 2.9: 1:99 training set, minority class", "fraction",
                         list(scores), {k: [scores[name][k] for name in scores] for k in keys})]


def experiment(argv: Optional[Sequence[str]] = None) -> dict:
    args = common.parse_args(NAME, __doc__.splitlines()[0], argv, _extra)
    started = time.time()
    s = SIZES[args.size]
    common.seed_everything(args.seed)
    editor = common.load_assets(["editor"], args.assets, args.device)["editor"]
    names = list(editor.attributes)
    label = args.label
    train_set = common.render_set(common.sample_faces(s.n_train, args.seed + 2, priors={label: IMBALANCE}),
                                  label, names)
    test_set = common.render_set(common.balanced_faces(s.n_test, args.seed + 1, [label]), label, names)
    labels = train_set.tensors[1]
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    torch.manual_seed(args.seed)
    initial = build_target({"task": "binary", "labels": [label], "widths": list(s.widths)}).state_dict()

    def fresh():
        model = build_target({"task": "binary", "labels": [label], "widths": list(s.widths)})
        model.load_state_dict(initial)
        return model

    def fit(strategy, data, **kw):
        torch.manual_seed(args.seed)  # the same augmentation draws for every strategy
        return common.finetune(fresh(), data, s.epochs, s.lr, s.batch_size, args.seed, args.progress,
                               device=args.device, desc=strategy, **kw)

    reweight = n_neg / max(n_pos, 1)
    models = {}
    models["none"] = fit("none", train_set)
    models["reweighting"] = fit("reweighting", train_set, pos_weight=reweight)
    class_weight = torch.where(labels > 0.5, 1.0 / max(n_pos, 1), 1.0 / max(n_neg, 1))
    models["resampling"] = fit("resampling", train_set, sample_weights=class_weight)
    models["CutMix"] = fit("CutMix", train_set, transform=cutmix_transform(args.seed))
    models["AutoAugment"] = fit("AutoAugment", train_set, transform=autoaugment_transform())
    adversaries = sia_augmentation(models["none"], editor, train_set, label, s, args)
    augmented = ConcatDataset([train_set, adversaries])
    models["SIA"] = fit("SIA", augmented)
    models["SIA + reweighting"] = fit("SIA + reweighting", augmented,
                                      pos_weight=n_neg / max(n_pos + len(adversaries), 1))

    x_test, y_test, _ = test_set.tensors
    scores = {k: common.binary_scores(common.predict(m, x_test, device=args.device), y_test) for k, m in models.items()}
    rows = [[k, v["precision"], v["recall"], common.percent(v["accuracy"])] for k, v in scores.items()]
    baselines = [k for k in STRATEGIES if not k.startswith("SIA")]
    best_baseline = max(baselines, key=lambda k: scores[k]["recall"])
    relation = common.Relation(
        statement="SIA augmentation gives the best minority-class recall among the strategies",
        rule="SIA's recall > the recall of none, reweighting, resampling, CutMix and AutoAugment",
        holds=all(scores["SIA"]["recall"] > scores[k]["recall"] for k in baselines),
        evidence=f"SIA {scores['SIA']['recall']:.4f}, best other {best_baseline} {scores[best_baseline]['recall']:.4f}")
    summary = (f"Label `{label}`: {s.n_train} training renders with {n_pos} positives ({100 * n_pos / len(labels):.1f}%), "
               f"classifier widths {tuple(s.widths)} trained from the same initial weights for {s.epochs} epochs; "
               f"SIA: {len(adversaries)} adversaries ({s.sia_copies} per positive, {s.sia_steps} steps, eps "
               f"{EPS_X * 255:g}/255, random start +-{s.random_start}) against the plain model. Test: {len(y_test)} "
               f"fresh renders, {int(y_test.sum())} positive.")
    common.write_results(args, "Table 2.9: imbalanced training set (1:99)", summary,
                         [("Precision and recall of the minority class, accuracy (%) on a balanced test set.",
                           ["Strategy", "Precision", "Recall", "Accuracy (%)"], rows)],
                         [relation], {"assets": common.describe_assets({"editor": editor}), "strategies": scores,
                                      "n_positive": n_pos, "n_train": len(labels), "n_adversaries": len(adversaries)},
                         s, started,
                         charts=charts)
    return {"scores": scores, "relation": relation}


def main(argv: Optional[Sequence[str]] = None) -> int:
    return common.run_main(experiment, argv)


if __name__ == "__main__":
    raise SystemExit(main())
