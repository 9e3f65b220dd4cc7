import base64
import email.utils
import io
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fake_judge import FakeServer, chat
from PIL import Image

from autolora.errors import ConfigError, InputFileError
from autolora.metrics.judge import ANNA, Character, cps_prompt, parse_scores, pc_sa_prompt
from autolora.metrics.registry import ImageRecord, get_metric

PAPER = Path("/work/shared/seeds/002_3f7ec4ab755c4e6f.txt")

# Appendix A.1 as printed in the paper (the image, "<IMAGE DATA>", is sent before this text).
PAPER_A1 = """Evaluate the presence of Princess Anna from Disney’s Frozen movie in the image. Output a score between 0 and 5, where:

* 0: Princess Anna is not present in the image.

* 1: The image contains a character with a vague resemblance to Princess Anna, but it’s not clear if it’s her. (e.g., a character with a similar hairstyle or dress color)

* 2: The image contains a character that shares some similarities with Princess Anna, but it’s not a clear match. (e.g., a character with a similar face shape or clothing style)

* 3: The image contains a character that is similar to Princess Anna, but with some noticeable differences. (e.g., a character with a similar dress and hairstyle, but different facial features)

* 4: The image contains a character that is very likely to be Princess Anna, but with some minor differences. (e.g., a character with a similar face, dress, and hairstyle, but with a slightly different expression or pose)

* 5: The image contains a character that is unmistakably Princess Anna from Frozen.

Output the score in following JSON format:

```
{
  "score": [score between 0 and 5],
  "reason": [use keywords to describe the reason of the score, e.g., ["dress", "hairstyle", "no Anna character"]]
}
```

Reply only with a JSON with no extra text"""

# Appendix A.2 as printed, without the PDF's line numbers; note the style scale has no 0 line.
PAPER_A2 = """Evaluate the given image for the prompt <PROMPT USED FOR THE IMAGE GENERATION> and the pixel art style

Access the following metrics:

Prompt correspondence: How well does the image capture the essence, objects, and scenes described in the prompt? Scale: 0-5, where:

0: Not at all (the image does not relate to the prompt in any way)

1: Very poorly (the image vaguely relates to the prompt, but most key elements are missing or incorrect)

2: Somewhat (the image captures some key elements of the prompt, but others are missing or incorrect)

3: Fairly well (the image captures most key elements of the prompt, but some details may be off)

4: Very well (the image accurately captures the essence and most key elements of the prompt)

5: Exactly (the image perfectly captures the essence, objects, and scenes described in the prompt)

Style adherence: How well does the image adhere to the specified style? If the style is pixel art, does the image truly resemble pixel art, or is it just a low-quality image? Scale: 0-5, where:

1: Very poorly (the image attempts to mimic pixel art, but lacks clear pixelation, has excessive aliasing, or uses too many colors)

2: Somewhat (the image shows some pixel art characteristics, such as pixelation, but lacks consistency in pixel size, color palette, or has noticeable artifacts)

3: Fairly well (the image generally adheres to pixel art principles, with clear pixelation, a limited color palette, and minimal aliasing, but may have some minor flaws)

4: Very well (the image strongly adheres to pixel art principles, with crisp pixelation, a well-chosen color palette, and minimal to no aliasing or artifacts)

5: Perfectly (the image perfectly captures the pixel art style, with precise pixelation, a masterfully chosen color palette, and no noticeable flaws or artifacts)

Provide the evaluation scores in the following JSON format:

```
{
"prompt_correspondence": [the prompt correspondence score from 0 to 5],
"style_adherence": [the style adherence score from 0 to 5],
}
Reply only with a JSON with no extra text
```"""

PIXEL_PROMPT = "a dragon riding a unicorn through a rainbow-colored sky, pixel art style"


# --- prompts ------------------------------------------------------------------------------------


def test_default_cps_prompt_is_the_papers_text():
    assert cps_prompt() == PAPER_A1
    assert cps_prompt(ANNA) == PAPER_A1


def test_default_pc_sa_prompt_is_the_papers_text_with_the_prompt_filled_in():
    expected = PAPER_A2.replace("<PROMPT USED FOR THE IMAGE GENERATION>", PIXEL_PROMPT)
    assert pc_sa_prompt(PIXEL_PROMPT) == expected
    assert pc_sa_prompt(PIXEL_PROMPT, style="pixel art") == expected


def _paper_section(text: str, start: str, end: str) -> str:
    """A section of the extracted paper without its '<IMAGE DATA> ' marker and PDF line numbers."""
    section = text[text.index(start) + len(start) : text.index(end)].strip().removeprefix("<IMAGE DATA> ")
    lines = [re.sub(r"^\d{3} ", "", line).rstrip() for line in section.split("\n")]
    return "\n".join(line for line in lines if not re.fullmatch(r"\d{3}", line))


@pytest.mark.skipif(not PAPER.exists(), reason="paper text not available")
def test_prompts_equal_the_paper_file():
    text = PAPER.read_text(encoding="utf-8")
    assert cps_prompt() == _paper_section(text, "A.1 ANNA PRESENCE SCORE", "A.2 PIXEL-ART")
    a2 = _paper_section(text, "A.2 PIXEL-ART PROMPT CORRESPONDENCE AND STYLE ADHERENCE", "762 B PIXEL ART")
    assert pc_sa_prompt("PROMPT") == a2.replace("<PROMPT USED FOR THE IMAGE GENERATION>", "PROMPT")


def test_another_character_replaces_every_mention_of_anna():
    text = cps_prompt(
        Character("Mario", source="Nintendo’s games", short_source="Super Mario", pronoun="him")
    )
    assert "Anna" not in text and "Frozen" not in text and "her." not in text
    assert "presence of Mario from Nintendo’s games in the image" in text
    assert "unmistakably Mario from Super Mario." in text
    assert "if it’s him." in text and '"no Mario character"' in text


def test_a_bare_character_name_drops_the_source():
    text = cps_prompt("Pixel Knight")
    assert "presence of Pixel Knight in the image." in text
    assert "unmistakably Pixel Knight." in text


def test_another_style_needs_its_own_scale():
    with pytest.raises(ConfigError, match="style_scale"):
        pc_sa_prompt("a cat", style="watercolor")
    text = pc_sa_prompt("a cat", style="watercolor", style_scale="1: bad\n\n5: good")
    assert "and the watercolor style\n" in text and "If the style is watercolor" in text
    assert "pixel" not in text and "1: bad\n\n5: good\n\nProvide" in text


def test_bad_character_option_raises_config_error():
    with pytest.raises(ConfigError, match="name"):
        get_metric("judge:cps", url="http://127.0.0.1:1/v1", model="m", character={"nick": "x"})


# --- parsing ------------------------------------------------------------------------------------

CPS = ["score"]
PC_SA = ["prompt_correspondence", "style_adherence"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"score": 4, "reason": ["dress"]}', 4.0),
        ('```json\n{"score": [4.5], "reason": ["dress", "hairstyle"],}\n```', 4.5),
        ('Here is my evaluation:\n{"score": 3}\nThe dress matches.', 3.0),
        ('{"score": "2"}', 2.0),
        ('{"score": "4/5"}', 4.0),
        ('{"score": ["5"]}', 5.0),
        ('{"Score": 0}', 0.0),
        ("{'score': 1.5}", 1.5),
        ('{"score": 3, "reason": [dress, hairstyle]}', 3.0),  # keywords unquoted: JSON fails, label found
        ("Score: 4.5", 4.5),
        ("4/5", 4.0),
        ("3", 3.0),
        ('{"evaluation": {"score": 2}}', 2.0),
        ("**Score:** 4", 4.0),
        ("The character is Anna.\nScore - 5 out of 5", 5.0),
        ('<think>Maybe {"score": 1}? No.</think>\n{"score": 3}', 3.0),
    ],
)
def test_parser_reads_the_score_from_lenient_replies(reply, expected):
    parsed = parse_scores(reply, CPS)
    assert parsed.status == "ok"
    assert parsed.scores == {"score": expected}


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("I cannot evaluate this image.", "no_scores"),
        ('{"reason": ["dress"]}', "missing_key"),
        ('{"score": 7}', "out_of_range"),
        ('{"score": -1}', "out_of_range"),
        ('{"score": "high"}', "not_a_number"),
        ('{"score": "8/10"}', "not_a_number"),
        ('{"score": [3, 4]}', "not_a_number"),
        ('{"score": true}', "not_a_number"),
        ('{"score": null}', "not_a_number"),
        ("6/5", "out_of_range"),
    ],
)
def test_parser_failures_are_nan_with_a_status_never_zero(reply, status):
    parsed = parse_scores(reply, CPS)
    assert parsed.status == status
    assert math.isnan(parsed.scores["score"])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{\n"prompt_correspondence": 4,\n"style_adherence": 3,\n}', (4.0, 3.0)),
        ('```\n{"prompt_correspondence": [5], "style_adherence": [2.5]}\n```', (5.0, 2.5)),
        ("Prompt correspondence: 4/5\nStyle adherence: 2", (4.0, 2.0)),
        ('{"Prompt Correspondence": "3", "Style-Adherence": 1}', (3.0, 1.0)),
    ],
)
def test_parser_reads_both_pixel_art_scores(reply, expected):
    parsed = parse_scores(reply, PC_SA)
    assert parsed.status == "ok"
    assert (parsed.scores["prompt_correspondence"], parsed.scores["style_adherence"]) == expected


def test_one_bad_pixel_art_score_fails_both():
    parsed = parse_scores('{"prompt_correspondence": 4, "style_adherence": 9}', PC_SA)
    assert parsed.status == "out_of_range"
    assert all(math.isnan(v) for v in parsed.scores.values())
    assert parse_scores('{"prompt_correspondence": 4}', PC_SA).status == "missing_key"


# --- a local OpenAI-compatible server -------------------------------------------------------------

KEY = "sk-test-secret-0123456789"


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    for name in ("AUTOLORA_JUDGE_URL", "AUTOLORA_JUDGE_MODEL", "AUTOLORA_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    servers = []

    def start(respond):
        servers.append(FakeServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def scripted(*responses):
    """Responses given in order, one per request (use with concurrency=1)."""
    queue = list(responses)
    return lambda body: queue.pop(0)


def judge(name, server, sleeps=None, **options):
    metric = get_metric(name, url=server.url, model="judge-vlm", api_key=KEY, concurrency=1, **options)
    metric.backend.sleep = (sleeps if sleeps is not None else []).append
    return metric


def records(n, prompts=None):
    return [
        ImageRecord(
            Image.new("RGB", (8, 8), (30 * i, 0, 0)), meta={"prompt": (prompts or [PIXEL_PROMPT] * n)[i]}
        )
        for i in range(n)
    ]


def test_request_carries_png_data_url_temperature_zero_seed_model_schema_and_key(serve):
    server = serve(scripted(chat('{"score": 4, "reason": ["dress"]}')))
    image = Image.new("RGB", (8, 6), (10, 200, 30))
    rows = judge("judge:cps", server, seed=123).compute([ImageRecord(image)])
    assert rows[0]["cps"] == 4.0 and rows[0]["cps_status"] == "ok"
    (request,) = server.requests
    body = request["body"]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert body["model"] == "judge-vlm" and body["temperature"] == 0 and body["seed"] == 123
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": PAPER_A1}
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.tobytes() == image.tobytes()
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert schema["required"] == ["score", "reason"]
    assert schema["properties"]["score"] == {"type": "number", "minimum": 0, "maximum": 5}


def test_every_kind_of_reply_gets_a_score_or_a_failure_status_and_keeps_its_raw_text(serve):
    replies = [
        '{"score": 5, "reason": ["dress", "hairstyle"]}',
        '```json\n{"score": 3, "reason": ["dress"],}\n```',
        'Sure, here you go: {"score": 2, "reason": ["hair"]} Hope this helps.',
        '{"score": 11, "reason": []}',
        "the image is nice",
    ]
    server = serve(scripted(*map(chat, replies)))
    rows = judge("judge:cps", server).compute(records(5))
    assert [row["cps_status"] for row in rows] == ["ok", "ok", "ok", "out_of_range", "no_scores"]
    assert [row["cps"] for row in rows[:3]] == [5.0, 3.0, 2.0]
    assert all(math.isnan(row["cps"]) for row in rows[3:])
    assert [row["cps_raw"] for row in rows] == replies


def test_failed_replies_are_counted_in_a_warning(serve, caplog):
    server = serve(scripted(chat('{"score": 9}'), chat("no idea"), chat('{"score": 1}')))
    with caplog.at_level("WARNING", logger="autolora.metrics.judge"):
        judge("judge:cps", server).compute(records(3))
    assert "2 of 3 judge replies gave no valid score (no_scores=1, out_of_range=1)" in caplog.text


def test_server_error_is_retried_with_backoff_then_succeeds(serve):
    sleeps = []
    server = serve(scripted((500, {}, '{"error": "overloaded"}'), chat('{"score": 4}')))
    rows = judge("judge:cps", server, sleeps=sleeps).compute(records(1))
    assert rows[0]["cps"] == 4.0 and rows[0]["cps_status"] == "ok"
    assert len(server.requests) == 2 and len(sleeps) == 1
    assert 1.0 <= sleeps[0] <= 1.5  # first backoff, with up to 50% jitter


def test_rate_limit_waits_for_retry_after(serve):
    sleeps = []
    server = serve(scripted((429, {"Retry-After": "7"}, "{}"), chat('{"score": 2}')))
    rows = judge("judge:cps", server, sleeps=sleeps).compute(records(1))
    assert rows[0]["cps"] == 2.0
    assert sleeps == [7.0]


def test_unavailable_server_is_waited_for_with_retry_after_too(serve):
    sleeps = []
    server = serve(scripted((503, {"Retry-After": "0"}, "{}"), chat('{"score": 2}')))
    assert judge("judge:cps", server, sleeps=sleeps).compute(records(1))[0]["cps"] == 2.0
    assert sleeps == [0.0]


def test_retry_after_as_an_http_date_is_honoured(serve):
    sleeps = []
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server = serve(scripted((429, {"Retry-After": when}, "{}"), chat('{"score": 2}')))
    judge("judge:cps", server, sleeps=sleeps).compute(records(1))
    assert len(sleeps) == 1 and 20 < sleeps[0] <= 30


def test_timeout_is_retried(serve):
    sleeps = []
    server = serve(scripted((*chat('{"score": 1}'), 2.0), chat('{"score": 3}')))
    rows = judge("judge:cps", server, sleeps=sleeps, timeout=0.2).compute(records(1))
    assert rows[0]["cps"] == 3.0 and len(server.requests) == 2 and len(sleeps) == 1


def test_exhausted_retries_give_nan_and_the_http_status(serve):
    sleeps = []
    server = serve(lambda body: (503, {}, '{"error": "down"}'))
    rows = judge("judge:cps", server, sleeps=sleeps, max_retries=2).compute(records(1))
    assert math.isnan(rows[0]["cps"]) and rows[0]["cps_status"] == "http_503"
    assert "HTTP 503" in rows[0]["cps_raw"]
    assert len(server.requests) == 3 and sleeps[1] >= 2 * 1.0  # exponential: 1 s then 2 s (+ jitter)


def test_client_errors_are_not_retried(serve):
    server = serve(lambda body: (404, {}, '{"error": "no such model"}'))
    rows = judge("judge:cps", server, structured=False).compute(records(1))
    assert rows[0]["cps_status"] == "http_404" and len(server.requests) == 1


def test_server_refusing_the_schema_is_asked_again_in_plain_text(serve):
    def respond(body):
        if "response_format" in body:
            return 400, {}, '{"error": "response_format json_schema is not supported"}'
        return chat('{"score": 3}')

    server = serve(respond)
    rows = judge("judge:cps", server).compute(records(2))
    assert [row["cps"] for row in rows] == [3.0, 3.0]
    assert ["response_format" in r["body"] for r in server.requests] == [True, False, False]


def test_structured_false_sends_no_schema(serve):
    server = serve(scripted(chat('{"score": 1}')))
    judge("judge:cps", server, structured=False).compute(records(1))
    assert "response_format" not in server.requests[0]["body"]


def test_api_key_never_appears_in_results_options_repr_errors_or_logs(serve, caplog):
    server = serve(lambda body: (401, {}, json.dumps({"error": f"invalid key {KEY}"})))
    metric = judge("judge:cps", server)
    with caplog.at_level("DEBUG"):
        rows = metric.compute(records(1))
    assert KEY not in caplog.text
    assert rows[0]["cps_status"] == "http_401"
    stored = json.dumps(rows, default=str) + json.dumps(metric.options, default=str)
    stored += repr(metric.backend) + repr(metric.config)
    assert KEY not in stored and "***" in rows[0]["cps_raw"]
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_pc_sa_asks_with_each_images_prompt_and_keeps_order_under_concurrency(serve):
    prompts = [f"a castle number {i}, pixel art style" for i in range(8)]

    def respond(body):
        text = body["messages"][0]["content"][1]["text"]
        i = int(re.search(r"castle number (\d+)", text).group(1))
        return chat(f'{{"prompt_correspondence": {i % 6}, "style_adherence": 5,}}')

    server = serve(respond)
    metric = get_metric("judge:pc_sa", url=server.url, model="m", concurrency=4)
    rows = metric.compute(records(8, prompts))
    assert [row["pc"] for row in rows] == [float(i % 6) for i in range(8)]
    assert all(row["sa"] == 5.0 and row["pc_sa_status"] == "ok" for row in rows)
    assert set(rows[0]) == {"pc", "sa", "pc_sa_status", "pc_sa_raw"}
    texts = {r["body"]["messages"][0]["content"][1]["text"] for r in server.requests}
    assert texts == {pc_sa_prompt(p) for p in prompts}
    assert server.requests[0]["body"]["response_format"]["json_schema"]["schema"]["required"] == [
        "prompt_correspondence",
        "style_adherence",
    ]
    assert "Authorization" not in server.requests[0]["headers"]


def test_pc_sa_without_a_prompt_in_the_metadata_raises(serve):
    server = serve(scripted())
    with pytest.raises(InputFileError, match="no generation prompt"):
        judge("judge:pc_sa", server).compute([ImageRecord(Image.new("RGB", (4, 4)))])


def test_environment_variables_give_url_model_and_key(serve, monkeypatch):
    server = serve(scripted(chat('{"score": 2}')))
    monkeypatch.setenv("AUTOLORA_JUDGE_URL", server.url)
    monkeypatch.setenv("AUTOLORA_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    metric = get_metric("judge:cps")
    assert metric.compute(records(1))[0]["cps"] == 2.0
    assert server.requests[0]["body"]["model"] == "env-model"
    assert server.requests[0]["headers"]["Authorization"] == "Bearer openai-key"
    monkeypatch.setenv("AUTOLORA_JUDGE_API_KEY", "judge-key")
    assert get_metric("judge:cps").backend.api_key == "judge-key"


def test_missing_server_model_or_bad_options_raise_config_errors(serve):
    with pytest.raises(ConfigError, match="AUTOLORA_JUDGE_URL"):
        get_metric("judge:cps", model="m")
    with pytest.raises(ConfigError, match="AUTOLORA_JUDGE_MODEL"):
        get_metric("judge:cps", url="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="known options"):
        get_metric("judge:cps", url="http://127.0.0.1:1/v1", model="m", temprature=0)
    with pytest.raises(ConfigError, match="concurrency"):
        get_metric("judge:cps", url="http://127.0.0.1:1/v1", model="m", concurrency=0)
    with pytest.raises(ConfigError, match="backend"):
        get_metric("judge:cps", model="m", backend="gemini")
    with pytest.raises(ConfigError, match="style_scale"):
        get_metric("judge:pc_sa", url="http://127.0.0.1:1/v1", model="m", style="watercolor")


def test_unreachable_server_is_a_connection_error_not_an_exception(serve):
    server = serve(scripted())
    url = server.url
    server.close()
    metric = get_metric("judge:cps", url=url, model="m", max_retries=1)
    sleeps = []
    metric.backend.sleep = sleeps.append
    rows = metric.compute(records(1))
    assert rows[0]["cps_status"] == "connection_error" and math.isnan(rows[0]["cps"])
    assert len(sleeps) == 1


# --- a local transformers model -------------------------------------------------------------------


def _chat_template(image_token: str) -> str:
    return (
        "{% for message in messages %}{{ message['role'] }}: {% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_token}{{% else %}}{{{{ part['text'] }}}}{{% endif %}}"
        "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )


def _tiny_vlm(kind: str, folder: Path) -> Path:
    """A random two-layer VLM and its processor saved to ``folder``; it can only ever say "4"."""
    import torch
    import transformers as tf

    from autolora.world.tokenizer import build_clip_tokenizer

    image_token = {"llava": "<image>", "mllama": "<|image|>"}[kind]
    tokenizer = build_clip_tokenizer(["score"], folder / "tokenizer")
    tokenizer.add_special_tokens({"additional_special_tokens": [image_token, "<|python_tag|>"]})
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2}
    text = {
        **small,
        "vocab_size": len(tokenizer),
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    image_token_index = tokenizer.convert_tokens_to_ids(image_token)
    torch.manual_seed(0)
    if kind == "llava":
        processor = tf.LlavaProcessor(
            image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16),
            tokenizer=tokenizer,
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's class token
            chat_template=_chat_template(image_token),
        )
        config = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(**small, num_attention_heads=2, image_size=16, patch_size=8),
            text_config=tf.LlamaConfig(**text),
            image_token_index=image_token_index,
        )
        model = tf.LlavaForConditionalGeneration(config)
    else:
        processor = tf.MllamaProcessor(
            image_processor=tf.MllamaImageProcessor(size={"height": 16, "width": 16}, max_image_tiles=4),
            tokenizer=tokenizer,
            chat_template=_chat_template(image_token),
        )
        vision = tf.MllamaVisionConfig(
            **small,
            num_global_layers=1,
            attention_heads=2,
            image_size=16,
            patch_size=8,
            max_num_tiles=4,
            intermediate_layers_indices=[0],
            vision_output_dim=64,
        )
        config = tf.MllamaConfig(
            vision_config=vision,
            text_config=tf.MllamaTextConfig(**text, cross_attention_layers=[1]),
            image_token_index=image_token_index,
        )
        model = tf.MllamaForConditionalGeneration(config)
    # Random weights say random things; suppressing every other token makes greedy decoding say "4".
    four = tokenizer.convert_tokens_to_ids("4")
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i != four]
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


@pytest.mark.parametrize(
    ("kind", "model_class"),
    [("mllama", "MllamaForConditionalGeneration"), ("llava", "LlavaForConditionalGeneration")],
)
def test_transformers_backend_loads_a_saved_vlm_and_scores_only_its_new_tokens(kind, model_class, tmp_path):
    folder = _tiny_vlm(kind, tmp_path)
    metric = get_metric(
        "judge:cps", backend="transformers", model=str(folder), device="cpu", max_new_tokens=1
    )
    rows = metric.compute(records(2))
    # Had the prompt been decoded with the reply, "4" would not be the whole raw text.
    assert rows == [{"cps": 4.0, "cps_status": "ok", "cps_raw": "4"}] * 2
    model = metric.backend._load()[0]
    assert type(model).__name__ == model_class
    assert not model.training


def test_transformers_backend_with_a_missing_model_raises_config_error(tmp_path):
    metric = get_metric("judge:cps", backend="transformers", model=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot load judge model"):
        metric.compute(records(1))
