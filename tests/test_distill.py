import pytest
import torch
from safetensors.torch import load_file

from autolora import generate, load_lora
from autolora.cli import main
from autolora.distill import DistillConfig, distill
from autolora.errors import ConfigError
from autolora.testing import random_lora_file, tiny_pipeline

PROMPT = "a photo of sks cat"
CONFIG = {
    "prompts": (PROMPT, "a red dog"),
    "gamma": 2.0,
    "cfg_base": 3.0,
    "cfg_lora": 3.0,
    "num_inference_steps": 2,
    "seeds_per_prompt": 2,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "checkpoint_every": 2,
}


def _pipe_with_lora(folder, text_encoder=False):
    pipe = tiny_pipeline("sd15", folder)
    lora = random_lora_file(pipe, folder / "style.safetensors", text_encoder=text_encoder)
    load_lora(pipe, str(lora))
    return pipe, lora


def test_distill_resumes_to_the_same_student_and_writes_a_loadable_lora(tmp_path):
    pipe, lora = _pipe_with_lora(tmp_path)
    distill(pipe, tmp_path / "half.safetensors", DistillConfig(steps=2, **CONFIG), work=tmp_path / "work")
    assert (tmp_path / "work" / "checkpoint.pt").exists() and (tmp_path / "work" / "teacher.pt").exists()
    # A new process (fresh pipeline) asked for 4 steps continues the checkpoint of step 2 ...
    pipe, _ = _pipe_with_lora(tmp_path)
    distill(pipe, tmp_path / "resumed.safetensors", DistillConfig(steps=4, **CONFIG), work=tmp_path / "work")
    # ... and ends with the weights of an uninterrupted run.
    pipe, _ = _pipe_with_lora(tmp_path)
    distill(
        pipe, tmp_path / "straight.safetensors", DistillConfig(steps=4, **CONFIG), work=tmp_path / "other"
    )
    resumed, straight = (
        load_file(tmp_path / "resumed.safetensors"),
        load_file(tmp_path / "straight.safetensors"),
    )
    original = load_file(lora)
    assert resumed.keys() == straight.keys() and len(resumed) == len(original)
    assert all(torch.equal(resumed[key], straight[key]) for key in resumed)
    assert any(
        not torch.equal(resumed[key], load_file(tmp_path / "half.safetensors")[key]) for key in resumed
    )
    # Every LoRA loader reads it; here load_lora, then plain LoRA+CFG sampling with it.
    fresh = tiny_pipeline("sd15", tmp_path)
    load_lora(fresh, str(tmp_path / "resumed.safetensors"))
    image = generate(fresh, PROMPT, method="lora", num_inference_steps=2, height=32, width=32, progress=False)
    assert image[0].size == (32, 32)


def test_distilled_student_moves_toward_the_teacher(tmp_path):
    """The student's LoRA+CFG image from the teacher's noise ends closer to AutoLoRA's than the LoRA's was."""
    options = {
        "num_inference_steps": 2,
        "height": 32,
        "width": 32,
        "seed": 1000,
        "output_type": "np",
        "progress": False,
    }
    pipe, _ = _pipe_with_lora(tmp_path)
    teacher = generate(pipe, PROMPT, gamma=2.0, cfg_base=3.0, cfg_lora=3.0, **options)
    before = generate(pipe, PROMPT, method="lora", cfg_lora=3.0, **options)
    distill(pipe, tmp_path / "student.safetensors", DistillConfig(steps=30, **CONFIG), work=tmp_path / "work")
    after = generate(pipe, PROMPT, method="lora", cfg_lora=3.0, **options)
    assert abs(after - teacher).mean() < 0.7 * abs(before - teacher).mean()


def test_text_encoder_layers_are_written_unchanged(tmp_path):
    pipe, lora = _pipe_with_lora(tmp_path, text_encoder=True)
    distill(pipe, tmp_path / "student.safetensors", DistillConfig(steps=1, **CONFIG), work=tmp_path / "work")
    student, original = load_file(tmp_path / "student.safetensors"), load_file(lora)
    text_keys = [key for key in original if key.startswith("text_encoder.")]
    assert text_keys and all(torch.equal(student[key], original[key]) for key in text_keys)


def test_work_folder_of_other_settings_is_refused(tmp_path):
    pipe, _ = _pipe_with_lora(tmp_path)
    distill(pipe, tmp_path / "a.safetensors", DistillConfig(steps=1, **CONFIG), work=tmp_path / "work")
    pipe, _ = _pipe_with_lora(tmp_path)
    with pytest.raises(ConfigError, match="other settings"):
        distill(
            pipe,
            tmp_path / "b.safetensors",
            DistillConfig(steps=1, **{**CONFIG, "gamma": 1.5}),
            work=tmp_path / "work",
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompts": ()}, "prompt"),
        ({"gamma": -1.0}, "gamma"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ],
)
def test_bad_distill_config_raises_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**{**CONFIG, **options})


def test_cli_distills_a_world_lora(tmp_path, capsys):
    out = tmp_path / "neon-distilled.safetensors"
    argv = ["distill", "--model", "world", "--lora", "world:neon", "--prompt", "a seven in neon style"]
    argv += ["--sampling-steps", "2", "--seeds", "2", "--steps", "2", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    assert out.exists() and (tmp_path / "neon-distilled.safetensors.work" / "checkpoint.pt").exists()
    assert "wrote" in capsys.readouterr().out
    assert main([*argv[:-1], str(tmp_path / "student.txt")]) == 2
