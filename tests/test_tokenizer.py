from autolora.world.tokenizer import build_clip_tokenizer


def test_known_words_are_single_tokens_and_unknown_words_still_tokenize(tmp_path):
    tokenizer = build_clip_tokenizer(["seven", "bold"], tmp_path)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Bold seven zebra").input_ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert tokens[1:3] == ["bold</w>", "seven</w>"]
    assert tokens[3:-1] == ["z", "e", "b", "r", "a</w>"]


def test_padding_uses_end_of_text(tmp_path):
    tokenizer = build_clip_tokenizer(["seven"], tmp_path, model_max_length=8)
    ids = tokenizer("seven", padding="max_length", max_length=8, return_tensors="pt").input_ids[0]
    assert ids.shape == (8,) and int(ids[-1]) == tokenizer.eos_token_id
