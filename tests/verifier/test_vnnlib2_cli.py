"""The VNN-LIB 2.0 command line (`verify QUERY --network NAME=FILE`) gives the verdicts of the 1.0 one."""
from __future__ import annotations

from pathlib import Path

import pytest

from verifier.cli import main as cli_main
from tests.specs.test_vnnlib2 import to_vnnlib2

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny"
ACAS = ROOT.parent / "shared" / "benchmarks" / "acasxu"


def _query(tmp_path: Path, spec: Path) -> Path:
    query = tmp_path / f"{spec.stem}.v2.vnnlib"
    query.write_text(to_vnnlib2(spec.read_text()))
    return query


def _verdict(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code, out, _ = _call(capsys, argv)
    return code, out


def _call(capsys, argv: list[str]) -> tuple[int, list[str], str]:
    capsys.readouterr()
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.out.split("\n"), captured.err


def test_tiny_queries_answer_like_their_1_0_originals(tmp_path, capsys):
    net = TINY / "net.onnx"
    for spec in (TINY / "robust.vnnlib", TINY / "border.vnnlib"):
        code1, out1 = _verdict(capsys, [str(net), str(spec), "--timeout", "30", "-q"])
        code2, out2 = _verdict(capsys, [str(_query(tmp_path, spec)), "--network", f"net={net}", "--timeout", "30"])
        assert code1 == code2 == 0
        assert out2[0] == out1[0].split()[0]
    # after `sat`: every declared tensor with its type and shape, then one value per line
    assert out2[0] == "sat" and out2[1].startswith("X float32 [1,")
    n_x = int(out2[1].rsplit(",", 1)[1].rstrip("]"))
    y_line = out2[2 + n_x]
    assert y_line.startswith("Y float32 [1,")
    float(out2[1 + n_x])


def test_network_name_must_match_the_declaration(tmp_path, capsys):
    query = _query(tmp_path, TINY / "robust.vnnlib")
    code, _, err = _call(capsys, [str(query), "--network", f"other={TINY / 'net.onnx'}"])
    assert code != 0
    assert "declares 'net'" in err


def test_name_and_version(capsys):
    assert _verdict(capsys, ["--name"])[1][0] == "nnverify"
    assert _verdict(capsys, ["--version"])[0] == 0


@pytest.mark.parametrize("net, prop, expected", [("2_1", "prop_2", "sat"), ("2_1", "prop_4", "unsat"),
                                                 ("3_1", "prop_3", "unsat")])
def test_shared_acasxu_queries_answer_like_truth(tmp_path, capsys, net, prop, expected):
    model, spec = ACAS / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx", ACAS / "vnnlib" / f"{prop}.vnnlib"
    if not (model.is_file() and spec.is_file()):
        pytest.skip("shared acasxu suite not available")
    code, out = _verdict(capsys, [str(_query(tmp_path, spec)), "--network", f"net={model}", "--timeout", "60"])
    assert code == 0 and out[0] == expected
