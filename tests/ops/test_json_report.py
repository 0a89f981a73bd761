import json

from natix_miner.ops.json_report import emit_json


def test_emit_json_writes_creates_the_folder_and_prints(tmp_path, capsys):
    path = tmp_path / "a" / "b" / "r.json"
    text = emit_json({"x": 1, "p": tmp_path}, path)
    assert json.loads(path.read_text()) == {"x": 1, "p": str(tmp_path)}
    assert capsys.readouterr().out.strip() == text


def test_emit_json_quiet_and_without_a_path(tmp_path, capsys):
    assert json.loads(emit_json([1, 2], None, echo=False)) == [1, 2]
    assert capsys.readouterr().out == ""
