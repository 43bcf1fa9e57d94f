"""ZOOM on a small world whose answers are known: a colour generator, a colour CLIP, a red classifier."""

import zlib

import pytest
import torch
from torch import nn

from vmd_fast import zoom

COLOURS = ("red", "green", "blue")


class ColourGenerator(nn.Module):
    """A style generator in miniature: 12 style channels in two layers; channels 4c..4c+3
    brighten colour c; the image is a fixed texture plus the colour offsets, 16x16."""

    z_dim = 6
    style_space_dims = [6, 6]

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("mapping", torch.randn(6, 12, generator=gen) * 0.5)
        colour = torch.zeros(12, 3)
        for c in range(3):
            colour[4 * c : 4 * c + 4, c] = 0.4
        self.register_buffer("colour", colour)
        self.register_buffer("texture", torch.rand(3, 16, 16, generator=gen) * 2 - 1)

    def mapping_to_styles(self, z):
        return list(torch.split(z @ self.mapping, self.style_space_dims, dim=1))

    def flatten_styles(self, styles):
        return torch.cat(list(styles), dim=1)

    def unflatten_styles(self, flat):
        return list(torch.split(flat, self.style_space_dims, dim=1))

    def synthesize(self, styles):
        offsets = self.flatten_styles(styles) @ self.colour  # (N, 3)
        return torch.sigmoid(self.texture + offsets[:, :, None, None])


class ColourCLIP(nn.Module):
    """Image embedding: mean colour; text embedding: bag of words where the colour words
    point along the colour axes and every other word along its own random direction."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.register_buffer("words", torch.randn(64, 8, generator=gen) * 0.3)
        self.register_buffer("project", torch.eye(3, 8))

    def encode_image(self, x):
        return (x.mean(dim=(2, 3)) - 0.5) @ self.project + 1e-3

    def encode_text(self, tokens):
        return self.words[tokens].sum(dim=1)


def colour_tokenizer(prompts):
    ids = []
    for prompt in prompts:
        words = prompt.split()
        row = [COLOURS.index(w) + 1 if w in COLOURS else 4 + zlib.crc32(w.encode()) % 60 for w in words]
        ids.append(row + [0] * (12 - len(row)))
    return torch.tensor(ids)


class RedClassifier(nn.Module):
    task = "binary"

    def forward(self, x):
        return 30.0 * (x[:, 0].mean(dim=(1, 2)) - x[:, 1:].mean(dim=(1, 2, 3)))[:, None]


@pytest.fixture(scope="module")
def world():
    G, clip = ColourGenerator(), ColourCLIP()
    clip.words[1:4] = torch.eye(3, 8) * 3.0  # the colour words
    relevance = zoom.relevance_matrix(G, clip, zoom.RelevanceConfig(n_images=4, stats_images=200), progress=False)
    return G, clip, relevance


def test_relevance_rows_point_where_clip_sees_their_channel(world):
    _, _, relevance = world
    M = relevance["M"]
    assert M.shape == (12, 8)
    for c in range(3):
        axis = torch.eye(8)[c]
        cos = (M[4 * c : 4 * c + 4] @ axis).abs()
        assert (cos > 0.9).all(), (c, cos)


def test_relevance_matrix_is_cached_by_checksum(world, tmp_path):
    G, clip, relevance = world
    cfg = zoom.RelevanceConfig(n_images=4, stats_images=200)
    first = zoom.relevance_matrix(G, clip, cfg, cache_dir=str(tmp_path), progress=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    again = zoom.relevance_matrix(G, clip, cfg, cache_dir=str(tmp_path), progress=False)
    assert torch.equal(first["M"], again["M"]) and torch.allclose(first["M"], relevance["M"])


def test_global_directions_select_the_attribute_channels(world):
    _, clip, relevance = world
    dt = zoom.text_directions(clip, ["red", "blue"], prefix="a face", tokenizer=colour_tokenizer)
    ds = zoom.global_directions(relevance, dt, threshold=0.3)
    assert torch.allclose(ds.norm(dim=1), torch.ones(2))
    assert ds[0, :4].abs().sum() > 0.95 * ds[0].abs().sum()
    assert ds[1, 8:].abs().sum() > 0.95 * ds[1].abs().sum()


def _random_relevance(channels=300, width=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    M = torch.nn.functional.normalize(torch.randn(channels, width, generator=gen), dim=1)
    std = torch.rand(channels, generator=gen) + 0.5
    dt = torch.nn.functional.normalize(torch.randn(3, width, generator=gen), dim=1)
    return {"M": M, "std": std}, dt


@pytest.mark.parametrize("k", [1, 7, 40])
def test_max_channels_keeps_the_k_most_relevant_channels(k):
    relevance, dt = _random_relevance()
    ds = zoom.global_directions(relevance, dt, threshold=0.05, max_channels=k)
    r = dt @ relevance["M"].T
    keep = torch.zeros_like(r, dtype=torch.bool).scatter_(1, r.abs().topk(k, dim=1).indices, True)
    want = torch.nn.functional.normalize(r * keep * relevance["std"], dim=1)
    assert torch.equal(ds != 0, keep)
    torch.testing.assert_close(ds, want)


def test_max_channels_does_not_add_channels_below_the_threshold():
    relevance, dt = _random_relevance()
    capped = zoom.global_directions(relevance, dt, threshold=0.6, max_channels=250)
    torch.testing.assert_close(capped, zoom.global_directions(relevance, dt, threshold=0.6))
    assert int((capped != 0).sum(dim=1).max()) < 250


def test_an_empty_direction_falls_back_to_a_lower_threshold():
    relevance, dt = _random_relevance()
    for cap in (None, 5):
        ds = zoom.global_directions(relevance, dt, threshold=1.5, max_channels=cap)
        assert bool((ds.abs().sum(dim=1) > 0).all())
        torch.testing.assert_close(ds.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("cap", [None, 5])
def test_bad_text_directions_are_named_with_or_without_the_cap(cap):
    relevance, dt = _random_relevance()
    with pytest.raises(ValueError, match="dt must have shape \\(attributes, 16\\)"):
        zoom.global_directions(relevance, dt[:, :15], max_channels=cap)
    with pytest.raises(ValueError, match="dt contains NaN or Inf"):
        zoom.global_directions(relevance, torch.full_like(dt, float("nan")), max_channels=cap)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_max_channels_must_be_a_positive_integer(bad):
    relevance, dt = _random_relevance()
    with pytest.raises(ValueError, match="max_channels must be a positive integer or None"):
        zoom.global_directions(relevance, dt, max_channels=bad)
    with pytest.raises(ValueError, match="max_channels must be a positive integer or None"):
        zoom.ZoomConfig(max_channels=bad)


def test_diagnosis_records_the_threshold_it_used(world):
    result = _diagnose(world, threshold=0.25, max_channels=9, steps=2, multi=False)
    assert result.config["threshold"] == 0.25
    assert result.config["max_channels"] == 9


def _diagnose(world, **kw):
    G, clip, relevance = world
    args = dict(n_images=6, generator=G, clip=clip, relevance=relevance, tokenizer=colour_tokenizer,
                steps=30, lr=0.5, eps=8.0, threshold=0.3, progress=False, prefix="a face",
                consistency_prompts=None, gamma=0.0)
    args.update(kw)
    return zoom.diagnose(RedClassifier(), list(COLOURS), **args)


def test_zoom_finds_the_attribute_the_target_depends_on(world):
    result = _diagnose(world)
    assert result.ranking()[0] == "red"
    assert result.flip_rates["red"] > 0.5
    assert result.changes.shape == (6, 3) and result.counterfactuals.shape == (6, 3, 3, 16, 16)
    assert result.codes.abs().max() <= 8.0
    assert result.multi["flipped"].shape == (6,)
    assert set(result.metrics) == {"single_FR-25", "multi_FR-25"}
    assert 0.0 <= result.metrics["single_FR-25"] <= 1.0


def test_zoom_is_deterministic_and_uses_clip_consistency(world):
    prompts = ("a face with red", "a face with green")
    a = _diagnose(world, gamma=0.5, consistency_prompts=prompts, steps=10)
    b = _diagnose(world, gamma=0.5, consistency_prompts=prompts, steps=10)
    assert torch.equal(a.changes, b.changes) and torch.equal(a.codes, b.codes)
    c = _diagnose(world, gamma=0.0, steps=10)
    assert not torch.equal(a.codes, c.codes)
    assert a.config["consistency_prompts"] == list(prompts)


def test_interrupted_zoom_resumes_to_the_same_result(world, tmp_path, monkeypatch):
    kw = dict(steps=12, checkpoint_every=5, rows_per_batch=9)  # 3 images x 3 attributes: two batches
    expected = _diagnose(world, **kw)
    calls = {"n": 0}
    original_run = zoom._Search.run

    def flaky_run(self, start, stop, use_graph):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the second batch, after some checkpoints
            raise KeyboardInterrupt
        return original_run(self, start, stop, use_graph)

    monkeypatch.setattr(zoom._Search, "run", flaky_run)
    with pytest.raises(KeyboardInterrupt):
        _diagnose(world, checkpoint=str(tmp_path), **kw)
    monkeypatch.setattr(zoom._Search, "run", original_run)
    resumed = _diagnose(world, checkpoint=str(tmp_path), **kw)
    assert torch.equal(resumed.changes, expected.changes)
    assert torch.equal(resumed.codes, expected.codes)
    assert torch.equal(resumed.multi["codes"], expected.multi["codes"])
    with pytest.raises(ValueError, match="different run"):
        _diagnose(world, checkpoint=str(tmp_path), **{**kw, "steps": 13})


def test_zoom_rejects_bad_input(world):
    with pytest.raises(ValueError, match="attributes must be a non-empty list"):
        zoom.diagnose(RedClassifier(), [], generator=world[0], clip=world[1])
    with pytest.raises(ValueError, match="attributes must be distinct"):
        zoom.diagnose(RedClassifier(), ["red", "red"], generator=world[0], clip=world[1])
    with pytest.raises(ValueError, match="n_images must be a positive integer"):
        zoom.diagnose(RedClassifier(), ["red"], n_images=0, generator=world[0], clip=world[1])
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        zoom.ZoomConfig(lr=-1.0)
    with pytest.raises(ValueError, match="generator must be on meta"):
        zoom.diagnose(RedClassifier(), ["red"], generator=world[0], clip=world[1], device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graph_replay_equals_eager(world):
    G, clip, relevance = world
    G, clip = ColourGenerator().cuda(), ColourCLIP().cuda()
    clip.words[1:4] = torch.eye(3, 8, device="cuda") * 3.0
    relevance = {k: v.cuda() for k, v in world[2].items()}
    kw = dict(n_images=6, generator=G, clip=clip, relevance=relevance, tokenizer=colour_tokenizer, steps=20,
              lr=0.5, eps=8.0, threshold=0.3, progress=False, prefix="a face", gamma=0.5,
              consistency_prompts=("a face with red", "a face with green"))
    target = RedClassifier().cuda()
    graphed = zoom.diagnose(target, list(COLOURS), cuda_graph=True, **kw)
    eager = zoom.diagnose(target, list(COLOURS), cuda_graph=False, **kw)
    assert graphed.config["cuda_graph_used"] and not eager.config["cuda_graph_used"]
    torch.testing.assert_close(graphed.codes, eager.codes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(graphed.changes, eager.changes, atol=1e-4, rtol=1e-4)
    cpu = _diagnose(world, steps=20, gamma=0.5, consistency_prompts=("a face with red", "a face with green"))
    assert graphed.ranking()[0] == cpu.ranking()[0] == "red"


# --- the CLIP annotator of the decoupling check (thesis Fig. 3.6) -------------------------

def test_clip_scorer_reads_the_world_attributes_off_renders():
    zoo = pytest.importorskip("vmd_fast.zoo")
    from vmd_fast.domains import faces

    clip = zoo.load("clip")
    names = ["beard", "hat", "mouth_open"]
    scorer = zoom.ClipScorer.for_world(clip, names)
    assert scorer.attributes == names
    params = faces.sample_params(32, generator=torch.Generator().manual_seed(11))
    for i, name in enumerate(names):
        present = scorer(faces.render(params.replace(**{name: 1.0})).images)
        absent = scorer(faces.render(params.replace(**{name: 0.0})).images)
        assert present.shape == (32, 3) and bool(((present >= 0) & (present <= 1)).all())
        assert float((present[:, i] > 0.5).float().mean()) >= 0.9, name
        assert float((absent[:, i] < 0.5).float().mean()) >= 0.9, name
    # ZOOM's prompts of the world attributes are asked the same way as their names.
    by_prompt = zoom.ClipScorer.for_world(clip, [zoom.WORLD_PROMPTS[n] for n in names])
    images = faces.render(params).images
    torch.testing.assert_close(by_prompt(images), scorer(images))


def test_clip_scorer_default_prompts_and_bad_arguments(world):
    _, clip, _ = world
    scorer = zoom.ClipScorer(clip, ["red", "blue"], prefix="a face", tokenizer=colour_tokenizer)
    assert scorer.prompts == [(["a face with red"], ["a face without red"]), (["a face with blue"], ["a face without blue"])]
    with pytest.raises(ValueError, match="attributes must be a non-empty list"):
        zoom.ClipScorer(clip, [], tokenizer=colour_tokenizer)
    with pytest.raises(ValueError, match=r"one \(present, absent\) pair per attribute \(2\)"):
        zoom.ClipScorer(clip, ["red", "blue"], prompts=[("a", "b")], tokenizer=colour_tokenizer)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, H, W\)"):
        scorer(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        scorer(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        scorer(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images contains NaN or Inf"):
        scorer(torch.full((2, 3, 16, 16), float("nan")))
    assert zoom.ClipScorer.default_prompts("red", "a face") == ("a face with red", "a face without red")


def test_zoom_edits_on_the_colour_world_are_decoupled(world):
    """Each colour's counterfactuals move CLIP's score of that colour more than the others'."""
    _, clip, _ = world
    result = _diagnose(world)
    scorer = zoom.ClipScorer(clip, list(COLOURS), prompts=[(f"a face {c}", "a face") for c in COLOURS],
                             tokenizer=colour_tokenizer)
    matrix = result.decoupling(scorer)
    assert matrix.shape == (3, 3)
    record = result.metrics["decoupling"]
    assert record["annotator"] == "CLIP zero-shot" and record["diagonal"] > 2 * record["off_diagonal"], matrix
