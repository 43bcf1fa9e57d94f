"""The command line: errors a person can act on, and re-rendering a report."""

import json
import subprocess
import sys

import pytest
import torch

from vmd_fast import cli
from vmd_fast.diagnose import DiagnosisResult


def _saved_result(directory):
    result = DiagnosisResult(
        method="sia", target="toy", task="binary", attributes=["a", "b"],
        changes=torch.tensor([[0.1, 0.5], [0.2, 0.7]]), flipped=torch.tensor([[False, True], [False, True]]),
        originals=torch.rand(2, 3, 8, 8), counterfactuals=torch.rand(2, 2, 3, 8, 8), codes=torch.rand(2, 2),
    )
    result.save(str(directory))
    return result


def test_report_re_renders_a_saved_report(tmp_path, capsys):
    _saved_result(tmp_path / "run")
    assert cli.main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "index.html" in out and (tmp_path / "copy" / "index.html").exists()
    assert DiagnosisResult.load(str(tmp_path / "copy")).ranking() == ["b", "a"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["report", "/nonexistent-dir"], "is not a directory"),
        (["diagnose", "--target", "no.such.module:factory", "--device", "cpu"], "cannot import"),
        (["diagnose", "--target", "vmd_fast.cli:nothing", "--device", "cpu"], "has no 'nothing'"),
        (["diagnose", "--target", "vmd_fast.cli:build_parser", "--device", "cpu"], "not an nn.Module"),
        (["diagnose", "--device", "nonsense"], "is not a device"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_an_absent_gpu_is_a_clear_error(capsys):
    assert cli.main(["diagnose", "--device", "cuda"]) == 2
    assert "asks for a GPU" in capsys.readouterr().err


def test_debug_shows_the_trace():
    with pytest.raises(cli.UsageError):
        cli.main(["--debug", "report", "/nonexistent-dir"])


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "vmd_fast.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "diagnose" in done.stdout


# --- models for the command line's module:factory targets --------------------------------
class TinySmileClassifier(torch.nn.Module):
    """A trainable binary classifier of 'smiling' that accepts any image size."""

    task = "binary"
    label = "smiling"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


class ThreeDimensionalOutput(torch.nn.Module):
    """Outputs (N, 4, 5): no adapter reads that."""

    def forward(self, x):
        return x.mean(dim=1)[:, :4, :5]


def _write_red_images(folder, n=4):
    from PIL import Image

    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=gen) * 0.2 + 0.4
    x[:, 0] += 0.1  # red: RedClassifier says 1
    for i in range(n):
        pixels = (x[i].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"face_{i}.png")
    return [f"face_{i}.png" for i in range(n)]


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pgd_attack_on_a_folder_flips_every_image_within_budget(tmp_path, capsys):
    names = _write_red_images(tmp_path / "images")
    out = tmp_path / "attack"
    assert cli.main(["attack", "--method", "pgd", "--target", "test_sia_attacks:RedClassifier", "--images",
                     str(tmp_path / "images"), "--eps", "32/255", "--alpha", "4/255", "--steps", "20", "--out", str(out),
                     "--device", "cpu", "--save-originals"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "adversarial") in printed and "attack.csv" in printed
    rows = _read_csv(out / "attack.csv")
    assert [r["file"] for r in rows] == names and all(r["success"] == "1" for r in rows)
    assert all(float(r["linf"]) <= 32 / 255 + 1e-6 for r in rows)
    record = json.loads((out / "attack.json").read_text())
    assert record["success_rate"] == 1.0 and record["config"]["steps"] == 20
    from vmd_fast.io.images import load_image_folder

    adversarial, _ = load_image_folder(str(out / "adversarial"))
    original, _ = load_image_folder(str(out / "original"))
    assert (adversarial - original).abs().max() <= 32 / 255 + 1.5 / 255
    assert (adversarial[:, 0].mean(dim=(1, 2)) < 0.5).all()  # no longer red


def test_fgsm_attack_on_rendered_faces_writes_one_png_per_face(tmp_path):
    out = tmp_path / "fgsm"
    assert cli.main(["attack", "--method", "fgsm", "--target", "test_cli:TinySmileClassifier", "--n-images", "3",
                     "--eps", "4/255", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (out / "adversarial").iterdir()) == [f"world_{i:05d}.png" for i in range(3)]
    rows = _read_csv(out / "attack.csv")
    assert len(rows) == 3 and all(0 < float(r["linf"]) <= 4 / 255 + 1e-6 for r in rows)


def test_sia_attack_on_a_folder_changes_the_attribute_the_target_reads(tmp_path):
    import csv

    names = _write_red_images(tmp_path / "images")
    table = tmp_path / "attributes.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "redness", "blueness", "greenness"])
        writer.writerows([[name, 0.5, 0.5, 0.5] for name in names])
    out = tmp_path / "sia"
    assert cli.main(["attack", "--method", "sia", "--target", "test_sia_attacks:RedClassifier", "--editor",
                     "test_sia_attacks:ColourEditor", "--images", str(tmp_path / "images"), "--image-attributes",
                     str(table), "--steps", "200", "--out", str(out), "--device", "cpu"]) == 0
    rows = _read_csv(out / "attack.csv")
    assert all(r["success"] == "1" for r in rows)
    assert all(abs(float(r["change.redness"])) > 0.1 and float(r["change.blueness"]) == 0 for r in rows)
    assert json.loads((out / "attack.json").read_text())["images"][0]["attribute_change"]["greenness"] == 0
    # Its own attribute step: 20 steps of 1/255 move an attribute at most 20/255.
    short = tmp_path / "sia-short"
    assert cli.main(["attack", "--method", "sia", "--target", "test_sia_attacks:RedClassifier", "--editor",
                     "test_sia_attacks:ColourEditor", "--images", str(tmp_path / "images"), "--image-attributes",
                     str(table), "--steps", "20", "--step-attributes", "1/255", "--out", str(short),
                     "--device", "cpu"]) == 0
    rows = _read_csv(short / "attack.csv")
    assert all(abs(float(r["change.redness"])) == pytest.approx(20 / 255, abs=1e-5) for r in rows)
    assert json.loads((short / "attack.json").read_text())["config"]["step_attributes"] == pytest.approx(1 / 255)


def test_training_writes_weights_and_history_and_resumes(tmp_path, capsys):
    out = tmp_path / "trained"
    base = ["train", "adversarial", "--attack", "pgd", "--target", "test_cli:TinySmileClassifier", "--n-train", "16",
            "--n-eval", "8", "--batch-size", "8", "--steps", "1", "--out", str(out), "--device", "cpu"]
    assert cli.main(base + ["--epochs", "1"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    record = json.loads((out / "trained.json").read_text())
    assert len(record["history"]) == 1 and set(record["history"][0]) == {"loss_real", "loss_generated", "accuracy"}
    assert cli.main(base + ["--epochs", "2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(base + ["--epochs", "2", "--resume"]) == 0
    record = json.loads((out / "trained.json").read_text())
    assert len(record["history"]) == 2 and record["label"] == "smiling"
    from safetensors.torch import load_file

    trained = cli.load_target(str(out), torch.device("cpu"))
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in saved.items())
    assert not all(torch.equal(TinySmileClassifier().state_dict()[k], v) for k, v in saved.items())


def test_zoo_show_prints_metadata_and_metrics(capsys):
    assert cli.main(["zoo", "show", "smile_classifier"]) == 0
    out = capsys.readouterr().out
    assert "kind: target; task: binary; labels: smiling" in out
    assert "accuracy = 0.99" in out and "accuracy >= 0.95 [met]" in out
    assert cli.main(["zoo", "show", "smile_classifier", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "smile_classifier"


def _saved_zoom_result(directory):
    result = DiagnosisResult(
        method="zoom", target="toy", task="binary", attributes=["b", "c"],
        changes=torch.tensor([[0.3, 0.05], [0.4, 0.15]]), flipped=torch.tensor([[True, False], [True, False]]),
        config={"steps": 25},
    )
    result.save(str(directory))
    return result


def test_report_of_two_runs_writes_a_comparison(tmp_path, capsys):
    _saved_result(tmp_path / "sia")
    _saved_zoom_result(tmp_path / "zoom")
    assert cli.main(["report", str(tmp_path / "sia"), str(tmp_path / "zoom"), "--labels", "SIA run,ZOOM run",
                     "--out", str(tmp_path / "cmp")]) == 0
    assert str(tmp_path / "cmp" / "index.html") in capsys.readouterr().out
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "SIA run" in page and "ZOOM run" in page and page.count("data:image/png;base64,") == 3
    rows = {r["attribute"]: r for r in _read_csv(tmp_path / "cmp" / "comparison.csv")}
    assert list(rows) == ["b", "a", "c"]
    assert float(rows["b"]["SIA run.sensitivity"]) == pytest.approx(0.6)
    assert float(rows["b"]["ZOOM run.sensitivity"]) == pytest.approx(0.35)
    assert rows["a"]["ZOOM run.flip_rate"] == "" and float(rows["c"]["ZOOM run.flip_rate"]) == 0.0


def test_max_channels_none_lifts_the_cap_and_zero_is_refused(tmp_path, capsys):
    world = ["--target", "test_zoom:RedClassifier", "--generator", "test_zoom:ColourGenerator", "--clip",
             "test_distributed:colour_clip", "--attributes", "red,green", "--n-images", "2", "--steps", "2",
             "--threshold", "0.3", "--no-decoupling", "--device", "cpu"]
    assert cli.main(["diagnose", *world, "--max-channels", "none", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["max_channels"] is None
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        cli.main(["diagnose", *world, "--max-channels", "0", "--out", str(tmp_path / "zero")])
    assert exit_.value.code == 2 and "'0' is not a positive integer or 'none'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["attack", "--target", "test_cli:ThreeDimensionalOutput", "--n-images", "2"], "matches no adapter"),
        (["attack", "--target", "/nonexistent/weights.pth"], "no such file"),
        (["attack", "--images", "/nonexistent-folder", "--target", "test_sia_attacks:RedClassifier"], "is not a directory"),
        (["attack", "--method", "sia", "--images", "IMAGES", "--target", "test_sia_attacks:RedClassifier",
          "--editor", "test_sia_attacks:ColourEditor"], "--image-attributes"),
        (["diagnose", "--method", "sia", "--editor", "test_sia_attacks:ColourEditor", "--attributes", "smile,redness",
          "--target", "test_sia_attacks:RedClassifier"], "--attributes ['smile'] are not attributes of the editor"),
        (["diagnose", "--method", "sia", "--threshold", "0.3", "--target", "test_sia_attacks:RedClassifier"],
         "--threshold applies only to --method zoom, not --method sia"),
        (["diagnose", "--method", "sia", "--max-channels", "none", "--cache-dir", "DIR", "--no-decoupling",
          "--target", "test_sia_attacks:RedClassifier"],
         "--max-channels, --cache-dir, --no-decoupling apply only to --method zoom"),
        (["diagnose", "--editor", "test_sia_attacks:ColourEditor", "--target", "test_sia_attacks:RedClassifier"],
         "--editor applies only to --method sia, not --method zoom"),
        (["diagnose", "--threshold", "-0.1", "--target", "test_zoom:RedClassifier", "--generator", "test_zoom:ColourGenerator",
          "--clip", "test_distributed:colour_clip", "--attributes", "red"], "threshold must be a number >= 0"),
        (["attack", "--target", "WEIGHTS"], "name its architecture with --arch"),
        (["attack", "--target", "no_such_zoo_model"], "is neither a zoo model"),
        (["attack", "--target", "https://example.com/resnet50.pth", "--arch", "resnet50"], "is not a local file"),
        (["train", "adversarial", "--target", "test_sia_attacks:RedClassifier"], "has no parameters to train"),
        (["zoo", "show", "no_such_model"], "is not a zoo model"),
        (["report", "DIR", "/nonexistent-dir"], "is not a directory"),
    ],
)
def test_actionable_errors_are_one_line(argv, message, tmp_path, capsys):
    _write_red_images(tmp_path / "images")
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.pth")
    _saved_result(tmp_path / "run")
    substitutes = {"IMAGES": str(tmp_path / "images"), "WEIGHTS": str(tmp_path / "weights.pth"), "DIR": str(tmp_path / "run")}
    argv = [substitutes.get(a, a) for a in argv] + (["--device", "cpu"] if argv[0] in ("attack", "diagnose", "train") else [])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
