"""The experiment scripts end to end at their small size, on the tests' toy generator, CLIP
and editor (the zoo's generative assets are swapped for them) and the zoo's real targets.

Each test checks the files a script writes and that its verdict follows from its numbers.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the experiments/ package lives at the root

from experiments import common  # noqa: E402
from test_zoom import ColourCLIP, ColourGenerator, colour_tokenizer  # noqa: E402
from vmd_fast.domains.faces import EDITOR_ATTRIBUTES  # noqa: E402

zoo_assets = common.load_assets


class FaceColourEditor(nn.Module):
    """G(x, a) = x + (a - 0.5) W: each world attribute shifts the colours (a known editor)."""

    attributes = list(EDITOR_ATTRIBUTES)

    def __init__(self):
        super().__init__()
        self.register_buffer("W", torch.randn(len(self.attributes), 3, generator=torch.Generator().manual_seed(3)) * 0.2)

    def encode(self, x):
        return x

    def decode(self, h, a):
        return (h + ((a - 0.5) @ self.W)[:, :, None, None]).clamp(0, 1)


def toy_assets(names, assets_dir=None, device="cpu"):
    """The zoo's targets as they are; the generator, CLIP and editor of the toy worlds."""
    clip = ColourCLIP()
    clip.tokenizer = colour_tokenizer
    toys = {"generator": ColourGenerator(), "clip": clip, "editor": FaceColourEditor()}
    real = [n for n in names if n not in toys]
    loaded = zoo_assets(real, None, device) if real else {}
    return {n: toys[n] if n in toys else loaded[n] for n in names}


@pytest.fixture
def toy_world(monkeypatch):
    monkeypatch.setattr(common, "load_assets", toy_assets)


def _run(module, tmp_path, *extra):
    out = tmp_path / module.NAME
    assert module.main(["--size", "small", "--out", str(out), "--no-progress", *extra]) == 0
    record = json.loads((out / "results.json").read_text())
    markdown = (out / "results.md").read_text()
    assert record["experiment"] == module.NAME and record["size"] == "small"
    assert record["wall_seconds"] > 0 and record["environment"]["torch"] == torch.__version__
    assert record["relations"], "every experiment states its relation"
    for relation in record["relations"]:
        verdict = "holds" if relation["holds"] else "does not hold"
        assert f"**Relation {verdict}**: {relation['statement']}" in markdown
    assert markdown.count("|---|") >= 1
    charts = [line for line in markdown.splitlines() if line.startswith("![")]
    assert charts, "every experiment draws its numbers"
    for line in charts:
        assert (out / line.split("](")[1].rstrip(")")).stat().st_size > 1000
    return record, markdown


def test_missing_assets_are_named_in_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(common.MissingAssets) as error:
        common.load_assets(["smile_classifier", "no_such_generator", "no_such_clip"], str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and message.startswith("missing zoo assets: no_such_generator, no_such_clip (")
    assert str(tmp_path) in message and "smile_classifier" not in message

    from experiments import table_3_3_counterfactual_training as script

    def missing(names, assets_dir=None, device="cpu"):
        raise common.MissingAssets(message)

    monkeypatch.setattr(common, "load_assets", missing)
    assert script.main(["--size", "small", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().out.strip() == f"error: {message}"
    assert not (tmp_path / "x" / "results.json").exists()


def test_table_3_3_reports_accuracy_and_flip_resistance(toy_world, tmp_path):
    from experiments import table_3_3_counterfactual_training as script

    record, markdown = _run(script, tmp_path, "--epochs", "2", "--lr", "2e-4", "--n-diagnose", "3")
    assert {k: record["settings"][k] for k in ("epochs", "lr", "n_diagnose")} == {"epochs": 2, "lr": 2e-4,
                                                                                 "n_diagnose": 3}
    assert len(record["measurements"]["ct_history"]) == 2 and "CT: 2 epoch(s)" in markdown
    models = record["measurements"]["models"]
    assert set(models) == {"regular", "CT"}
    for row in models.values():
        assert {"accuracy", "single_FR-25", "single_FR-100", "multi_FR-25", "multi_FR-100"} <= set(row)
        assert all(0 <= v <= 1 for v in row.values())
    gain = [models["CT"][f"multi_FR-{k}"] - models["regular"][f"multi_FR-{k}"] for k in (25, 100)]
    accuracy_change = abs(models["CT"]["accuracy"] - models["regular"]["accuracy"])
    expected = min(gain) >= script.FR_MARGIN and accuracy_change <= script.ACCURACY_TOLERANCE
    assert record["relations"][0]["holds"] == expected
    assert f"{100 * models['regular']['accuracy']:.2f}" in markdown
    assert record["arguments"]["ct_labels"] == "prediction" and "regular model's predicted class" in markdown


def test_table_2_7_2_8_reports_accuracy_under_attack_and_sdar(toy_world, tmp_path):
    from experiments import table_2_7_2_8_sia_adversarial as script

    record, markdown = _run(script, tmp_path)
    models = record["measurements"]["models"]
    assert list(models) == ["Non-Adv", "PGD-Adv", "SPT-Adv", "SIA-Adv"]
    for row in models.values():
        assert {"clean", "FGSM 1.5/255", "PGD 1.5/255", "SIA 1.5/255", "SDAR 1.5/255"} <= set(row)
        assert "eyeglasses" not in row["sensitivity 1.5/255"] and len(row["sensitivity 1.5/255"]) == 11
        assert row["SDAR 1.5/255"] >= 0
    regular, adv = models["Non-Adv"], models["SIA-Adv"]
    expected = adv["SIA 1.5/255"] > regular["SIA 1.5/255"] and adv["SDAR 1.5/255"] < regular["SDAR 1.5/255"]
    assert record["relations"][0]["holds"] == expected
    assert "Table 2.7" in markdown and "Table 2.8" in markdown


def test_table_2_2_2_6_reports_attack_success_and_the_ablation(toy_world, tmp_path):
    from experiments import table_2_2_2_6_attack_success as script

    record, markdown = _run(script, tmp_path)
    table_22, table_26 = record["measurements"]["table_2_2"], record["measurements"]["table_2_6"]
    assert list(table_22) == list(script.TABLE_2_2_TARGETS)
    for rates in table_22.values():
        assert list(rates) == ["1.5/255", "4/255"]
        assert all(set(r) == {"FGSM", "PGD", "SIA"} and all(0 <= v <= 1 for v in r.values()) for r in rates.values())
    assert list(table_26) == ["eyeglasses_classifier"] and list(table_26["eyeglasses_classifier"]) == list(script.ABLATION)
    # Table 2.2's SIA at the first bound is the ablation's Full run, not a second one.
    assert table_22["eyeglasses_classifier"]["1.5/255"]["SIA"] == table_26["eyeglasses_classifier"]["Full"]
    for relation, name in zip(record["relations"], script.TABLE_2_2_TARGETS):
        r = table_22[name]["1.5/255"]
        assert relation["holds"] == (r["SIA"] > r["PGD"] > r["FGSM"])
    row = table_26["eyeglasses_classifier"]
    assert record["relations"][-1]["holds"] == (row["Full"] >= max(row["I"], row["A"]))
    assert "Table 2.2" in markdown and "| OR |" in markdown and "attribute step 4/255" in markdown


def test_sia_reconstruction_row_is_the_editor_output():
    """OR runs SIA with both steps 0: its adversary is G(x, a), whatever the target."""
    from vmd_fast import sia

    editor, x = FaceColourEditor(), torch.rand(3, 3, 8, 8)
    a = torch.rand(3, len(EDITOR_ATTRIBUTES))
    from experiments import table_2_2_2_6_attack_success as script

    result = sia.attack(lambda im: im.mean(dim=(1, 2, 3))[:, None] - 0.5, x, a, editor=editor,
                        **script.ABLATION["OR"])
    torch.testing.assert_close(result.adversarial, editor.decode(x, a))


def test_table_2_9_compares_every_strategy_on_a_balanced_set(toy_world, tmp_path):
    from experiments import table_2_9_imbalanced as script

    record, markdown = _run(script, tmp_path)
    scores = record["measurements"]["strategies"]
    assert tuple(scores) == script.STRATEGIES
    assert 0 < record["measurements"]["n_positive"] < 0.05 * record["measurements"]["n_train"]
    assert record["measurements"]["n_adversaries"] == 2 * record["measurements"]["n_positive"]
    for row in scores.values():
        assert 0 <= row["accuracy"] <= 1 and (row["recall"] is None or 0 <= row["recall"] <= 1)
    expected = all(scores["SIA"]["recall"] > scores[k]["recall"]
                   for k in ("none", "reweighting", "resampling", "CutMix", "AutoAugment"))
    assert record["relations"][0]["holds"] == expected
    for name in script.STRATEGIES:
        assert f"| {name} |" in markdown


def test_cutmix_keeps_the_positive_share_as_the_label():
    from experiments import table_2_9_imbalanced as script

    x, y = torch.rand(8, 3, 16, 16), torch.tensor([1.0, 0.0] * 4)
    mixed, soft = None, None
    apply = script.cutmix_transform(seed=0)
    for _ in range(10):  # applied with probability 0.5
        mixed, soft = apply(x, y)
        if not torch.equal(mixed, x):
            break
    assert soft.shape == (8,) and ((soft >= 0) & (soft <= 1)).all()
    assert not torch.equal(soft, y), "a mixed batch gets mixed labels"


@pytest.mark.parametrize("flag,value", [("--epochs", "0"), ("--lr", "-1e-4"), ("--lr", "inf"), ("--n-diagnose", "1.5")])
def test_ct_schedule_flags_reject_bad_values(flag, value, capsys):
    from experiments import planted_bias_ct as script

    with pytest.raises(SystemExit) as stop:
        script.main([flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_planted_bias_ct_reports_sensitivity_and_group_accuracies(toy_world, tmp_path):
    from experiments import planted_bias_ct as script

    record, markdown = _run(script, tmp_path)
    models = record["measurements"]["models"]
    assert list(models) == ["biased", "fine-tuned, no counterfactuals", "CT"]
    assert record["measurements"]["bias"]["spurious"] == "hat"
    for row in models.values():
        assert "smiling" not in row["zoom_sensitivity"] and "hat" in row["zoom_sensitivity"]
        assert 1 <= row["zoom_rank"] <= len(row["zoom_sensitivity"])
        groups = [row[f"label={l},spurious={s}"] for l in (0, 1) for s in (0, 1)]
        assert row["worst_group_accuracy"] == min(groups)
    # The zoo's biased smile classifier reads the hat: its worst group is nearly always wrong.
    assert models["biased"]["worst_group_accuracy"] < 0.2 and models["biased"]["renderer_flip_rate"] > 0.8
    before, after = models["biased"], models["CT"]
    expected = (after["zoom_sensitivity"]["hat"] < before["zoom_sensitivity"]["hat"]
                and after["worst_group_accuracy"] > before["worst_group_accuracy"])
    assert record["relations"][0]["holds"] == expected
    assert "worst-group accuracy" in markdown


def test_run_all_collects_the_tables_and_names_missing_assets(toy_world, tmp_path, monkeypatch):
    from experiments import run_all

    def no_editor(names, assets_dir=None, device="cpu"):
        if "editor" in names:
            raise common.MissingAssets("missing zoo assets: editor (looked in 'nowhere')")
        return toy_assets(names, assets_dir, device)

    monkeypatch.setattr(common, "load_assets", no_editor)
    doc = tmp_path / "experiments.md"
    assert run_all.main(["--size", "small", "--out", str(tmp_path / "out"), "--doc", str(doc), "--no-progress",
                         "--only", "table_3_3_counterfactual_training", "table_2_9_imbalanced"]) == 0
    page = doc.read_text()
    record = json.loads((tmp_path / "out" / "table_3_3_counterfactual_training" / "results.json").read_text())
    verdict = "holds" if record["relations"][0]["holds"] else "does not hold"
    assert f"| `table_3_3_counterfactual_training` | {verdict} | {record['wall_seconds']:.0f} | small |" in page
    assert "| `table_2_9_imbalanced` | not run |" in page and "missing zoo assets: editor" in page
    assert common.environment()["cpu"] in page and torch.__version__ in page
    assert "### Table 3.3: counterfactual training" in page
    collected = tmp_path / "collected.md"
    assert run_all.main(["--collect-only", "--out", str(tmp_path / "out"), "--doc", str(collected)]) == 0
    collected_page = collected.read_text()
    section = (tmp_path / "out" / "table_3_3_counterfactual_training" / "results.md").read_text()
    tables = "\n".join(line for line in section.splitlines() if not line.startswith("!["))
    assert tables in collected_page and "| `planted_bias_ct` | not run |" in collected_page
    # the charts are copied next to the page and linked from it
    chart = "experiments/table_3_3_counterfactual_training/accuracy_and_flip_resistance.png"
    assert f"]({chart})" in collected_page and (tmp_path / chart).exists()


def test_an_experiment_repeats_exactly_for_a_fixed_seed(toy_world, tmp_path):
    from experiments import table_2_9_imbalanced as script

    first, _ = _run(script, tmp_path / "a")
    second, _ = _run(script, tmp_path / "b")
    assert first["measurements"] == second["measurements"]
