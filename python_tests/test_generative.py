"""The generative models of the default world: generator (ZOOM), editor (SIA) and CLIP.

Interface tests run on small untrained models; the acceptance tests load the shipped
assets and re-measure the issue's figures on a small fresh sample of renders.
"""

import pytest
import torch

import vmd_fast.ops as ops
from vmd_fast.models.clip import CLIPConfig, build_clip, normalize_images, tokenizer
from vmd_fast.models.editor import AttributeEditor, EditorConfig
from vmd_fast.models.stylegan import Generator, GeneratorConfig, LatentFeatures, latent_to_uniform

SMALL_GENERATOR = GeneratorConfig(z_dim=16, w_dim=32, mapping_layers=2, channels=(32, 32, 16, 8, 8))
SMALL_EDITOR = EditorConfig(attributes=("smiling", "hat", "skin_tone"), channels=(8, 16, 32))
SMALL_CLIP = CLIPConfig(embed_dim=32, vision_width=8, vision_head_width=32, text_width=32,
                        text_layers=1, text_heads=1)


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return Generator(SMALL_GENERATOR).eval()


@pytest.fixture
def editor():
    torch.manual_seed(0)
    return AttributeEditor(SMALL_EDITOR).eval()


@pytest.fixture(scope="module")
def small_clip():
    torch.manual_seed(0)
    return build_clip(SMALL_CLIP).eval()


# ------------------------------------------------------------------------ generator


def test_styles_round_trip_through_synthesize(generator, gen):
    z = torch.randn(3, generator.z_dim, generator=gen)
    styles = generator.mapping_to_styles(z)
    assert [s.shape for s in styles] == [(3, d) for d in generator.style_space_dims]
    assert len(generator.style_names) == len(styles)
    flat = generator.flatten_styles(styles)
    assert flat.shape == (3, generator.num_style_channels)
    for a, b in zip(generator.unflatten_styles(flat), styles):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = generator.synthesize(styles)
    assert x.shape == (3, 3, 64, 64)
    assert 0 <= x.min() and x.max() <= 1
    torch.testing.assert_close(generator(z), x)


def test_editing_one_style_channel_changes_the_image(generator, gen):
    z = torch.randn(2, generator.z_dim, generator=gen)
    flat = generator.flatten_styles(generator.mapping_to_styles(z))
    edited = flat.clone()
    channel = generator.style_space_dims[0] + 3  # a channel of the 4x4 toRGB layer
    edited[:, channel] += 5.0
    x = generator.synthesize(generator.unflatten_styles(flat))
    x_edit = generator.synthesize(generator.unflatten_styles(edited))
    assert (x_edit - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_generator_is_deterministic_for_a_seed():
    def sample():
        torch.manual_seed(7)
        G = Generator(SMALL_GENERATOR).eval()
        z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3))
        return G(z)

    torch.testing.assert_close(sample(), sample(), rtol=0, atol=0)


def test_ssim_and_clip_losses_reach_the_styles(generator, small_clip, gen):
    z = torch.randn(2, generator.z_dim, generator=gen)
    with torch.no_grad():
        x0 = generator(z)
        flat = generator.flatten_styles(generator.mapping_to_styles(z))
    delta = torch.zeros_like(flat, requires_grad=True)
    x = generator.synthesize(generator.unflatten_styles(flat + delta))
    text = small_clip.encode_text(tokenizer()(["a face with eyeglasses"]), normalize=True)
    image = small_clip.encode_image(normalize_images(x, small_clip), normalize=True)
    loss = (1 - ops.ssim(x, x0, backend="torch")) - (image @ text.T).mean()
    loss.backward()
    assert torch.isfinite(delta.grad).all()
    for g in generator.unflatten_styles(delta.grad):  # every layer's styles take part
        assert g.abs().sum() > 0


def test_generator_config_rejects_a_wrong_channel_count():
    with pytest.raises(ValueError, match="channels needs 5 entries"):
        GeneratorConfig(resolution=64, channels=(8, 8))
    with pytest.raises(ValueError, match="latent_levels needs one entry"):
        GeneratorConfig(z_dim=3, latent_levels=(0, 2))


def test_latent_features_one_hot_code_the_discrete_coordinates(gen):
    z = torch.randn(5, 3, generator=gen)
    features = LatentFeatures([0, 2, 3])(z)  # (N, 3 + 2 + 3)
    u = latent_to_uniform(z)
    torch.testing.assert_close(features[:, :3], u * 2 - 1)
    binary, ternary = features[:, 3:5], features[:, 5:8]
    assert ((binary == 1).sum(dim=1) == 1).all() and ((ternary == 1).sum(dim=1) == 1).all()
    torch.testing.assert_close(binary.argmax(dim=1), (u[:, 1] * 2).long())
    torch.testing.assert_close(ternary.argmax(dim=1), (u[:, 2] * 3).long())


def test_generator_with_discrete_levels_maps_and_synthesizes(gen):
    config = GeneratorConfig(z_dim=4, w_dim=16, mapping_layers=1, channels=(16, 16, 8, 8, 8),
                             latent_levels=(0, 2, 4, 0))
    G = Generator(config).eval()
    assert G.mapping.layers[0].weight.shape[1] == 4 + 2 + 4
    assert G(torch.randn(2, 4, generator=gen)).shape == (2, 3, 64, 64)


# ------------------------------------------------------------------------ editor


def test_editor_shapes_and_attribute_names(editor, gen):
    x = torch.rand(2, 3, 64, 64, generator=gen)
    h = editor.encode(x)
    assert [f.shape for f in h] == [(2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8)]
    a = torch.rand(2, len(editor.attributes), generator=gen)
    out = editor.decode(h, a)
    assert out.shape == (2, 3, 64, 64)
    assert 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(editor(x, a), out)
    assert editor.attributes == ["smiling", "hat", "skin_tone"]


def test_editor_output_depends_on_the_attributes(editor, gen):
    x = torch.rand(2, 3, 64, 64, generator=gen)
    a = torch.zeros(2, 3)
    b = a.clone()
    b[:, 1] = 1
    assert (editor(x, a) - editor(x, b)).abs().max() > 1e-4


def test_gradients_reach_the_editor_attributes_and_pixels(editor, small_clip, gen):
    x = torch.rand(2, 3, 64, 64, generator=gen).requires_grad_()
    a = torch.rand(2, 3, generator=gen).requires_grad_()
    edit = editor(x, a)
    text = small_clip.encode_text(tokenizer()(["a smiling face"]), normalize=True)
    image = small_clip.encode_image(normalize_images(edit, small_clip), normalize=True)
    loss = (1 - ops.ssim(edit, x.detach(), backend="torch")) - (image @ text.T).mean()
    loss.backward()
    assert a.grad.abs().min() > 0
    assert x.grad.abs().sum() > 0


def test_editor_config_checks_its_arguments():
    with pytest.raises(ValueError, match="at least one attribute"):
        EditorConfig(attributes=())
    with pytest.raises(ValueError, match="shortcut_layers"):
        EditorConfig(attributes=("hat",), channels=(8, 16), shortcut_layers=2)


# ------------------------------------------------------------------------ CLIP


def test_clip_is_an_open_clip_model_with_the_standard_tokenizer(small_clip):
    import open_clip

    assert isinstance(small_clip, open_clip.model.CLIP)
    tok = tokenizer()
    assert tok.vocab_size == 49408
    tokens = tok(["a face with eyeglasses", "a smiling face"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    torch.testing.assert_close(tokens, open_clip.tokenize(["a face with eyeglasses",
                                                           "a smiling face"]))
    assert small_clip.token_embedding.num_embeddings == 49408


def test_clip_encodes_64px_images_in_unit_range(small_clip, gen):
    x = torch.rand(3, 3, 64, 64, generator=gen)
    torch.testing.assert_close(normalize_images(x, small_clip), x)  # [0, 1] pixels as they are
    image = small_clip.encode_image(x, normalize=True)
    text = small_clip.encode_text(tokenizer()(["a face"] * 2), normalize=True)
    assert image.shape == (3, 32) and text.shape == (2, 32)
    torch.testing.assert_close(image.norm(dim=1), torch.ones(3))


def test_normalize_images_resizes_for_other_clip_models(small_clip, gen):
    x = torch.rand(1, 3, 32, 32, generator=gen)
    assert normalize_images(x, small_clip).shape == (1, 3, 64, 64)


# ------------------------------------------------------------------------ held-out prompts


def test_zero_shot_prompts_are_never_training_captions():
    import random

    from vmd_fast.domains import BINARY_ATTRIBUTES, describe, sample_params
    from vmd_fast.zoo.recipes.clip import (
        HELD_OUT_TEMPLATES,
        TRAIN_TEMPLATES,
        caption,
        zero_shot_prompts,
    )

    assert not set(HELD_OUT_TEMPLATES) & set(TRAIN_TEMPLATES)
    for template in HELD_OUT_TEMPLATES:  # no held-out wrapper text occurs in a training template
        for part in filter(None, (p.strip(" .") for p in template.split("{}"))):
            assert not any(part in t for t in TRAIN_TEMPLATES), part
    prompts = {p for name in BINARY_ATTRIBUTES for pair in zero_shot_prompts(name) for p in pair}
    assert len(prompts) == 2 * len(BINARY_ATTRIBUTES) * len(HELD_OUT_TEMPLATES)
    params = sample_params(4000, torch.Generator().manual_seed(0))
    rng = random.Random(0)
    captions = {caption(describe(params, i), rng) for i in range(len(params))}
    assert not prompts & captions


# ------------------------------------------------------------------------ shipped assets
#
# The stored metrics were measured on large fresh samples; here each asset is re-measured on a
# small fresh one (other seeds), which must meet the threshold up to its sampling
# error: 3 standard errors of a proportion at the threshold.


def _require_shipped(name):
    from vmd_fast.zoo.assets import asset_paths

    weights, meta = asset_paths(name)
    if not (weights.exists() and meta.exists()):
        pytest.skip(f"{name} is not shipped (python -m vmd_fast.zoo train {name})")
    import vmd_fast.zoo as zoo

    return zoo.load(name)


def _sampling_margin(threshold: float, n: int) -> float:
    return 3 * (threshold * (1 - threshold) / n) ** 0.5


def _stored_metrics_meet_checks(module):
    from vmd_fast.zoo.assets import failed_checks

    info = module.zoo_info
    assert not failed_checks(info["metrics"], {m: tuple(c) for m, c in info["checks"].items()})


def test_shipped_generator_covers_every_attribute():
    from vmd_fast.zoo.recipes import generator as recipe

    G = _require_shipped("generator")
    _stored_metrics_meet_checks(G)
    n = 256
    config = {**G.zoo_info["config"], "eval_seed": 7_001, "eval_n": n}
    with torch.no_grad():
        metrics = recipe.evaluate(G, config)
    margin = _sampling_margin(0.1, n)
    assert metrics["attribute_rate_min"] >= 0.10 - margin, metrics["attribute_rate"]
    assert metrics["attribute_rate_max"] <= 0.90 + margin, metrics["attribute_rate"]


def test_shipped_generator_is_deterministic():
    G = _require_shipped("generator")
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(G(z), G(z), rtol=0, atol=0)


def test_shipped_editor_reconstructs_and_edits():
    from vmd_fast.zoo.recipes import editor as recipe

    E = _require_shipped("editor")
    _stored_metrics_meet_checks(E)
    assert E.attributes == list(recipe.EDITOR_ATTRIBUTES)
    n = 96
    config = {**E.zoo_info["config"], "eval_seed": 7_002, "eval_n": n, "batch_eval": 48}
    with torch.no_grad():
        metrics = recipe.evaluate(E, config)
    assert metrics["reconstruction_psnr"] >= 25.0
    assert metrics["edit_success_min"] >= 0.80 - _sampling_margin(0.8, n), metrics["edit_success"]


def test_shipped_clip_zero_shot_on_held_out_prompts():
    import open_clip

    from vmd_fast.zoo.recipes import clip as recipe

    model = _require_shipped("clip")
    assert isinstance(model, open_clip.model.CLIP)
    _stored_metrics_meet_checks(model)
    n = 400
    config = {**model.zoo_info["config"], "eval_seed": 7_003, "eval_n": n, "batch_eval": 200}
    with torch.no_grad():
        metrics = recipe.evaluate(model, config)
    margin = _sampling_margin(0.85, n)
    assert metrics["zero_shot_accuracy_min"] >= 0.85 - margin, metrics["zero_shot_accuracy"]
