import pandas as pd

from autolora.world.study import summarise


def _results():
    rows = []
    for lora in ("neon", "chalk"):
        for digit, base, lora_div in ((1, 0.7, 0.3), (3, 0.6, 0.2)):
            rows.append(
                {"lora": lora, "digit": digit, "method": "base", "prompt": f"a {digit}", "diversity": base}
            )
            rows.append(
                {
                    "lora": lora,
                    "digit": digit,
                    "method": "lora",
                    "prompt": f"{lora} {digit}",
                    "diversity": lora_div,
                }
            )
    frame = pd.DataFrame(rows)
    return frame.assign(style_score=0.5, digit_score=0.5)


def test_summary_counts_shared_base_prompts_once_and_pairs_the_gap():
    summary = summarise(_results()).set_index("method")
    assert summary.loc["base", "prompts"] == 2 and summary.loc["lora", "prompts"] == 4
    assert summary.loc["lora - base (paired)", "diversity"].startswith("-0.400 [-0.400, -0.400]")


def test_study_lists_the_shipped_style_loras_without_character_or_format_twins():
    from autolora.world.study import style_loras

    assert style_loras() == sorted(["neon", "outline", "stripes", "checker", "shadow", "chalk", "italic"])


def test_study_samples_are_generate_at_the_world_cfg_with_the_named_lora_loaded():
    import numpy as np

    from autolora import generate, load_lora, load_pipeline
    from autolora.world.assets import ASSETS_DIR, WORLD_CFG
    from autolora.world.study import sample, world_pipeline

    prompt = "a seven in neon style"
    ours = sample(world_pipeline(ASSETS_DIR, "neon"), prompt, 2, 2, seed=3, method="lora")
    pipe = load_pipeline("world")
    load_lora(pipe, "world:neon")
    options = dict(num_inference_steps=2, seed=3, num_images=2, progress=False, method="lora")
    expected = generate(pipe, prompt, cfg_base=WORLD_CFG, cfg_lora=WORLD_CFG, **options)
    assert [np.asarray(image).tolist() for image in ours] == [
        np.asarray(image).tolist() for image in expected
    ]
    assert not getattr(world_pipeline(ASSETS_DIR).unet, "peft_config", None)  # no LoRA unless named
