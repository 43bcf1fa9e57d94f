"""SIA (Algorithm 1) and the pixel baselines on small models whose answers are known."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vmd_fast import attacks, sia
from vmd_fast.diagnose import BinaryAdapter


class ColourEditor(nn.Module):
    """G(x, a) = x + shift(a): attribute i shifts the colour channels by W[i] (a known editor)."""

    attributes = ["redness", "blueness", "greenness"]

    def __init__(self):
        super().__init__()
        self.register_buffer("W", torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, 0.6], [0.0, 0.6, 0.0]]))

    def encode(self, x):
        return x

    def decode(self, h, a):
        return (h + ((a - 0.5) @ self.W)[:, :, None, None]).clamp(0, 1)


class RedClassifier(nn.Module):
    """Binary: "is the image red?" from the mean of the red channel."""

    task = "binary"

    def forward(self, x):
        return 40.0 * (x[:, 0].mean(dim=(1, 2)) - 0.5)[:, None]


def _batch(gen, n=6):
    x = torch.rand(n, 3, 8, 8, generator=gen) * 0.2 + 0.4
    x[:, 0] += 0.1  # red: the classifier says 1
    a = torch.full((n, 3), 0.5)
    return x.clamp(0, 1), a


def test_sia_finds_the_attribute_the_target_depends_on(gen):
    x, a = _batch(gen)
    result = sia.attack(RedClassifier(), x, a, editor=ColourEditor(), steps=200)
    assert result.success.all()
    sens = result.sensitivity
    assert sens["redness"] > 0.1 and sens["blueness"] == 0 and sens["greenness"] == 0
    assert (result.x_T - x).abs().max() <= 1.5 / 255 + 1e-6
    assert result.success_rate == 1.0
    assert result.psnr.shape == (6,) and result.ssim.shape == (6,)


def test_sia_ablation_modes_update_only_their_spaces(gen):
    x, a = _batch(gen)
    image_only = sia.attack(RedClassifier(), x, a, editor=ColourEditor(), steps=30, mode="image")
    assert torch.equal(image_only.a_T, a) and (image_only.x_T != x).any()
    attribute_only = sia.attack(RedClassifier(), x, a, editor=ColourEditor(), steps=30, mode="attribute")
    assert torch.equal(attribute_only.x_T, x) and (attribute_only.a_T != a).any()
    partial = sia.attack(RedClassifier(), x, a, editor=ColourEditor(), steps=30, mode="partial_image", partial_steps=5)
    assert (partial.x_T - x).abs().max() <= 5 * 0.25 / 255 + 1e-6


def test_sia_keeps_protected_attributes_near_their_start(gen):
    x, a = _batch(gen)
    result = sia.attack(RedClassifier(), x, a, editor=ColourEditor(), steps=100, protect=["redness"], eps_protect=0.02)
    assert (result.a_T[:, 0] - a[:, 0]).abs().max() <= 0.02 + 1e-6


@pytest.mark.parametrize("step_attributes", [None, 2 / 255])
def test_sia_matches_a_plain_pytorch_loop(gen, step_attributes):
    """The fused, batched SIA equals Algorithm 1 written with plain tensor ops, with the
    attributes on the image's step or on their own."""
    x0, a0 = _batch(gen)
    editor, target = ColourEditor(), RedClassifier()
    eta, eps_x, steps = 0.25 / 255, 1.5 / 255, 25
    eta_a = eta if step_attributes is None else step_attributes
    adapter = BinaryAdapter(target)
    ref = adapter.reference(target(x0))
    x, a = x0.clone(), a0.clone()
    for _ in range(steps):
        xv, av = x.clone().requires_grad_(), a.clone().requires_grad_()
        loss = F.binary_cross_entropy_with_logits(target(editor.decode(xv, av))[:, 0], 1 - ref["prob"], reduction="sum")
        gx, ga = torch.autograd.grad(loss, [xv, av])
        a = torch.min(torch.max(a - eta_a * ga.sign(), a0 - 1.0), a0 + 1.0).clamp(0, 1)
        x = torch.min(torch.max(x - eta * gx.sign(), x0 - eps_x), x0 + eps_x).clamp(0, 1)
    result = sia.attack(target, x0, a0, editor=editor, steps=steps, step_attributes=step_attributes)
    assert (result.a_T - a0).abs().max() <= steps * eta_a + 1e-6
    torch.testing.assert_close(result.a_T, a)
    torch.testing.assert_close(result.x_T, x)


def test_sia_rejects_bad_input(gen):
    x, a = _batch(gen)
    editor, target = ColourEditor(), RedClassifier()
    with pytest.raises(ValueError, match="a must hold"):
        sia.attack(target, x, None, editor=editor)
    with pytest.raises(ValueError, match=r"a must have shape \(N=6, A\)"):
        sia.attack(target, x, a[:2], editor=editor)
    with pytest.raises(ValueError, match="a must have one column per editor attribute"):
        sia.attack(target, x, a[:, :2], editor=editor)
    with pytest.raises(ValueError, match="x must lie in"):
        sia.attack(target, x + 2, a, editor=editor)
    with pytest.raises(ValueError, match="a contains NaN"):
        sia.attack(target, x, a * float("nan"), editor=editor)
    with pytest.raises(ValueError, match="mode must be one of"):
        sia.attack(target, x, a, editor=editor, mode="pixels")
    with pytest.raises(ValueError, match="protect names attributes"):
        sia.attack(target, x, a, editor=editor, protect=["smile"])
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sia.attack(target, x, a, editor=editor, steps=0)
    with pytest.raises(ValueError, match="step_attributes must be a number >= 0"):
        sia.attack(target, x, a, editor=editor, step_attributes=-1.0)


def _linear(gen, k=4):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(model[1].weight.shape, generator=gen))
    return model


def test_pgd_matches_the_torchattacks_loop(gen):
    model = _linear(gen)
    x = torch.rand(5, 3, 8, 8, generator=gen)
    labels = model(x).argmax(dim=1)
    eps, alpha, steps = 4 / 255, 1 / 255, 7
    adv = x.clone()
    for _ in range(steps):  # torchattacks.PGD's update with random_start=False
        adv.requires_grad_()
        grad = torch.autograd.grad(F.cross_entropy(model(adv), labels), adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.clamp(x + torch.clamp(adv - x, -eps, eps), 0, 1).detach()
    torch.testing.assert_close(attacks.pgd(model, x, labels, eps=eps, alpha=alpha, steps=steps, random_start=False), adv)


def test_pgd_and_fgsm_stay_in_budget_and_hurt_the_model(gen):
    model = _linear(gen)
    x = torch.rand(16, 3, 8, 8, generator=gen)
    labels = model(x).argmax(dim=1)
    clean = F.cross_entropy(model(x), labels)
    for adv in (attacks.fgsm(model, x, eps=8 / 255), attacks.PGD(model, eps=8 / 255, seed=1)(x)):
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert F.cross_entropy(model(adv), labels) > clean
    a = attacks.PGD(model, seed=3)(x)
    b = attacks.PGD(model, seed=3)(x)
    assert torch.equal(a, b)


def test_pgd_accepts_a_target_adapter_and_single_logit_models(gen):
    x = torch.rand(6, 3, 8, 8, generator=gen) * 0.2 + 0.45
    adv = attacks.pgd(BinaryAdapter(RedClassifier()), x, eps=16 / 255, alpha=2 / 255, steps=20)
    adapter = BinaryAdapter(RedClassifier())
    ref = adapter.reference(RedClassifier()(x))
    assert adapter.flipped(RedClassifier()(adv), ref).all()
    adv = attacks.pgd(RedClassifier(), x, eps=16 / 255, alpha=2 / 255, steps=20)
    assert ((RedClassifier()(adv) > 0) != (RedClassifier()(x) > 0)).all()


def test_attacks_reject_bad_input(gen):
    model = _linear(gen)
    x = torch.rand(2, 3, 8, 8, generator=gen)
    with pytest.raises(ValueError, match=r"images must be a \(N, C, H, W\) tensor"):
        attacks.pgd(model, x[0])
    with pytest.raises(ValueError, match="images must lie in"):
        attacks.fgsm(model, x * 3)
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        attacks.pgd(model, x, eps=-1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        attacks.pgd(model, x, steps=0)


def test_sia_diagnosis_reports_like_zoom(gen, tmp_path):
    x, a = _batch(gen, n=5)
    result = sia.diagnose(RedClassifier(), editor=ColourEditor(), images=x, attributes=a, steps=200, batch_size=3,
                          progress=False)
    assert result.method == "sia" and result.attributes == ColourEditor.attributes
    assert result.ranking()[0] == "redness"
    assert result.sensitivity["redness"] == pytest.approx(float((result.codes[:, 0]).abs().mean()))
    single = result.metrics["single_attribute_change"]
    assert single["redness"] > single["blueness"] == 0
    assert result.counterfactuals.shape == (5, 3, 3, 8, 8) and result.multi["flipped"].all()
    assert result.metrics["attack_success_rate"] == 1.0
    paths = result.save(str(tmp_path))
    assert "redness" in open(paths["csv"]).read().splitlines()[1]


def test_spt_changes_only_attributes_and_finds_the_red_one(gen):
    x, a = _batch(gen)
    result = sia.spt_attack(RedClassifier(), x, a, editor=ColourEditor(), steps=60, lr=0.02)
    assert torch.equal(result.x_T, x)
    assert result.success.all()
    assert result.sensitivity["redness"] > result.sensitivity["blueness"]
    assert ((result.a_T >= 0) & (result.a_T <= 1)).all()
    limited = sia.spt_attack(RedClassifier(), x, a, editor=ColourEditor(), steps=60, lr=0.02, eps_a=0.01)
    assert (limited.a_T - a).abs().max() <= 0.01 + 1e-6


def test_sia_ascends_a_users_loss_and_still_judges_success_by_the_adapter(gen):
    x, a = _batch(gen)
    editor, target = ColourEditor(), RedClassifier()
    seen = {}

    def flat(out, labels):  # constant: zero gradient, so sign steps move nothing
        seen["labels"] = labels
        return out[:, 0] * 0.0

    still = sia.attack(target, x, a, editor=editor, steps=20, loss=flat)
    assert torch.equal(still.a_T, a) and torch.equal(still.x_T, x)
    assert torch.equal(seen["labels"], (target(x)[:, 0] > 0).float())  # the model's own predictions

    def redder(out, labels):  # ascend the logit: confirm the prediction instead of flipping it
        return out[:, 0]

    result = sia.attack(target, x, a, editor=editor, steps=30, mode="attribute", loss=redder)
    assert (result.a_T[:, 0] > a[:, 0]).all()  # redness went up, the loss's direction
    assert torch.equal(result.a_T[:, 1:], a[:, 1:])  # the other colours do not move the logit
    assert not result.success.any()  # success is still the binary adapter's flip
    default = sia.attack(target, x, a, editor=editor, steps=30, mode="attribute")
    assert (default.a_T[:, 0] < a[:, 0]).all()  # the default objective pulls the other way


def test_sia_seed_is_the_generator_of_the_keypoint_goals(gen):
    x, a = _batch(gen)
    editor, detector = ColourEditor(), nn.Conv2d(3, 2, 3, stride=2)
    with torch.no_grad():
        detector.weight.copy_(torch.randn(detector.weight.shape, generator=gen))
    kw = dict(editor=editor, steps=8, step=4 / 255, eps_x=8 / 255)
    by_seed = sia.attack(detector, x, a, seed=5, **kw)
    by_generator = sia.attack(detector, x, a, generator=torch.Generator().manual_seed(5), **kw)
    other = sia.attack(detector, x, a, seed=6, **kw)
    assert torch.equal(by_seed.x_T, by_generator.x_T) and torch.equal(by_seed.a_T, by_generator.a_T)
    assert not torch.equal(by_seed.x_T, other.x_T)
    with pytest.raises(ValueError, match="seed or generator, not both"):
        sia.attack(detector, x, a, seed=5, generator=torch.Generator(), **kw)
    with pytest.raises(TypeError, match="seed must be an int"):
        sia.attack(detector, x, a, seed=0.5, **kw)


def test_a_users_loss_is_checked_by_name(gen):
    x, a = _batch(gen)
    editor, target = ColourEditor(), RedClassifier()
    with pytest.raises(ValueError, match=r"loss must return one value per image, shape \(6,\)"):
        sia.attack(target, x, a, editor=editor, steps=2, loss=lambda out, y: out.sum())
    with pytest.raises(TypeError, match="loss must be a callable"):
        sia.attack(target, x, a, editor=editor, steps=2, loss="bce")
    model = _linear(gen)
    images = torch.rand(4, 3, 8, 8, generator=gen)
    with pytest.raises(ValueError, match=r"labels must have one entry per image \(N=4\)"):
        attacks.pgd(model, images, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels contain NaN or Inf"):
        attacks.pgd(RedClassifier(), images, torch.tensor([1.0, float("nan"), 0.0, 1.0]))
    with pytest.raises(TypeError, match="flipped needs a TargetAdapter"):
        attacks.LossAdapter(model).flipped(model(images), {})


def test_pgd_on_an_adapter_takes_the_users_loss_and_labels(gen):
    model = _linear(gen)
    x = torch.rand(5, 3, 8, 8, generator=gen)
    target = torch.full((5,), 2, dtype=torch.long)
    kw = dict(eps=8 / 255, alpha=1 / 255, steps=10, random_start=False)
    plain = attacks.pgd(model, x, target, targeted=True, **kw)
    through_adapter = attacks.pgd(attacks.LossAdapter(model), x, target, targeted=True, **kw)
    torch.testing.assert_close(through_adapter, plain)
    assert (model(plain).softmax(1)[:, 2] > model(x).softmax(1)[:, 2]).all()


def test_sia_diagnosis_names_the_users_loss(gen, tmp_path):
    x, a = _batch(gen, n=3)

    def margin(out, labels):  # ascend until the logit crosses the boundary, then stop
        return torch.where(labels > 0, -out[:, 0], out[:, 0]).clamp(max=0.0)

    result = sia.diagnose(RedClassifier(), editor=ColourEditor(), images=x, attributes=a, steps=200, progress=False,
                          loss=margin)
    assert result.config["loss"] == "margin" and result.ranking()[0] == "redness"
    assert result.multi["flipped"].all()
    # The margin stops pushing at the boundary, the default BCE does not.
    default = sia.diagnose(RedClassifier(), editor=ColourEditor(), images=x, attributes=a, steps=200, progress=False)
    assert result.sensitivity["redness"] < default.sensitivity["redness"]
    assert default.config["loss"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode,custom_loss", [("full", False), ("partial_image", False), ("full", True)])
def test_sia_cuda_graph_replay_equals_eager(gen, mode, custom_loss):
    x, a = (t.cuda() for t in _batch(gen))
    editor, target = ColourEditor().cuda(), RedClassifier().cuda()
    kw = dict(editor=editor, steps=40, mode=mode, partial_steps=10, protect=["blueness"])
    if custom_loss:  # a user's loss, with its labels, captured in the graph too
        kw["loss"] = lambda out, y: torch.where(y > 0, -out[:, 0], out[:, 0]).clamp(max=1.0)
    graphed = sia.attack(target, x, a, **kw)
    eager = sia.attack(target, x, a, cuda_graph=False, **kw)
    torch.testing.assert_close(graphed.x_T, eager.x_T)
    torch.testing.assert_close(graphed.a_T, eager.a_T)
    assert torch.equal(graphed.success, eager.success)
