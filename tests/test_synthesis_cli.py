import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synthesis_fixtures import bank_inputs

from autolora import generate, load_lora
from autolora.cli import main
from autolora.synthesis.prior import load_prior
from autolora.synthesis.synth import FarConditionWarning, synthesize
from autolora.testing import random_lora_state_dict, tiny_image_encoder, tiny_pipeline

OPTIONS = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np", "progress": False}
TINY = [
    "--token-dim",
    "8",
    "--latent-dim",
    "8",
    "--vae-layers",
    "1",
    "--heads",
    "2",
    "--hidden",
    "16",
    "--blocks",
    "2",
    "--hyper-rank",
    "2",
    "--timesteps",
    "10",
    "--batch-size",
    "4",
    "--vae-steps",
    "3",
    "--prior-steps",
    "3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    base, loras, encoder = bank_inputs(root)
    assert (
        main(
            [
                "bank",
                "build",
                str(loras),
                "--base",
                str(base),
                "--rank",
                "4",
                "--out",
                str(root / "bank"),
                "--encoder",
                encoder,
            ]
        )
        == 0
    )
    assert main(["prior", "train", str(root / "bank"), "--out", str(root / "prior"), *TINY]) == 0
    return root


def test_synth_cli_writes_k_loras_and_prints_the_time(trained, tmp_path, capsys):
    refs = [str(p) for p in sorted((trained / "loras" / "lora0").glob("*.png"))]
    status = main(
        [
            "synth",
            "--prior",
            str(trained / "prior"),
            "--ref",
            *refs,
            "--out",
            str(tmp_path / "my.safetensors"),
            "--samples",
            "2",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "from 2 image(s) in" in out and " s" in out
    files = [tmp_path / "my-0.safetensors", tmp_path / "my-1.safetensors"]
    tensors = []
    for path in files:
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["autolora_prior"] == "diffusion"
            tensors.append(torch.cat([f.get_tensor(k).flatten() for k in sorted(f.keys())]))
    assert not torch.equal(*tensors)  # two draws of the diffusion prior differ


def test_synthesised_lora_loads_in_diffusers_ours_and_kohya_and_changes_the_images(trained, tmp_path):
    prior = load_prior(trained / "prior")
    refs = sorted((trained / "loras" / "lora3").glob("*.png"))
    plain = synthesize(prior, refs, tmp_path / "plain.safetensors", seed=3).files[0]
    kohya = synthesize(prior, refs, tmp_path / "kohya.safetensors", seed=3, kohya=True).files[0]
    pipe = tiny_pipeline("sd15", tmp_path / "t")
    base = generate(pipe, "a photo of cat", method="base", seed=0, **OPTIONS)
    pipe.load_lora_weights(str(plain), adapter_name="synth")  # plain diffusers
    with_lora = generate(pipe, "a photo of cat", method="lora", seed=0, **OPTIONS)
    assert np.abs(with_lora - base).max() > 1e-3
    for path in (plain, kohya):
        fresh = tiny_pipeline("sd15", tmp_path / "t")
        load_lora(fresh, str(path))
        assert (
            np.abs(generate(fresh, "a photo of cat", method="lora", seed=0, **OPTIONS) - with_lora).max()
            < 1e-5
        )
    # AutoLoRA guidance runs on it like on any LoRA: gamma 1.5 extrapolates past the LoRA image.
    autolora_image = generate(fresh, "a photo of cat", gamma=1.5, seed=0, **OPTIONS)
    assert np.abs(autolora_image - with_lora).max() > 1e-4


def test_far_condition_warns_with_its_distance(trained, tmp_path, capsys):
    prior = load_prior(trained / "prior")
    refs = sorted((trained / "loras" / "lora1").glob("*.png"))[:1]  # one of the two images of a bank LoRA
    prior.far_threshold = 0.0
    with pytest.warns(FarConditionWarning, match=r"distance \d+\.\d+ to the nearest bank condition"):
        result = synthesize(prior, refs, tmp_path / "far.safetensors")
    assert result.far and result.distance > 0
    meta = json.loads((trained / "prior" / "prior.json").read_text())
    (tmp_path / "far_prior").mkdir()
    (tmp_path / "far_prior" / "prior.json").write_text(json.dumps({**meta, "far_threshold": 0.0}))
    (tmp_path / "far_prior" / "prior.safetensors").write_bytes(
        (trained / "prior" / "prior.safetensors").read_bytes()
    )
    assert (
        main(
            [
                "synth",
                "--prior",
                str(tmp_path / "far_prior"),
                "--ref",
                str(refs[0]),
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 0
    )
    assert "warning: the reference images are far from the prior's bank: distance" in capsys.readouterr().out


def test_bank_cli_refuses_a_lora_of_another_base(trained, tmp_path, capsys):
    folder = tmp_path / "loras"
    folder.mkdir()
    save_file(random_lora_state_dict(tiny_pipeline("sdxl", tmp_path / "x")), str(folder / "xl.safetensors"))
    status = main(
        [
            "bank",
            "build",
            str(folder),
            "--base",
            str(trained / "base"),
            "--rank",
            "4",
            "--out",
            str(tmp_path / "bank"),
        ]
    )
    assert status == 2
    assert "xl.safetensors is not for base model" in capsys.readouterr().err


def test_condition_encoders_load_clip_and_dinov2_through_transformers(trained, tmp_path):
    from autolora.synthesis.conditions import condition_of, load_encoder

    tiny_image_encoder("dinov2", tmp_path / "dino")
    refs = sorted((trained / "loras" / "lora0").glob("*.png"))
    for spec, width in ((f"dinov2:{tmp_path / 'dino'}", 16), (f"clip:{trained / 'clip'}", 8)):
        condition = condition_of(load_encoder(spec), refs)
        assert condition.shape == (width,) and torch.isfinite(condition).all()
        assert condition.norm() <= 1 + 1e-5  # a mean of unit vectors


def test_pca_prior_synthesises_by_inversion_on_the_base_pipeline(trained, tmp_path, capsys):
    from autolora.errors import ConfigError

    assert (
        main(
            [
                "prior",
                "train",
                str(trained / "bank"),
                "--out",
                str(tmp_path / "pca"),
                "--kind",
                "pca",
                "--components",
                "3",
            ]
        )
        == 0
    )
    refs = [str(p) for p in sorted((trained / "loras" / "lora0").glob("*.png"))]
    with pytest.raises(ConfigError, match="unconditional"):
        synthesize(load_prior(tmp_path / "pca"), refs, tmp_path / "x.safetensors")
    status = main(
        [
            "synth",
            "--prior",
            str(tmp_path / "pca"),
            "--ref",
            *refs,
            "--out",
            str(tmp_path / "inv.safetensors"),
            "--base",
            str(trained / "base"),
            "--caption",
            "a photo of cat",
            "--fit-steps",
            "2",
        ]
    )
    assert status == 0 and "wrote" in capsys.readouterr().out
    with safe_open(str(tmp_path / "inv.safetensors"), "pt") as f:
        assert f.metadata()["autolora_prior"] == "pca"
        assert len(list(f.keys())) == 2 * len(load_prior(tmp_path / "pca").layout.modules)
