"""Training data: folder scanning and captions, resize/crop/flip, prompt sets, and the latent/text cache."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sdkd_ext.cache import LATENT_KIND, Cache, CachedDataset, Crop, component_hash, encode_images, encode_texts
from sdkd_ext.checkpoint import DictSource
from sdkd_ext.configs import VaeShape
from sdkd_ext.convert import VAE
from sdkd_ext.data import builtin_prompts, load_image, read_prompts, scan_folder
from sdkd_ext.errors import SdkdError
from sdkd_ext.tiny import make_vae, to_ldm
from distill_helpers import one_thread  # noqa: F401  (autouse: small models run best on one thread)



def bands(path, w, h, colours):
    """An image of equal vertical bands (wide) or horizontal bands (tall) in the given colours."""
    a = np.zeros((h, w, 3), np.uint8)
    n = len(colours)
    for i, c in enumerate(colours):
        if w >= h:
            a[:, i * w // n:(i + 1) * w // n] = c
        else:
            a[i * h // n:(i + 1) * h // n] = c
    Image.fromarray(a).save(path)
    return path


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_captions_from_txt_or_file_name_recursively(tmp_path):
    bands(tmp_path / "a.png", 8, 8, [RED])
    (tmp_path / "a.txt").write_text(" a red square \n")
    (tmp_path / "sub").mkdir()
    bands(tmp_path / "sub" / "blue_sky-01.jpg", 8, 8, [BLUE])
    (tmp_path / ".hidden").mkdir()
    bands(tmp_path / ".hidden" / "x.png", 8, 8, [BLUE])
    (tmp_path / "notes.txt").write_text("not a caption of anything")
    scan = scan_folder(tmp_path)
    assert [(e.path.name, e.caption) for e in scan.examples] == [("a.png", "a red square"), ("blue_sky-01.jpg", "blue sky 01")]
    assert [p.name for p in scan.uncaptioned] == ["blue_sky-01.jpg"]


def test_metadata_jsonl(tmp_path):
    bands(tmp_path / "one.png", 8, 8, [RED])
    bands(tmp_path / "two.png", 8, 8, [GREEN])
    rows = [{"file_name": "one.png", "text": "first"}, {"file_name": "two.png"}, {"file_name": "gone.png", "text": "x"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "one.txt").write_text("ignored: metadata.jsonl wins")
    scan = scan_folder(tmp_path)
    assert [(e.path.name, e.caption) for e in scan.examples] == [("one.png", "first"), ("two.png", "two")]
    assert scan.missing == ["gone.png"] and [p.name for p in scan.uncaptioned] == ["two.png"]
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file name"}\n')
    with pytest.raises(SdkdError, match="line 1 is not a JSON object with 'file_name'"):
        scan_folder(tmp_path)


def test_empty_or_missing_folder_refused(tmp_path):
    with pytest.raises(SdkdError, match="no images found"):
        scan_folder(tmp_path)
    with pytest.raises(SdkdError, match="no such folder"):
        scan_folder(tmp_path / "nope")


@pytest.mark.parametrize("w,h", [(96, 32), (32, 96)])
def test_resize_keeps_aspect_and_crops_the_centre(tmp_path, w, h):
    path = bands(tmp_path / "x.png", w, h, [RED, GREEN, GREEN, GREEN, BLUE])  # the middle third is well inside green
    x = load_image(path, 16, min_side=8)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert torch.allclose(x, green.expand(3, 16, 16), atol=0.05)


def test_unreadable_and_small_images_are_reported(tmp_path):
    from sdkd_ext.data import BadImage

    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    bands(tmp_path / "small.png", 10, 40, [RED])
    with pytest.raises(BadImage) as e:
        load_image(tmp_path / "broken.png", 64, 32)
    assert e.value.kind == "unreadable"
    with pytest.raises(BadImage) as e:
        load_image(tmp_path / "small.png", 64, 32)
    assert e.value.kind == "too small" and "10x40" in str(e.value)


def test_prompt_sets(tmp_path):
    a, b = builtin_prompts(50, seed=1), builtin_prompts(50, seed=1)
    assert a == b and len(set(a)) == 50 and a != builtin_prompts(50, seed=2)
    assert len({p.split(",")[0] for p in a}) > 20, "varied subjects"
    for n in (0, 10**7):
        with pytest.raises(SdkdError, match="--self"):
            builtin_prompts(n)
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\n\na cat\n  a dog  \n")
    assert read_prompts(f) == ["a cat", "a dog"]
    f.write_text("# nothing\n\n")
    with pytest.raises(SdkdError, match="no prompts"):
        read_prompts(f)


@pytest.fixture(scope="module")
def vae_src():
    vae = make_vae(VaeShape(ch=32), seed=1)
    return vae, DictSource(to_ldm(vae=vae))


def test_latent_cache_is_keyed_by_file_size_and_model(tmp_path, vae_src):
    vae, src = vae_src
    h = component_hash(src, VAE)
    assert h != component_hash(DictSource(to_ldm(vae=make_vae(VaeShape(ch=32), seed=2))), VAE)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    bands(imgs / "a.png", 96, 64, [RED, GREEN, BLUE])
    bands(imgs / "b.png", 64, 64, [BLUE, RED])
    examples = scan_folder(imgs).examples
    cache = Cache(tmp_path / "cache")
    loads = []

    def load_vae():
        loads.append(1)
        return vae

    first = encode_images(examples, load_vae, cache, h, Crop(64, True, 32))
    again = encode_images(examples, load_vae, cache, h, Crop(64, True, 32))
    assert len(loads) == 1 and first.keys == again.keys, "the second pass is all cache hits: no VAE loaded"
    (imgs / "broken.png").write_bytes(b"not an image")
    from sdkd_ext.data import Example

    with_bad = encode_images(examples + [Example(imgs / "broken.png", "x")], load_vae, cache, h, Crop(64, True, 32))
    assert with_bad.keys[:2] == first.keys and with_bad.keys[2] is None and with_bad.skipped["unreadable"] == ["broken.png"]
    assert len(loads) == 1, "an unreadable image alone does not load the VAE"
    assert len({k for ks in first.keys for k in ks}) == 4, "original and mirror image of each"
    with torch.no_grad():
        x = load_image(examples[0].path, 64, 32)[None]
        want = vae.encode(x.flip(-1)).latent_dist.mean[0]
    got = cache.load(LATENT_KIND, first.keys[0][1])["mean"].float()
    assert torch.allclose(got, want, atol=2e-3), "the mirror entry is the VAE encoding of the mirrored image"
    assert encode_images(examples, load_vae, cache, h, Crop(32, False, 16)).keys[0][0] not in first.keys[0], "size is in the key"
    st = os.stat(examples[1].path)
    os.utime(examples[1].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert encode_images(examples, load_vae, cache, h, Crop(64, True, 32)).keys[1] != first.keys[1], "an edited file is re-encoded"
    assert encode_images(examples, load_vae, cache, "other-vae", Crop(64, True, 32)).keys[0] != first.keys[0]


def test_text_cache_and_dataset_sampling(tmp_path, vae_src):
    from sdkd_ext.pipeline import tokenizer
    from sdkd_ext.tiny import make_text_encoder

    te = make_text_encoder(32, 2, seed=0)
    cache = Cache(tmp_path)
    loads = []
    keys = encode_texts(["a cat", "a dog", "a cat"], lambda: loads.append(1) or te, tokenizer, cache, "te1")
    assert keys[0] == keys[2] != keys[1] and len(loads) == 1
    assert encode_texts(["a dog"], lambda: loads.append(1) or te, tokenizer, cache, "te1") == [keys[1]] and len(loads) == 1
    with torch.no_grad():
        ids = tokenizer()(["a dog"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        want = te(ids)[0][0]
    assert torch.allclose(cache.load("text", keys[1])["text"].float(), want, atol=2e-3)

    vae, src = vae_src
    bands(tmp_path / "a.png", 64, 64, [RED, GREEN])
    from sdkd_ext.data import Example

    lat = encode_images([Example(tmp_path / "a.png", "a cat")], lambda: vae, cache, "v", Crop(64, True, 32))
    ds = CachedDataset(cache, [(lat.keys[0], keys[0])], scaling=0.5)
    a, b = ds.get(0, 7), ds.get(0, 7)
    assert torch.equal(a["latents"], b["latents"]) and a["latents"].shape == (4, 8, 8) and a["text"].shape == (77, 32)
    draws = [ds.get(0, s)["latents"] for s in range(12)]
    assert len({tuple(d.flatten()[:3].tolist()) for d in draws}) == 12, "the posterior is sampled per seed"
    mean = [cache.load(LATENT_KIND, k)["mean"].float() * 0.5 for k in lat.keys[0]]
    nearest = [min(range(2), key=lambda i: (d - mean[i]).abs().mean()) for d in draws]
    assert set(nearest) == {0, 1}, "both the image and its mirror are drawn"
