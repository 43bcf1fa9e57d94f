"""What lets a diagnosis grow: streamed style statistics, and bf16 autocast through the
ZOOM and SIA loops with the fused ops (checked against float32)."""

import pytest
import torch

from vmd_fast import ops, sia, zoom

from test_sia_attacks import ColourEditor, _batch
from test_sia_attacks import RedClassifier as RedEditorTarget
from test_zoom import COLOURS, ColourCLIP, ColourGenerator, RedClassifier, colour_tokenizer

# bf16 keeps 8 bits of mantissa: the generator's and targets' matmuls round at ~0.4%, and
# 30 steps of the search compound that; sensitivities stay within 2% of the largest.
BF16_SENSITIVITY_TOLERANCE = 0.02


class LinearColourGenerator(ColourGenerator):
    """ColourGenerator's images made by one matmul, so that under autocast they come out in
    bf16 (as a real generator's convolutions do) and meet the float32 reference statistics."""

    def synthesize(self, styles):
        flat = self.flatten_styles(styles)
        basis = torch.cat([self.colour[:, :, None].expand(-1, -1, 256).reshape(12, -1), self.texture.reshape(1, -1)])
        return torch.sigmoid(torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1) @ basis).reshape(-1, 3, 16, 16)


@pytest.fixture(scope="module")
def world():
    G, clip = LinearColourGenerator(), ColourCLIP()
    clip.words[1:4] = torch.eye(3, 8) * 3.0
    relevance = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=4, stats_images=200), progress=False)
    return G, clip, relevance


@pytest.mark.parametrize("n, batch_size", [(203, 50), (2, 500), (1000, 1000)])
def test_streamed_style_statistics_equal_the_whole_sample(n, batch_size):
    G = ColourGenerator()
    stats = zoom.style_statistics(G, n=n, seed=3, batch_size=batch_size)
    gen = torch.Generator().manual_seed(3)  # drawn in the batches style_statistics draws them in
    z = torch.cat([torch.randn(min(batch_size, n - s), G.z_dim, generator=gen) for s in range(0, n, batch_size)])
    flat = G.flatten_styles(G.mapping_to_styles(z)).double()
    torch.testing.assert_close(stats["mean"], flat.mean(0).float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats["std"], flat.std(0).float(), rtol=1e-6, atol=1e-7)


def test_style_statistics_need_two_samples():
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        zoom.style_statistics(ColourGenerator(), n=1)


def _assert_close_sensitivities(low, full):
    scale = max(full.sensitivity.values())
    for name, value in full.sensitivity.items():
        assert abs(low.sensitivity[name] - value) <= BF16_SENSITIVITY_TOLERANCE * scale, (name, low.sensitivity, full.sensitivity)
    assert low.ranking() == full.ranking()


def test_zoom_under_bf16_autocast_matches_float32(world):
    G, clip, relevance = world
    kw = dict(n_images=6, generator=G, clip=clip, relevance=relevance, tokenizer=colour_tokenizer, steps=30, lr=0.5,
              eps=8.0, threshold=0.3, progress=False, prefix="a face", gamma=0.5,
              consistency_prompts=["a face red", "a face green"])  # L_attr on: the fused CLIP loss runs too
    full = zoom.diagnose(RedClassifier(), list(COLOURS), **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert G.synthesize(G.mapping_to_styles(torch.zeros(1, 6))).dtype == torch.bfloat16
        low = zoom.diagnose(RedClassifier(), list(COLOURS), **kw)
    _assert_close_sensitivities(low, full)
    assert low.changes.dtype == low.counterfactuals.dtype == low.originals.dtype == torch.float32
    assert (low.flipped == full.flipped).float().mean() >= 0.9


def test_relevance_matrix_under_bf16_autocast_matches_float32(world):
    G, clip, relevance = world
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=4, stats_images=200), progress=False)
    assert low["M"].dtype == torch.float32
    torch.testing.assert_close(low["M"], relevance["M"], rtol=0, atol=1e-2)


def test_sia_under_bf16_autocast_matches_float32():
    x, a = _batch(torch.Generator().manual_seed(0), n=5)
    kw = dict(editor=ColourEditor(), images=x, attributes=a, steps=100, batch_size=3, progress=False)
    full = sia.diagnose(RedEditorTarget(), **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sia.diagnose(RedEditorTarget(), **kw)
    _assert_close_sensitivities(low, full)


def test_fused_ops_compute_in_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16, generator=gen).bfloat16(), torch.rand(2, 3, 16, 16, generator=gen).bfloat16()
    logits = torch.randn(4, 2, generator=gen).bfloat16()
    M, dt = torch.randn(12, 8, generator=gen).bfloat16(), torch.randn(3, 8, generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ops.ssim(x, y, data_range=1.0, size_average=False)
        cached = ops.SSIMReference(y).ssim(x, size_average=False)
        ce = ops.clip_consistency(logits, logits.flip(0), 1.0, reduction="none")
        ds = ops.relevance_directions(M, dt, 0.1)
    # Each is the float32 computation on the bf16 inputs, handed back as the wrapper returns it.
    expected_ssim = ops.ssim(x.float(), y.float(), data_range=1.0, size_average=False)
    torch.testing.assert_close(value, expected_ssim.to(value.dtype))
    torch.testing.assert_close(cached, expected_ssim.to(cached.dtype))
    expected_ce = ops.clip_consistency(logits.float(), logits.flip(0).float(), 1.0, reduction="none")
    torch.testing.assert_close(ce, expected_ce.to(ce.dtype))
    assert ds.dtype == torch.float32
    torch.testing.assert_close(ds, ops.relevance_directions(M.float(), dt.float(), 0.1))


def test_model_checksum_covers_zero_dim_parameters():
    # open_clip models carry a 0-dim logit_scale; a run keyed on their weights must hash it.
    clip = ColourCLIP()
    clip.logit_scale = torch.nn.Parameter(torch.tensor(4.6))
    before = zoom._model_checksum(clip)
    with torch.no_grad():
        clip.logit_scale.fill_(4.7)
    assert zoom._model_checksum(clip) != before
