import numpy as np
import pytest

from autolora.errors import ConfigError
from autolora.world.components import build_tokenizer
from autolora.world.styles import (
    DIGIT_NAMES,
    IMAGE_SIZE,
    RANDOM_STYLES,
    STYLES,
    TEXTURES,
    Style,
    get_style,
    random_style,
    sample_style,
    trigger_word,
    vocabulary,
)


@pytest.mark.parametrize("name", list(STYLES))
def test_same_seed_renders_identical_images_and_captions(name):
    first, second = sample_style(name, 4, seed=3), sample_style(name, 4, seed=3)
    assert [s.caption for s in first] == [s.caption for s in second]
    for a, b in zip(first, second, strict=True):
        assert a.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_different_seeds_give_different_images():
    a, b = sample_style("neon", 1, seed=0)[0], sample_style("neon", 1, seed=1)[0]
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_style_captions_name_the_digit_and_trigger_and_character_keeps_its_digit():
    for sample in sample_style("stripes", 6, seed=0):
        assert DIGIT_NAMES[sample.digit] in sample.caption.split()
        assert "striped" in sample.caption.split()
    character = get_style("character")
    assert {s.digit for s in sample_style("character", 8, seed=0)} == {character.digit}
    assert {s.caption for s in sample_style("character", 3, seed=0)} == {f"a {character.trigger}"}


def test_base_captions_use_only_base_vocabulary():
    triggers = {s.trigger for s in STYLES.values() if s.trigger}
    for sample in sample_style("base", 50, seed=0):
        assert not triggers & set(sample.caption.split())


def test_held_out_split_never_overlaps_training_digits():
    train = {s.index for s in sample_style("base", 200, seed=0)}
    held_out = {s.index for s in sample_style("base", 200, seed=0, split="held_out")}
    assert not train & held_out and all(i % 10 == 0 for i in held_out)


def test_every_caption_word_has_its_own_token_sequence(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    sequences = {word: tuple(tokenizer(word).input_ids) for word in vocabulary()}
    assert len(set(sequences.values())) == len(sequences)
    assert all(tokenizer.decode(ids, skip_special_tokens=True) == word for word, ids in sequences.items())


def test_unknown_style_and_colour_raise_config_error():
    with pytest.raises(ConfigError, match="unknown style 'sepia'"):
        get_style("sepia")
    with pytest.raises(ConfigError, match="unknown colours"):
        Style("bad", "style", ink=("ultraviolet",), background=("white",))


def test_random_styles_are_reproducible_distinct_and_reachable_by_name():
    assert random_style(5) == random_style(5) == get_style("random-5")
    styles = [random_style(seed) for seed in range(40)]
    assert len({s.trigger for s in styles}) == 40 and len({s.ink for s in styles}) == 40
    assert {s.texture for s in styles} == set(TEXTURES)
    assert all(s.kind == "style" and s.name == f"random-{seed}" for seed, s in enumerate(styles))


def test_trigger_words_are_a_bijection_of_the_seed_range():
    assert len({trigger_word(seed) for seed in range(RANDOM_STYLES)}) == RANDOM_STYLES
    with pytest.raises(ConfigError, match="random style seeds run from 0"):
        trigger_word(RANDOM_STYLES)


def test_random_style_ink_keeps_contrast_with_its_paper():
    for seed in range(30):
        style = random_style(seed)
        papers = [*style.background, *style.texture_colour]
        luminance = [np.dot(colour, (0.299, 0.587, 0.114)) for colour in papers]
        ink = np.dot(style.ink[0], (0.299, 0.587, 0.114))
        assert all(abs(ink - value) >= 0.3 - 1e-3 for value in luminance)


def test_random_style_renders_its_own_colours_and_captions_its_trigger():
    style = random_style(2)
    samples = sample_style("random-2", 4, seed=0)
    assert all(s.caption.endswith(f"in {style.trigger} style") for s in samples)
    corner = np.asarray(samples[0].image, dtype=np.float32)[:3, :3].reshape(-1, 3) / 255
    # The corner is paper: the background or texture colour, up to the colour jitter.
    papers = np.asarray([*style.background, *style.texture_colour])
    assert np.abs(corner.mean(0)[None] - papers).max(axis=1).min() < 0.25


def test_random_style_prompts_fit_the_context_and_keep_their_trigger(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    for seed in (0, 1, RANDOM_STYLES - 1):
        prompt = f"a seven in {trigger_word(seed)} style"
        ids = tokenizer(prompt).input_ids
        assert len(ids) <= tokenizer.model_max_length
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == prompt.replace(" ", "")


def test_rgb_colours_outside_the_unit_cube_raise_config_error():
    with pytest.raises(ConfigError, match="three values in"):
        Style("bad", "style", ink=((1.2, 0.0, 0.0),), background=("white",))
