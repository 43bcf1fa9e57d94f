"""Counterfactual and adversarial training on the small colour world of test_zoom."""

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from vmd_fast import train, zoom

from test_sia_attacks import ColourEditor
from test_zoom import COLOURS, ColourCLIP, ColourGenerator, colour_tokenizer


class SmallClassifier(nn.Module):
    task = "binary"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
        self.net(torch.zeros(1, 3, 16, 16))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def colour_world():
    G, clip = ColourGenerator(), ColourCLIP()
    clip.words[1:4] = torch.eye(3, 8) * 3.0
    relevance = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=4, stats_images=200), progress=False)
    z = torch.randn(48, G.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = G.synthesize(G.mapping_to_styles(z))
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 1:].mean(dim=(1, 2, 3))).float()
    return G, clip, relevance, TensorDataset(x, y)


def _cf(colour_world, **kw):
    G, clip, relevance, data = colour_world
    args = dict(generator=G, clip=clip, relevance=relevance, tokenizer=colour_tokenizer, epochs=2, batch_size=16,
                n_generated=8, zoom_steps=3, progress=False, eval_data=data)
    args.update(kw)
    return train.counterfactual(SmallClassifier(), data, list(COLOURS), **args)


def test_counterfactual_training_records_its_history(colour_world):
    model, history = _cf(colour_world)
    assert len(history.epochs) == 2
    assert set(history.last()) == {"loss_real", "loss_generated", "accuracy"}
    assert history.epochs[1]["loss_real"] < history.epochs[0]["loss_real"] * 1.5
    assert not model.training


def test_counterfactual_training_resumes_to_the_same_weights(colour_world, tmp_path):
    straight, _ = _cf(colour_world)
    _cf(colour_world, epochs=1, checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="other settings"):
        _cf(colour_world, epochs=2, checkpoint=str(tmp_path), lr=0.5)
    resumed, history = _cf(colour_world, epochs=2, checkpoint=str(tmp_path))
    assert len(history.epochs) == 2
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("labels", ["prediction", "probability"])
def test_counterfactuals_are_labelled_with_the_original_prediction(colour_world, monkeypatch, labels):
    """Eq. 3.12: the target of a counterfactual is the original model's predicted class
    (or, on request, its probability) of the unedited image."""
    seen, real = [], train.supervised_loss
    monkeypatch.setattr(train, "supervised_loss", lambda m, out, y: seen.append(y.detach().clone()) or real(m, out, y))
    _cf(colour_world, epochs=1, counterfactual_labels=labels)
    generated = torch.cat(seen[1::2])  # each batch: the real loss, then the generated one
    assert generated.numel() == 3 * 8
    hard = (generated == 0) | (generated == 1)
    assert bool(hard.all()) == (labels == "prediction")
    with pytest.raises(ValueError, match="counterfactual_labels must be one of"):
        _cf(colour_world, counterfactual_labels="logits")


def test_counterfactual_training_builds_the_directions_as_the_diagnosis_does(colour_world, monkeypatch):
    seen, real = [], zoom.global_directions
    monkeypatch.setattr(zoom, "global_directions", lambda *a: seen.append(a[2:]) or real(*a))
    _cf(colour_world, epochs=1, zoom_threshold=0.2, zoom_max_channels=3)
    assert seen == [(0.2, 3)]
    defaults = zoom.ZoomConfig()
    assert (train.TrainConfig().zoom_threshold, train.TrainConfig().zoom_max_channels) == \
        (defaults.threshold, defaults.max_channels)
    for bad, message in (({"zoom_max_channels": 0}, "zoom_max_channels must be a positive integer or None"),
                         ({"zoom_threshold": -1.0}, "zoom_threshold must be a number >= 0")):
        with pytest.raises(ValueError, match=message):
            train.TrainConfig(**bad)


def test_predicted_labels_are_the_argmax_in_the_soft_labels_shape():
    binary, multi = SmallClassifier(), nn.Identity()
    logits = torch.tensor([[2.0], [-1.0]])
    assert torch.equal(train.predicted_labels(binary, logits), torch.tensor([[1.0], [0.0]]))
    scores = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    assert torch.equal(train.predicted_labels(multi, scores), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("attack", ["pgd", "sia", "spt"])
def test_adversarial_training_runs_each_attack(colour_world, attack):
    _, _, _, data = colour_world
    x, y = data.tensors
    items = TensorDataset(x, y, torch.full((len(y), 3), 0.5)) if attack != "pgd" else data
    model, history = train.adversarial(SmallClassifier(), items, attack=attack, editor=ColourEditor(), epochs=1,
                                       batch_size=16, attack_steps=2, progress=False, eval_data=data)
    assert history.last()["loss_generated"] > 0 and 0 <= history.last()["accuracy"] <= 1


def test_adversarial_training_rejects_bad_settings(colour_world):
    _, _, _, data = colour_world
    with pytest.raises(ValueError, match="attack must be one of"):
        train.adversarial(SmallClassifier(), data, attack="cw")
    with pytest.raises(ValueError, match="needs \\(image, label, attributes\\)"):
        train.adversarial(SmallClassifier(), data, attack="sia", editor=ColourEditor(), epochs=1, progress=False)


def test_sia_adversarial_training_protects_the_targets_own_attribute(colour_world, monkeypatch):
    from vmd_fast import sia

    _, _, _, data = colour_world
    x, y = data.tensors
    items = TensorDataset(x, y, torch.full((len(y), 3), 0.5))
    seen, real = [], sia.attack
    monkeypatch.setattr(sia, "attack", lambda *args, **kw: seen.append(kw.get("protect")) or real(*args, **kw))
    model = SmallClassifier()
    model.label = "redness"  # an attribute the editor edits: adversaries must keep it
    train.adversarial(model, items, attack="sia", editor=ColourEditor(), epochs=1, batch_size=16, attack_steps=2,
                      progress=False)
    assert seen and all(p == ("redness",) for p in seen)
    seen.clear()
    train.adversarial(SmallClassifier(), items, attack="sia", editor=ColourEditor(), epochs=1, batch_size=16,
                      attack_steps=2, progress=False)
    assert seen and all(p == () for p in seen)
