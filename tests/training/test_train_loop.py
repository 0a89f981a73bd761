"""The training loop on tiny random-init models and synthetic images (CPU, seconds)."""

import json

import pytest
import torch
from train_helpers import losses, make_folder, tiny_hf_vit, train_args

from natix_miner.training.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "synth", n_per_class=16)


def test_tiny_timm_model_trains_and_exports(data, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    uploads = []

    class FakeApi:  # the hub boundary: no network
        def __init__(self, token=None):
            pass

        def create_repo(self, repo, **kw):
            pass

        def upload_folder(self, **kw):
            uploads.append((kw["repo_id"], kw["folder_path"]))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "run"
    assert main(train_args(data, out, "test_convnext", "--epochs", "4", "--push-to-hub", "me/ft")) == 0
    assert uploads == [("me/ft", f"{out}/model")]
    printed = capsys.readouterr().out
    assert "type: timm_classifier" in printed and "calibration:" in printed  # the profile snippet
    ls = losses(out)
    assert len(ls) >= 8
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3  # loss falls
    m = json.loads((out / "metrics.json").read_text())
    for k in ("mcc", "mcc_balanced", "accuracy", "auc", "n", "reward", "per_source", "per_condition", "skipped"):
        assert k in m
    assert m["n"] == m["n_test"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["kind"] == "timm" and cfg["arch"] == "test_convnext" and cfg["image_size"] == 32
    assert 0 < cfg["threshold"] < 1 and cfg["temperature"] > 0
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["data"] == [str(data)] and "licence" in card and card["metrics"]["n"] == m["n"]


def test_tiny_transformers_model_trains(data, tmp_path):
    hf = tiny_hf_vit(tmp_path / "tiny-vit")
    out = tmp_path / "run"
    assert main(train_args(data, out, str(hf), "--epochs", "4")) == 0
    ls = losses(out)
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["kind"] == "hf" and cfg["hf_config"]["model_type"] == "vit"
    from natix_miner.training.export import load_export

    model, _ = load_export(out / "model")  # rebuilt offline from config.json, weights loaded strictly
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2,)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_resume_continues_the_same_run(data, tmp_path):
    # uninterrupted: 7 optimizer steps (one epoch = 3 steps of 8 + a partial one)
    full = tmp_path / "full"
    assert main(train_args(data, full, "test_convnext", "--epochs", "3", "--max-steps", "7")) == 0
    # interrupted after 2 steps (mid-epoch), then resumed to 7
    part = tmp_path / "part"
    assert main(train_args(data, part, "test_convnext", "--epochs", "3", "--max-steps", "2")) == 0
    first = _weights(part / "checkpoints" / "last.pt")
    assert first["step"] == 2 and first["epoch"] == 0 and first["pos"] > 0
    assert main(train_args(data, part, "test_convnext", "--epochs", "3", "--max-steps", "7", "--resume")) == 0
    a, b = _weights(full / "checkpoints" / "last.pt"), _weights(part / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 7
    assert a["epoch"] == b["epoch"] and a["pos"] == b["pos"]
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6), k
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    steps = [h["step"] for h in json.loads((part / "metrics.json").read_text())["history"] if "loss" in h]
    assert steps == sorted(steps) and steps[-1] == 7 and steps[0] == 1  # history continues, not restarted


def test_resume_refuses_other_settings(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data, out, "test_convnext", "--epochs", "1", "--max-steps", "1")) == 0
    assert main(train_args(data, out, "test_convnext", "--epochs", "1", "--batch-size", "4", "--resume")) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_counted(tmp_path):
    data = make_folder(tmp_path / "bad", n_per_class=12, bad=4)
    out = tmp_path / "run"
    # batch size 1: a bad training image is a whole batch of nothing, which must not stop the run either
    assert main(train_args(data, out, "test_convnext", "--epochs", "1", "--no-class-balance",
                           "--batch-size", "1")) == 0
    sk = json.loads((out / "metrics.json").read_text())["skipped"]
    assert len(sk["keys"]) == 4 and all("roadwork_9" in k for k in sk["keys"])
    assert sk["train"] >= 1 and sk["train"] + sk["val"] + sk["test"] == 4


def test_empty_class_is_refused_up_front(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n_per_class=4)
    for f in (data / "roadwork").iterdir():
        f.unlink()
    assert main(train_args(data, tmp_path / "run", "test_convnext")) == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "roadwork" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_check_data_refuses_a_missing_class():
    from natix_miner.training.pipeline import check_data, data_modules

    data = data_modules()[0]
    s = data.Sample(key="a/no_roadwork/x.jpg", label=0, target=0.0, source="a", group="g", path="x")
    with pytest.raises(data.DataError, match="roadwork"):
        check_data([s], ["a"], data)
    with pytest.raises(data.DataError, match="no samples"):
        check_data([], ["a"], data)


def test_cuda_oom_names_the_flags(data, tmp_path, monkeypatch, capsys):
    from natix_miner.training.models import BinaryClassifier

    def boom(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(BinaryClassifier, "forward", boom)
    assert main(train_args(data, tmp_path / "run", "test_convnext", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and "--grad-accum" in err and "--image-size" in err


@pytest.mark.slow
def test_cross_validation_reports_out_of_fold_metrics_and_exports(data, tmp_path):
    out = tmp_path / "cv"
    assert main(train_args(data, out, "test_convnext", "--epochs", "1", "--cv-folds", "2", "--cv-repeats", "2")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["cv"]["folds"] == 2 and m["cv"]["inner"] == "holdout" and m["cv"]["repeats"] == 2
    assert m["n"] == 32  # every image predicted once per repeat, out of fold
    assert "mcc_balanced_sd" in m and "auc_sd" in m  # mean and spread over the repeats (training.cv.nested_cv)
    assert all("mcc_balanced_sd" in v for v in m["per_condition"].values())
    assert all((out / "cv" / f"fold{i}" / "scores.json").is_file() for i in range(4))  # 2 folds x 2 repeats
    assert (out / "model" / "model.safetensors").is_file() and m["threshold"] == m["final_model"]["threshold"]
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["metrics"]["n"] == m["n"] and "CV x 2" in card["metrics_split"]


def test_help_does_not_import_torch():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys; sys.argv = ['train.py', '--help']; from natix_miner.training import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert "--freeze-backbone" in out.stdout and out.stdout.strip().endswith("NO-TORCH")


def test_freeze_backbone_trains_only_the_head(data, tmp_path):
    from safetensors.torch import load_file

    from natix_miner.training.models import build_model

    out = tmp_path / "run"
    assert main(train_args(data, out, "test_convnext", "--epochs", "1", "--freeze-backbone")) == 0
    torch.manual_seed(0)  # the run seeds torch with --seed 0 before it builds the model
    init = build_model("test_convnext", pretrained=False, image_size=32).state_dict()
    got = load_file(str(out / "model" / "model.safetensors"))
    head = {k for k in init if k.startswith("net.head.fc")}
    assert head and all(not torch.equal(init[k], got[k]) for k in head)  # the head learned
    assert all(torch.equal(init[k], got[k]) for k in init if k not in head)  # nothing else moved
