"""The shipped CLIP tokenizer gives OpenAI CLIP's ids, offline."""

from sdkd_ext.pipeline import tokenizer


def test_known_ids_and_lengths():
    tok = tokenizer()
    assert tok("a red circle").input_ids == [49406, 320, 736, 7117, 49407]
    assert tok("A photo of an astronaut, riding a horse!").input_ids == [49406, 320, 1125, 539, 550, 18376, 267, 6765, 320, 4558, 256, 49407]
    # ftfy-cleaned text keeps punctuation runs whole, as OpenAI's CLIP and A1111 tokenize them
    assert tok("sunglasses -- 8k").input_ids == [49406, 12906, 2432, 279, 330, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    padded = tok("a small red circle", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_fast_tokenizer_agrees_on_ascii():
    from transformers import CLIPTokenizerFast

    from sdkd_ext.configs import TOKENIZER_DIR

    slow, fast = tokenizer(), CLIPTokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    for text in ["a large blue square at the bottom right on a white background", "masterpiece, best quality, 1girl",
                 "photo of a cat wearing sunglasses -- 8k uhd"]:
        assert fast(text).input_ids == slow(text).input_ids
