"""A training export served by the miner: ``neurons/miner.py --mock`` with a timm_classifier tier."""

import base64
import io

import pytest
import torch
import yaml
from _helpers import query_miner, start_mock_miner
from PIL import Image



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from natix_miner.training.export import profile_snippet, write_export
    from natix_miner.training.models import build_model

    tmp = tmp_path_factory.mktemp("ft")
    torch.manual_seed(1)
    m = build_model("test_convnext", pretrained=False, image_size=32)
    with torch.no_grad():
        m.net.get_classifier().weight.normal_(0, 1.0)
    folder = write_export(tmp / "model", m.eval(), resize="squash", temperature=1.5, threshold=0.5,
                          card={"data": ["synthetic"]})
    snippet = yaml.safe_load(profile_snippet(folder))  # the printed snippet is the profile
    profile = {"name": "finetune-e2e", "deadline_s": 6.0, **snippet}
    profile["tiers"][0]["models"][0]["device"] = "cpu"
    miner, val = start_mock_miner(tmp, yaml.safe_dump(profile))
    yield miner, val, folder
    miner.stop()


def _ask(miner, wallet, image):
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    resp = query_miner(wallet, miner, [base64.b64encode(buf.getvalue()).decode()])[0]
    return resp, Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.slow
def test_export_answers_inside_the_mock_miner(served):
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    miner, val, folder = served
    direct = build_adapter(ModelSpec(name="d", type="timm_classifier", licence="MIT", model=str(folder),
                                     device="cpu"))
    direct.load("cpu")
    answers = []
    for colour, size in (((230, 20, 20), (224, 224)), ((20, 20, 230), (640, 400))):
        resp, sent = _ask(miner, val, Image.new("RGB", size, colour))
        assert resp.dendrite.status_code == 200
        assert 0.0 <= resp.prediction <= 1.0
        assert resp.prediction == pytest.approx(direct.predict([sent])[0].p, abs=2e-3)
        answers.append(resp.prediction)
    assert answers[0] != pytest.approx(answers[1], abs=1e-3)  # the model, not a constant, answered
    assert miner.engine.stats()["models"]["finetune"]["calls"] >= 2
