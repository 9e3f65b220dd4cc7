import numpy as np
import pytest

from autolora.errors import ConfigError
from autolora.world.components import build_tokenizer
from autolora.world.styles import DIGIT_NAMES, IMAGE_SIZE, STYLES, Style, get_style, sample_style, vocabulary


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
