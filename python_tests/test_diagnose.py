"""The layer SIA and ZOOM share: target adapters, metrics, the result and its report."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from vmd_fast.diagnose import (
    DiagnosisResult,
    KeypointAdapter,
    adapter_for,
    decoupling,
    decoupling_summary,
    flip_rate,
    flip_resistance,
    psnr,
    repeat_reference,
    sdar,
    soft_argmax,
)


def _descend(adapter, outputs, ref, steps=200, lr=0.5):
    """Plain gradient descent on the outputs themselves: the objective must lead to a flip."""
    z = outputs.clone().requires_grad_()
    for _ in range(steps):
        (grad,) = torch.autograd.grad(adapter.objective(z, ref).sum(), z)
        z = (z - lr * grad).detach().requires_grad_()
    return z.detach()


@pytest.mark.parametrize(
    "task,shape",
    [("binary", (6, 1)), ("multiclass", (6, 5)), ("attributes", (6, 4)), ("segmentation", (3, 4, 7, 9))],
)
def test_objective_descent_flips_the_prediction(task, shape, gen):
    adapter = adapter_for(nn.Identity(), task=task)
    outputs = torch.randn(shape, generator=gen) * 2
    ref = adapter.reference(outputs)
    assert not adapter.flipped(outputs, ref).any()
    assert torch.allclose(adapter.change(outputs, ref), torch.zeros(shape[0]))
    moved = _descend(adapter, outputs, ref)
    assert adapter.flipped(moved, ref).all()
    assert (adapter.change(moved, ref) > 0).all()
    assert adapter.objective(outputs, ref).shape == (shape[0],)


def test_binary_objective_is_bce_to_the_flipped_probability():
    adapter = adapter_for(nn.Identity(), task="binary")
    z0 = torch.tensor([[2.0], [-0.5]])
    ref = adapter.reference(z0)
    z = torch.tensor([[0.3], [0.1]])
    p0 = torch.sigmoid(z0[:, 0])
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(z[:, 0]), 1 - p0, reduction="none")
    torch.testing.assert_close(adapter.objective(z, ref), expected)
    torch.testing.assert_close(adapter.change(z, ref), (torch.sigmoid(z[:, 0]) - p0).abs())


def test_multiclass_objective_is_minus_log_one_minus_p_of_the_original_class():
    adapter = adapter_for(nn.Identity(), task="multiclass")
    z0 = torch.tensor([[3.0, 0.0, -1.0]])
    ref = adapter.reference(z0)
    z = torch.tensor([[0.5, 0.2, 0.1]])
    p = z.softmax(dim=1)[0, 0]
    torch.testing.assert_close(adapter.objective(z, ref), -torch.log1p(-p)[None])


def test_soft_argmax_finds_sharp_peaks(gen):
    heat = torch.full((2, 3, 8, 10), -40.0)
    points = torch.randint(0, 8, (2, 3, 2), generator=gen)
    for n in range(2):
        for k in range(3):
            heat[n, k, points[n, k, 1], points[n, k, 0]] = 40.0
    torch.testing.assert_close(soft_argmax(heat), points.float(), atol=1e-4, rtol=0)


class _Heatmaps(nn.Module):
    """Heatmaps at a quarter of the input size whose peak follows the image's brightest pixel."""

    def forward(self, x):
        small = torch.nn.functional.avg_pool2d(x.mean(dim=1, keepdim=True), 4)
        return 200.0 * small.repeat(1, 2, 1, 1)


def test_keypoint_adapter_maps_heatmaps_to_input_pixels_and_flips_on_displacement(gen):
    adapter = adapter_for(_Heatmaps(), task="keypoints")
    x = torch.zeros(1, 3, 64, 64)
    x[..., 32:36, 16:20] = 1.0  # heatmap cell (x=4, y=8)
    points = adapter.outputs(x)
    torch.testing.assert_close(points, torch.tensor([[[17.5, 33.5]] * 2]), atol=0.05, rtol=0)
    ref = adapter.reference(points, generator=gen)
    assert ((ref["goal"] >= 0) & (ref["goal"] <= 64)).all()
    moved = points + torch.tensor([4.0, 0.0])
    torch.testing.assert_close(adapter.change(moved, ref), torch.tensor([4.0]))
    assert adapter.flipped(moved, ref).all() and not adapter.flipped(points, ref).any()


def test_keypoint_goals_are_seeded():
    adapter = KeypointAdapter(_Heatmaps())
    points = adapter.outputs(torch.rand(2, 3, 32, 32))
    a = adapter.reference(points, torch.Generator().manual_seed(3))["goal"]
    b = adapter.reference(points, torch.Generator().manual_seed(3))["goal"]
    assert torch.equal(a, b)


def test_adapter_for_reads_the_task_and_infers_it_from_shapes():
    model = nn.Linear(3, 1)
    model.task = "binary"
    assert adapter_for(model).task == "binary"
    x = torch.rand(2, 3, 16, 16)
    assert adapter_for(nn.Sequential(nn.Flatten(), nn.Linear(768, 1)), example=x).task == "binary"
    assert adapter_for(nn.Sequential(nn.Flatten(), nn.Linear(768, 5)), example=x).task == "multiclass"
    assert adapter_for(nn.Conv2d(3, 4, 3, padding=1), example=x).task == "segmentation"
    assert adapter_for(nn.Conv2d(3, 4, 3, stride=2), example=x).task == "keypoints"
    with pytest.raises(ValueError, match="task="):
        adapter_for(nn.Identity())
    with pytest.raises(ValueError, match="task must be one of"):
        adapter_for(nn.Identity(), task="regression")


def test_repeat_reference_lays_out_images_by_attributes():
    ref = {"prob": torch.tensor([0.1, 0.7]), "label": torch.tensor([False, True])}
    out = repeat_reference(ref, 3)
    assert out["prob"].tolist() == pytest.approx([0.1] * 3 + [0.7] * 3)
    assert out["label"].tolist() == [False] * 3 + [True] * 3


def test_metrics_match_their_definitions(gen):
    flips = torch.tensor([True, False, False, True, True])
    assert flip_rate(flips) == pytest.approx(0.6)
    assert flip_resistance(flips) == pytest.approx(0.4)
    values = torch.rand(7, generator=gen)
    assert sdar(values) == pytest.approx(float(np.std(values.numpy())))
    assert sdar(dict(zip("abcdefg", values.tolist())), normalize=True) == pytest.approx(
        float(np.std((values / values.sum()).numpy()))
    )
    with pytest.raises(ValueError, match="flipped"):
        flip_rate(torch.zeros(0, dtype=torch.bool))


def test_psnr_matches_skimage(gen):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    x = torch.rand(2, 3, 16, 16, generator=gen)
    y = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    expected = [skimage_metrics.peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=1.0) for i in range(2)]
    torch.testing.assert_close(psnr(x, y), torch.tensor(expected, dtype=torch.float32), atol=1e-3, rtol=0)


def _result(gen, n=5, a=3, multi=True):
    changes = torch.rand(n, a, generator=gen)
    changes[:, 1] += 1.0  # attribute "b" is the most sensitive
    images = torch.rand(n, 3, 8, 8, generator=gen)
    return DiagnosisResult(
        method="zoom",
        target="toy",
        task="binary",
        attributes=["a", "b", "c"][:a],
        changes=changes,
        flipped=changes > 0.5,
        originals=images,
        counterfactuals=images[:, None].repeat(1, a, 1, 1, 1).flip(-1),
        codes=torch.randn(n, a, generator=gen),
        multi={
            "counterfactuals": images.flip(-2),
            "codes": torch.randn(n, a, generator=gen),
            "flipped": torch.tensor([True, False, True, True, False][:n]),
            "changes": torch.rand(n, generator=gen),
        }
        if multi
        else None,
        config={"steps": 3},
        metrics={"psnr": 30.0},
    )


def test_result_figures(gen):
    result = _result(gen)
    assert result.ranking()[0] == "b"
    assert result.sensitivity["b"] == pytest.approx(float(result.changes[:, 1].mean()))
    assert result.flip_rates["a"] == pytest.approx(float((result.changes[:, 0] > 0.5).float().mean()))
    assert result.multi_flip_rate == pytest.approx(0.6)
    assert result.sdar == pytest.approx(float(np.std(result.changes.mean(0).numpy())))


def test_result_saves_a_report_and_loads_it_back(tmp_path, gen):
    result = _result(gen)
    paths = result.save(str(tmp_path / "report"))
    for key in ("json", "csv", "histogram", "grid", "multi_grid", "html", "tensors"):
        assert os.path.getsize(paths[key]) > 0, key
    record = json.loads(open(paths["json"]).read())
    assert record["ranking"][0] == "b" and record["sensitivity"]["b"] == pytest.approx(result.sensitivity["b"])
    page = open(paths["html"]).read()
    assert 'id="histogram"' in page and "data:image/png;base64," in page and "src=\"histogram.png\"" not in page
    csv_rows = open(paths["csv"]).read().splitlines()
    assert csv_rows[1].startswith("b,")
    loaded = DiagnosisResult.load(str(tmp_path / "report"))
    assert loaded.attributes == result.attributes and loaded.config == {"steps": 3}
    for name in ("changes", "flipped", "originals", "counterfactuals", "codes"):
        assert torch.equal(getattr(loaded, name), getattr(result, name)), name
    assert torch.equal(loaded.multi["flipped"], result.multi["flipped"])


def test_result_without_multi_mode_or_images(tmp_path, gen):
    result = _result(gen, multi=False)
    result.originals = torch.empty(0)
    paths = result.save(str(tmp_path))
    assert "multi_grid" not in paths
    assert DiagnosisResult.load(str(tmp_path)).multi is None


def test_result_rejects_mismatched_shapes(gen):
    with pytest.raises(ValueError, match=r"changes must have shape \(N, 2\)"):
        DiagnosisResult("zoom", "t", "binary", ["a", "b"], torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="flipped must have the shape of changes"):
        DiagnosisResult("zoom", "t", "binary", ["a", "b"], torch.rand(4, 2), torch.zeros(4, 1, dtype=torch.bool))
    with pytest.raises(FileNotFoundError, match="result.json"):
        DiagnosisResult.load("/nonexistent-report-dir")


def test_decoupling_is_the_mean_absolute_score_change_per_edit(gen):
    original = torch.rand(5, 3, generator=gen)
    edited = torch.rand(5, 2, 3, generator=gen)
    expected = torch.stack([(edited[:, i] - original).abs().mean(0) for i in range(2)])
    torch.testing.assert_close(decoupling(original, edited), expected)
    record = decoupling_summary(expected, ["b", "x"], ["a", "b", "c"])  # only "b" is annotated
    assert record["diagonal"] == pytest.approx(float(expected[0, 1]))
    assert record["off_diagonal"] == pytest.approx(float(expected[0, [0, 2]].mean()))
    assert decoupling_summary(expected, ["x", "y"], ["a", "b", "c"])["diagonal"] is None


@pytest.mark.parametrize(
    "original,edited,message",
    [
        (torch.rand(4), torch.rand(4, 2, 3), r"original must have shape \(N, B\)"),
        (torch.rand(4, 3), torch.rand(4, 2, 2), r"edited must have shape \(4, A, 3\)"),
        (torch.rand(0, 3), torch.rand(0, 2, 3), "no images"),
        (torch.full((4, 3), float("nan")), torch.rand(4, 2, 3), "original must hold finite"),
        (torch.rand(4, 3), torch.ones(4, 2, 3, dtype=torch.long), "edited must hold finite floating-point"),
    ],
)
def test_decoupling_rejects_bad_scores(original, edited, message):
    with pytest.raises(ValueError, match=message):
        decoupling(original, edited)


class _ChannelMeans:
    """A toy annotator: the mean of each colour channel."""

    attributes = ["red", "green", "blue"]
    name = "channel means"

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return images.mean(dim=(2, 3))


def test_result_decoupling_scores_every_counterfactual_and_reaches_the_report(tmp_path):
    n, a = 4, 3
    originals = torch.full((n, 3, 5, 5), 0.5)
    counterfactuals = originals[:, None].repeat(1, a, 1, 1, 1)
    for i in range(a):  # edit i raises channel i by 0.3 and channel (i + 1) % 3 by 0.1
        counterfactuals[:, i, i] += 0.3
        counterfactuals[:, i, (i + 1) % 3] += 0.1
    result = DiagnosisResult("zoom", "toy", "binary", ["red", "green", "blue"], torch.rand(n, a),
                             torch.zeros(n, a, dtype=torch.bool), originals=originals, counterfactuals=counterfactuals)
    scorer = _ChannelMeans()
    matrix = result.decoupling(scorer, batch_size=5)
    expected = torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.3, 0.1], [0.1, 0.0, 0.3]])
    torch.testing.assert_close(matrix, expected)
    assert scorer.calls == 1 + 3  # the 4 originals in one batch, the 12 counterfactuals in batches of 5
    record = result.metrics["decoupling"]
    assert record["annotator"] == "channel means" and record["annotated"] == ["red", "green", "blue"]
    assert record["diagonal"] == pytest.approx(0.3) and record["off_diagonal"] == pytest.approx(0.05)
    paths = result.save(str(tmp_path))
    page = open(paths["html"]).read()
    assert "Decoupling of the edits" in page and "0.300" in page
    assert json.load(open(paths["json"]))["metrics"]["decoupling"]["matrix"][0] == pytest.approx([0.3, 0.1, 0.0])
    assert DiagnosisResult.load(str(tmp_path)).metrics["decoupling"] == json.loads(json.dumps(record))


def test_decoupling_rejects_scores_on_two_devices():
    edited = torch.rand(4, 2, 3, device="meta")
    with pytest.raises(ValueError, match="edited must be on the device of original"):
        decoupling(torch.rand(4, 3), edited)


def test_result_decoupling_rejects_what_it_cannot_score(gen):
    result = _result(gen)
    with pytest.raises(TypeError, match="scorer must be callable"):
        result.decoupling("clip")
    with pytest.raises(ValueError, match="scorer must return"):
        result.decoupling(lambda x: x.mean(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match="annotated names 1 scores"):
        result.decoupling(lambda x: x.mean(dim=(2, 3)), annotated=["only"])
    with pytest.raises(ValueError, match="batch_size"):
        result.decoupling(_ChannelMeans(), batch_size=0)
    result.counterfactuals = torch.empty(0)
    with pytest.raises(ValueError, match="needs the originals and the counterfactuals"):
        result.decoupling(_ChannelMeans())
