"""The synthetic face world: determinism, ground truth consistent with the pixels,
counterfactuals that change only their attribute, planted correlations and imbalance."""

import pytest
import torch
import torch.nn.functional as F

from vmd_fast.domains import (
    BINARY_ATTRIBUTES,
    CATEGORICAL_ATTRIBUTES,
    EDITOR_ATTRIBUTES,
    LANDMARK_NAMES,
    PARAM_DIM,
    PART_NAMES,
    Correlation,
    FaceParams,
    attribute_vector,
    describe,
    make_dataset,
    params_from_uniform,
    render,
    sample_params,
    save_grid,
)

PART = {name: k for k, name in enumerate(PART_NAMES)}
LANDMARK = {name: k for k, name in enumerate(LANDMARK_NAMES)}


def faces(n=64, seed=0):
    return sample_params(n, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def batch():
    params = faces(256, seed=3)
    return params, render(params)


def test_same_seed_renders_the_same_faces():
    a, b = render(faces(16, seed=7)), render(faces(16, seed=7))
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.landmarks, b.landmarks)
    assert torch.equal(a.segmentation, b.segmentation)
    assert not torch.equal(a.images, render(faces(16, seed=8)).images)


def test_sample_params_is_params_from_uniform_of_the_generator_draw():
    u = torch.rand(32, PARAM_DIM, generator=torch.Generator().manual_seed(5))
    a, b = params_from_uniform(u), faces(32, seed=5)
    for name, value in a.attributes().items():
        assert torch.equal(value, getattr(b, name)), name


def test_render_shapes_dtypes_and_ranges(batch):
    params, out = batch
    n = len(params)
    assert out.images.shape == (n, 3, 64, 64) and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1
    assert out.landmarks.shape == (n, len(LANDMARK_NAMES), 2)
    assert out.segmentation.shape == (n, 64, 64) and out.segmentation.dtype == torch.int64
    assert out.segmentation.min() >= 0 and out.segmentation.max() < len(PART_NAMES)
    assert (out.landmarks >= 0).all() and (out.landmarks <= 63).all()


def test_render_is_batch_independent(batch):
    params, out = batch
    alone = render(params[5])
    assert torch.allclose(alone.images[0], out.images[5], atol=1e-6)
    assert torch.equal(alone.segmentation[0], out.segmentation[5])


def test_edges_are_antialiased(batch):
    # smooth masks: many pixels take values strictly between their neighbours' colours
    _, out = batch
    gray = out.images.mean(1)
    levels = torch.unique((gray * 255).round()).numel()
    assert levels > 200


def _part_at(out, landmark):
    xy = out.landmarks[:, LANDMARK[landmark]].round().long()
    return out.segmentation[torch.arange(len(xy)), xy[:, 1], xy[:, 0]]


def test_landmarks_lie_on_their_parts(batch):
    _, out = batch
    for eye in ("left_eye", "right_eye"):
        assert (_part_at(out, eye) == PART["eyes"]).float().mean() >= 0.98, eye
    assert (_part_at(out, "nose_tip") == PART["nose"]).float().mean() >= 0.98
    mouth = F.max_pool2d((out.segmentation == PART["mouth"]).float().unsqueeze(1), 5, 1, 2).squeeze(
        1
    )
    for corner in ("mouth_left", "mouth_right"):
        xy = out.landmarks[:, LANDMARK[corner]].round().long()
        near = mouth[torch.arange(len(xy)), xy[:, 1], xy[:, 0]]
        assert near.mean() >= 0.98, corner
    chin = _part_at(out, "chin")
    assert (
        torch.isin(chin, torch.tensor([PART["skin"], PART["facial_hair"]])).float().mean() >= 0.98
    )
    left, right = (
        out.landmarks[:, LANDMARK["left_eye"], 0],
        out.landmarks[:, LANDMARK["right_eye"], 0],
    )
    assert (left < right).all()


def test_parts_present_iff_their_attribute(batch):
    params, out = batch
    present = lambda part: (out.segmentation == PART[part]).flatten(1).any(1).float()  # noqa: E731
    assert torch.equal(present("glasses"), params.eyeglasses)
    assert torch.equal(present("hat"), params.hat)
    assert torch.equal(present("earrings"), params.earrings)
    assert torch.equal(present("facial_hair"), torch.maximum(params.beard, params.moustache))
    for part in ("background", "skin", "hair", "eyes", "brows", "nose", "mouth"):
        assert present(part).all(), part


def test_background_pixels_have_the_background_colour(batch):
    params, out = batch
    background = out.segmentation == PART["background"]  # (N, H, W)
    for cls in range(len(CATEGORICAL_ATTRIBUTES["background"])):
        chosen = params.background == cls
        pixels = out.images.permute(0, 2, 3, 1)[background & chosen.view(-1, 1, 1)]  # (M, 3)
        others = out.images.permute(0, 2, 3, 1)[background & ~chosen.view(-1, 1, 1)]
        centre = pixels.mean(0)
        # one class's background pixels are closer to their mean than to other classes'
        assert (pixels - centre).norm(dim=1).mean() < (others - centre).norm(dim=1).mean() / 2


def test_hair_pixels_follow_hair_colour(batch):
    params, out = batch
    plain = params.grey_hair == 0
    hair = (out.segmentation == PART["hair"]) & plain.view(-1, 1, 1)
    means = []
    for cls in range(len(CATEGORICAL_ATTRIBUTES["hair_color"])):
        mask = hair & (params.hair_color == cls).view(-1, 1, 1)
        means.append(out.images.permute(0, 2, 3, 1)[mask].mean(0))
    black, brown, blond, red = means
    assert black.sum() < brown.sum() < blond.sum()
    assert red[0] > red[2] + 0.3 and blond[1] > red[1]


@pytest.mark.parametrize(
    "attribute",
    [
        "eyeglasses",
        "hat",
        "beard",
        "moustache",
        "earrings",
        "lipstick",
        "bangs",
        "smiling",
        "mouth_open",
        "heavy_makeup",
        "grey_hair",
        "male",
    ],
)
def test_replace_changes_only_that_attribute(attribute):
    params = faces(48, seed=11)
    off, on = params.replace(**{attribute: 0.0}), params.replace(**{attribute: 1.0})
    for name in params.attributes():
        if name != attribute:
            assert torch.equal(getattr(off, name), getattr(params, name))
    a, b = render(off), render(on)
    changed = (a.images - b.images).abs().amax(1) > 1e-3  # (N, H, W)
    assert (changed.flatten(1).sum(1) >= 4).all(), "the attribute must be visible on every face"
    if attribute in ("smiling",):
        moved = [LANDMARK["mouth_left"], LANDMARK["mouth_right"]]
        keep = [k for k in range(len(LANDMARK_NAMES)) if k not in moved]
        assert torch.equal(a.landmarks[:, keep], b.landmarks[:, keep])
    else:
        assert torch.equal(a.landmarks, b.landmarks)
    if attribute in ("heavy_makeup", "grey_hair", "male"):
        return  # spread over the face and hair: no single part to confine them to
    parts = {
        "eyeglasses": ["glasses"],
        "hat": ["hat"],
        "beard": ["facial_hair"],
        "moustache": ["facial_hair"],
        "earrings": ["earrings"],
        "lipstick": ["mouth"],
        "bangs": ["hair"],
        "smiling": ["mouth"],
        "mouth_open": ["mouth"],
    }[attribute]
    ids = torch.tensor([PART[p] for p in parts])
    region = (a.segmentation != b.segmentation) | torch.isin(b.segmentation, ids)
    rows, cols = region.any(2), region.any(1)  # (N, H), (N, W)
    if attribute == "bangs":
        # the fringe keeps the label hair where it meets hair: confine it to the rows of the
        # relabelled forehead, across the whole width
        rows = (a.segmentation != b.segmentation).any(2)
        cols = torch.ones_like(cols)
    # the bounding box of the attribute's region (the lenses lie inside the frames), plus 2 px
    box = rows.unsqueeze(2) & cols.unsqueeze(1)
    for k in range(len(params)):
        r, c = rows[k].nonzero().flatten(), cols[k].nonzero().flatten()
        box[k, r.min() : r.max() + 1, c.min() : c.max() + 1] = True
    allowed = F.max_pool2d(box.float().unsqueeze(1), 5, 1, 2).squeeze(1) > 0
    outside = changed & ~allowed
    assert outside.sum() == 0, f"{attribute} changed {int(outside.sum())} pixels outside its region"


def test_independent_attributes_by_default():
    params = faces(20000, seed=1)
    a = attribute_vector(params, BINARY_ATTRIBUTES)
    assert torch.allclose(a.mean(0), torch.full((a.shape[1],), 0.5), atol=0.02)
    corr = torch.corrcoef(a.T)
    off = corr - torch.eye(len(BINARY_ATTRIBUTES))
    assert off.abs().max() < 0.04
    for name, classes in CATEGORICAL_ATTRIBUTES.items():
        freq = torch.bincount(getattr(params, name), minlength=len(classes)).float() / len(params)
        assert torch.allclose(freq, torch.full_like(freq, 1 / len(classes)), atol=0.02), name


def test_planted_correlation_is_realised():
    params = sample_params(
        20000, torch.Generator().manual_seed(2), [Correlation("smiling", "hat", 0.95)]
    )
    smiling = params.smiling == 1
    assert abs(float(params.hat[smiling].mean()) - 0.95) < 0.01
    assert abs(float(params.hat[~smiling].mean()) - 0.05) < 0.01
    assert abs(float(params.smiling.mean()) - 0.5) < 0.02
    assert abs(float(params.beard[smiling].mean()) - 0.5) < 0.03  # the others stay independent


def test_imbalanced_dataset_is_one_to_ninety_nine():
    ds = make_dataset(20000, seed=4, label="eyeglasses", imbalance=0.01)
    assert abs(float(ds.params.eyeglasses.mean()) - 0.01) < 0.003
    assert abs(float(ds.params.hat.mean()) - 0.5) < 0.02


def test_biased_and_imbalanced_together():
    ds = make_dataset(
        20000, seed=4, label="smiling", imbalance=0.1, correlations=[("smiling", "hat", 0.9)]
    )
    p = ds.params
    assert abs(float(p.smiling.mean()) - 0.1) < 0.01
    assert abs(float((p.hat == p.smiling).float().mean()) - 0.9) < 0.01


def test_invalid_correlations_and_priors_are_rejected():
    with pytest.raises(ValueError, match="binary"):
        Correlation("smiling", "hair_color", 0.9)
    with pytest.raises(ValueError, match="p must be"):
        Correlation("smiling", "hat", 1.5)
    with pytest.raises(ValueError, match="binary label"):
        make_dataset(10, seed=0, label="hair_color", imbalance=0.01)


def test_attribute_vector_round_trips_through_replace_from_vector():
    params = faces(64, seed=9)
    names = EDITOR_ATTRIBUTES + ("yaw", "hair_color=black", "hair_color=blond")
    vector = attribute_vector(params, names)
    assert vector.shape == (64, len(names))
    assert vector.min() >= 0 and vector.max() <= 1
    edited = vector.clone()
    edited[:, names.index("smiling")] = 1 - edited[:, names.index("smiling")]
    edited[:, names.index("hair_color=blond")] = 2.0  # the largest one-hot column wins
    new = params.replace_from_vector(edited.clamp(max=1.5), names)
    assert torch.equal(new.smiling, 1 - params.smiling)
    assert (new.hair_color == CATEGORICAL_ATTRIBUTES["hair_color"].index("blond")).all()
    assert torch.equal(new.hat, params.hat) and torch.equal(new.face_width, params.face_width)


def test_replace_accepts_class_names_and_rejects_unknown_fields():
    params = faces(4)
    assert (params.replace(hair_color="red").hair_color == 3).all()
    with pytest.raises(KeyError, match="unknown face parameter"):
        params.replace(sunglasses=1.0)
    with pytest.raises(ValueError, match="not a class"):
        params.replace(hair_color="green")


def test_params_index_cat_and_describe():
    params = faces(10)
    assert len(params[2:5]) == 3 and len(params[torch.tensor([0, 9])]) == 2
    assert len(FaceParams.cat([params[:3], params[3:]])) == 10
    d = describe(params, 4)
    assert (
        set(BINARY_ATTRIBUTES) <= set(d) and d["hair_color"] in CATEGORICAL_ATTRIBUTES["hair_color"]
    )
    assert d["smiling"] == bool(params.smiling[4])


def test_dataset_items_match_batches_and_work_with_a_dataloader():
    ds = make_dataset(12, seed=0, label="hair_color")
    batch = ds.batch(slice(0, 4))
    item = ds[2]
    assert torch.equal(item["image"], batch["image"][2])
    assert item["label"].dtype == torch.int64
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    first = next(iter(loader))
    assert first["image"].shape == (5, 3, 64, 64)
    assert torch.equal(first["image"][1], ds[1]["image"])
    assert sum(b["image"].shape[0] for b in ds.batches(5)) == 12


def test_save_grid_writes_a_png(tmp_path):
    from PIL import Image

    path = save_grid(render(faces(6)).images, tmp_path / "grid.png", nrow=3, padding=2, scale=2)
    with Image.open(path) as image:
        assert image.size == ((3 * 66 + 2) * 2, (2 * 66 + 2) * 2)
