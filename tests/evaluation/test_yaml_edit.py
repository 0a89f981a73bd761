"""Span edits of YAML text: values change, comments/characters/order stay, missing keys are inserted."""

import pytest
import yaml

from natix_miner.evaluation.yaml_edit import set_values
from natix_miner.profile import REPO_ROOT


def test_lite_profile_keeps_every_comment_line():
    text = (REPO_ROOT / "configs/lite-cpu.yaml").read_text(encoding="utf-8")
    out = set_values(text, [(("name",), "lite-cpu-calibrated"), (("calibration", "threshold"), 0.0021),
                            (("consensus", "bias"), -0.25), (("tiers", 0, "exit_threshold"), 0.7),
                            (("tiers", 0, "models", 0, "weight"), 1.5)])
    d = yaml.safe_load(out)
    assert d["name"] == "lite-cpu-calibrated" and d["calibration"]["threshold"] == 0.0021
    assert d["consensus"] == {"method": "geometric", "bias": -0.25}
    assert d["tiers"][0]["exit_threshold"] == 0.7 and d["tiers"][0]["models"][0]["weight"] == 1.5
    assert d["tiers"][0]["models"][0]["options"] == {"threads": 2}
    kept = [ln for ln in text.splitlines() if ln.strip().startswith("#") or "×" in ln]
    assert kept and all(ln in out.splitlines() for ln in kept)
    # only the edited lines differ, plus the two inserted ones
    assert len(out.splitlines()) == len(text.splitlines()) + 2


def test_nested_and_root_insertions_at_the_same_place():
    t = "name: x  # c\ntiers:\n- name: a\n  exit_threshold: 0.5\n  models:\n  - name: m\n    options: {p: 1}\n"
    out = set_values(t, [(("tiers", 0, "models", 0, "weight"), 2.0), (("consensus", "bias"), 0.1)])
    assert yaml.safe_load(out)["tiers"][0]["models"][0] == {"name": "m", "options": {"p": 1}, "weight": 2.0}
    assert yaml.safe_load(out)["consensus"] == {"bias": 0.1} and out.startswith("name: x  # c\n")


def test_strings_are_quoted_when_needed_and_flow_mappings_extended():
    out = set_values("name: a\n", [(("name",), "has: colon")])
    assert yaml.safe_load(out)["name"] == "has: colon"
    t = "# head\nconsensus: {method: geometric}   # pooled\ntiers: []\n"
    out = set_values(t, [(("consensus", "method"), "geometric"), (("consensus", "bias"), 0.5)])
    assert out == "# head\nconsensus: {method: geometric, bias: 0.5}   # pooled\ntiers: []\n"
    with pytest.raises(KeyError, match="no item"):
        set_values("tiers: []\n", [(("tiers", 0, "x"), 1)])
