import pytest

from autolora.cli import main


def test_version_flag_prints_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "autolora 0.1.0" in capsys.readouterr().out


def test_missing_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


def test_multi_line_error_messages_are_folded_onto_one_line():
    from autolora.cli import one_line
    from autolora.errors import InputFileError

    assert one_line(InputFileError("cannot load LoRA x:\n  size mismatch a\n  size mismatch b\n  c")) == (
        "cannot load LoRA x: size mismatch a (and 2 more)"
    )
    assert one_line(InputFileError("missing file")) == "missing file"


def test_every_sub_command_prints_user_errors_on_one_line(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "missing"), "--metrics", "diversity", "--out", "r.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("autolora eval: error: ") and err.count("\n") == 1
