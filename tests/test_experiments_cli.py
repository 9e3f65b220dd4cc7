from autolora.cli import main
from autolora.experiments.config import available_presets


def test_sweep_list_prints_every_preset(capsys):
    assert main(["sweep", "--list"]) == 0
    assert capsys.readouterr().out.split() == available_presets()


def test_sweep_dry_run_prints_the_plan_with_overrides(capsys):
    argv = ["sweep", "paper-table1", "--dry-run", "--set", "loras.0.source=anna.safetensors"]
    assert main([*argv, "--set", "seeds.count=8", "--set", "grid.lora_scale=[0.5, 1.0]"]) == 0
    assert "paper-table1" in (out := capsys.readouterr().out) and "64 images, 4 variant(s)" in out


def test_sweep_errors_are_one_line_with_exit_status_2(capsys, tmp_path):
    assert main(["sweep", "paper-table1", "--dry-run"]) == 2
    assert "--set loras.0.source=" in capsys.readouterr().err
    assert (
        main(["sweep", "paper-fig4", "--set", "loras.0.source=x", "--set", "grid.gamma=[-1]", "--dry-run"])
        == 2
    )
    assert "grid.gamma must be >= 0" in capsys.readouterr().err
    assert main(["sweep", "paper-fig4", "--set", "loras.0.source=x"]) == 2
    assert "--out RUN is required" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    assert "give a sweep file or a preset name" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err
