import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
from app_fixtures import TINY_PRIOR

from autolora.errors import ConfigError
from autolora.synthesis.bank import Bank, build_bank
from autolora.synthesis.conditions import condition_of, load_encoder
from autolora.synthesis.config import PriorConfig
from autolora.synthesis.study import Study, StudyConfig, main, read_results, score_samples
from autolora.synthesis.training import train_prior
from autolora.world.assets import lora_path
from autolora.world.evaluators import load_evaluators
from autolora.world.lora import bank_references, style_renders

BANK_LORAS = ("chalk", "neon", "stripes", "checker")
ENCODER = "features:world"
HELD_OUT = "random-7"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The world's networks are tiny: one thread runs them fastest, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A bank of four world LoRAs with conditions from renders of their styles, a tiny diffusion prior and a PCA prior."""
    root = tmp_path_factory.mktemp("study")
    (root / "loras").mkdir()
    for name in BANK_LORAS:
        shutil.copyfile(lora_path(name), root / "loras" / f"{name}.safetensors")
    shutil.copyfile(lora_path("shadow"), root / "loras" / f"{HELD_OUT}.safetensors")
    bank = build_bank(
        root / "loras",
        "world",
        4,
        root / "bank",
        encoder=ENCODER,
        references=bank_references(2),
        exclude=[HELD_OUT],
    )
    train_prior(bank, TINY_PRIOR, root / "tiny", log=lambda line: None)
    train_prior(bank, PriorConfig(kind="pca", components=2), root / "pca", log=lambda line: None)
    return root, bank


def tiny_config(**changes) -> StudyConfig:
    config = StudyConfig(
        held_out=[HELD_OUT],
        ks=(1,),
        digits=(3,),
        images=2,
        steps=2,
        renders=4,
        train_steps=2,
        pclora_steps=(1, 2),
        inversion_steps=1,
    )
    return replace(config, **changes)


def test_world_bank_conditions_come_from_renders_of_each_style_and_exclude_leaves_out(inputs):
    root, bank = inputs
    assert [name.removesuffix(".safetensors") for name in bank.names] == sorted(BANK_LORAS)
    encoder = load_encoder(ENCODER)
    expected = condition_of(encoder, [s.image for s in style_renders("neon", 2, 0)])
    torch.testing.assert_close(bank.conditions[bank.names.index("neon.safetensors")], expected)
    (root / "unnamed").mkdir()
    shutil.copyfile(lora_path("shadow"), root / "unnamed" / "mystery.safetensors")
    with pytest.raises(ConfigError, match=r"mystery\.safetensors is not named after a world style"):
        build_bank(root / "unnamed", "world", 4, root / "bad", encoder=ENCODER, references=bank_references(1))


def test_study_writes_every_cell_table_and_grid_then_resumes_without_recomputing(inputs, monkeypatch):
    root, bank = inputs
    out = root / "run"
    config = tiny_config(priors={"tiny": str(root / "tiny")}, pca=str(root / "pca"))
    results = Study(bank, out, config).run()
    methods = ["trained", "nearest", "pca-inversion", "pclora@1", "pclora@2", "prior:tiny"]
    assert config.methods() == methods
    # Held-out renders are scored once, the base model sampled once with CFG, every LoRA with CFG and AutoLoRA.
    assert len(results) == 2 + 2 * len(methods)
    assert set(results["method"]) == {"renders", "base", *methods}
    renders = results[results["method"] == "renders"].iloc[0]
    assert renders["fd_ratio"] == pytest.approx(1.0)  # the floor renders are the FD ratio's denominator
    sampled = results[results["method"] != "renders"]
    assert sampled[["style_similarity", "fd_ratio", "digit_score", "diversity"]].notna().all().all()
    assert (results.loc[results["method"] == "trained", "steps"] == 2).all()
    # One held-out style: no other style to swap with.
    assert results["swap_similarity"].isna().all()
    table = (out / "table.md").read_text()
    for method in methods:
        assert f"| {method} | cfg | 1 |" in table and f"| {method} | autolora | 1 |" in table
    assert "| base | cfg | any |" in table and "| renders | - | any |" in table
    assert (out / "grid.png").exists() and (out / "loras" / HELD_OUT / "k1" / "trained.safetensors").exists()

    # Resume: a finished run recomputes nothing; a missing cell is the only one recomputed.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr("autolora.world.lora.train_lora", refuse)
    monkeypatch.setattr("autolora.synthesis.pclora.fit_coefficients", refuse)
    lines = (out / "results.jsonl").read_text().splitlines()
    Study(bank, out, config).run()
    assert (out / "results.jsonl").read_text().splitlines() == lines
    # Cells lost after their LoRA was made (an interruption while sampling) reuse the kept LoRA files.
    kept = [line for line in lines if json.loads(line)["method"] not in ("trained", "pclora@2")]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n")
    again = Study(bank, out, config).run()
    assert len(again) == len(results)
    assert (out / "results.jsonl").read_text().splitlines()[: len(kept)] == kept
    redone = again[again["method"] == "trained"].reset_index(drop=True)
    original = results[results["method"] == "trained"].reset_index(drop=True)
    assert redone[["seconds", "style_similarity"]].equals(original[["seconds", "style_similarity"]])

    with pytest.raises(ConfigError, match="other settings"):
        Study(bank, out, replace(config, images=3))


def test_workers_share_a_study_by_claiming_held_out_styles(inputs):
    root, bank = inputs
    out = root / "shared"
    (out / "loras").mkdir(parents=True)
    (out / "loras" / "random-8.lock").write_text(str(os.getpid()))  # a live worker holds random-8
    config = tiny_config(held_out=[HELD_OUT, "random-8"], pclora_steps=(1,))
    first = Study(bank, out, config).run()
    assert set(first["style"]) == {HELD_OUT}
    assert (out / "loras" / "random-8.lock").exists() and not (out / "loras" / f"{HELD_OUT}.lock").exists()
    (out / "loras" / "random-8.lock").unlink()  # that worker is gone: the next run takes random-8 over
    second = Study(bank, out, config).run()
    assert set(second["style"]) == {HELD_OUT, "random-8"}
    assert second[second["style"] == HELD_OUT].equals(first)


def test_study_refuses_held_out_styles_in_the_bank_and_unconditional_priors(inputs):
    root, bank = inputs
    with pytest.raises(ConfigError, match="neon are in the bank"):
        Study(bank, root / "refused", tiny_config(held_out=["neon"]))
    with pytest.raises(ConfigError, match="unconditional"):
        Study(bank, root / "refused", tiny_config(priors={"p": str(root / "pca")}))
    with pytest.raises(ConfigError, match="unknown style 'mystery'"):
        Study(bank, root / "refused", tiny_config(held_out=["mystery"]))
    with pytest.raises(ConfigError, match="not of the world in"):
        Study(bank, root / "refused", tiny_config(), world=root)
    with pytest.raises(ConfigError, match="k must be at least 1"):
        tiny_config(ks=(0,))


def test_condition_swap_scores_samples_against_their_own_style_and_another():
    encoder, evaluators = load_encoder(ENCODER), load_evaluators()
    own = [s.image for s in style_renders("random-3", 8, 1, split="held_out")]
    other = [s.image for s in style_renders("random-4", 8, 1, split="held_out")]
    samples = [(s.digit, s.image) for s in style_renders("random-3", 6, 5, split="held_out")]
    scores = score_samples(
        evaluators, encoder, samples, condition_of(encoder, own), condition_of(encoder, other), own, own
    )
    assert scores["style_similarity"] > scores["swap_similarity"]
    assert 0 < scores["digit_score"] <= 1 and 0 < scores["diversity"] < 2


def test_command_line_runs_two_held_out_styles_with_the_swap(inputs, capsys):
    root, _ = inputs
    out = root / "cli"
    assert (
        main(
            [
                "--bank",
                str(root / "bank"),
                "--held-out",
                "random-7",
                "random-8",
                "--out",
                str(out),
                "--k",
                "1",
                "--digits",
                "3",
                "--images",
                "2",
                "--steps",
                "2",
                "--renders",
                "4",
                "--train-steps",
                "1",
                "--pclora-steps",
                "1",
                "--pclora-learning-rate",
                "0.005",
                "--inversion-steps",
                "1",
                "--prior",
                f"tiny={root / 'tiny'}",
            ]
        )
        == 0
    )
    results = read_results(out / "results.jsonl")
    assert set(results["style"]) == {"random-7", "random-8"}
    assert results.loc[results["method"] != "base", "swap_similarity"].notna().all()
    assert "Condition swap" in capsys.readouterr().out
    assert json.loads((out / "study.json").read_text())["config"]["pclora_learning_rate"] == 0.005


def test_bank_build_command_encodes_world_renders_and_excludes_held_out_styles(inputs, capsys):
    from autolora.cli import main as autolora

    root, bank = inputs
    out = root / "cli-bank"
    command = ["bank", "build", str(root / "loras"), "--base", "world", "--rank", "4", "--out", str(out)]
    assert autolora([*command, "--world-renders", "2"]) == 2  # renders need an encoder to encode them
    assert "--world-renders needs" in capsys.readouterr().err
    assert autolora([*command, "--encoder", ENCODER, "--world-renders", "2", "--exclude", HELD_OUT]) == 0
    torch.testing.assert_close(Bank.open(out).conditions, bank.conditions)


def test_targets_read_zero_shot_pclora_and_prior_pairs_off_the_results():
    import pandas as pd

    from autolora.synthesis.study import markdown, verdict, versus

    config = StudyConfig(held_out=["a"], ks=(4,), pclora_steps=(50,), priors={"fast": "x", "slow": "y"})
    similarity = {"trained": 0.9, "pclora@50": 0.95, "prior:fast": 0.81, "prior:slow": 0.3, "nearest": 0.5}
    seconds = {"prior:fast": 0.02, "prior:slow": 1.5}
    rows = []
    for index, style in enumerate(["s1", "s2", "s3", "s4"]):
        for method, value in similarity.items():
            rows.append(
                {
                    "style": style,
                    "k": 4,
                    "method": method,
                    "guidance": "cfg",
                    "steps": 0,
                    "seconds": seconds.get(method, 1.0),
                    "cpu_seconds": seconds.get(method, 1.0),
                    "style_similarity": value + 0.01 * index,
                    "swap_similarity": 0.0,
                    "fd_ratio": 1.0,
                    "digit_score": 1.0,
                    "diversity": 0.1,
                }
            )
    results = pd.DataFrame(rows)
    ratio = versus(results, "prior:fast", "trained", 4)
    assert ratio[0] == pytest.approx(0.825 / 0.915) and verdict(ratio, 0.8) == "met"
    assert verdict(versus(results, "prior:slow", "trained", 4), 0.8) == "missed"
    assert verdict((0.85, 0.7, 0.9), 0.8) == "undecided"
    table = markdown(results, config)
    assert "| prior:fast | 4 | 0.020 (0.020) | 0.020 | yes | 0.902 [" in table and "| met |" in table
    assert "| prior:slow | 4 | 1.500 (1.500) | 1.500 | no | 0.344 [" in table and "| missed |" in table
    assert "| pclora@50 | 4 | 10% | 1.055 [" in table
    assert "| prior:fast / prior:slow | 4 | 2.619 [" in table
