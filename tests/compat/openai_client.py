"""Drives a live sdq through the real `openai` client (OpenAI's Images API).

Usage: python openai_client.py BASE_URL API_KEY
Prints one line per check and, last, `JOBS n`: how many jobs its calls queued.
Any failed assertion exits non-zero (tests/compat_clients.rs runs this).
"""

import base64
import io
import sys

import openai
import requests
from PIL import Image

base = sys.argv[1].rstrip("/")
key = sys.argv[2]
jobs = 0
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)


def check(name):
    print(f"ok - {name}", flush=True)


def decoded(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def png(image):
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# Two images as base64.
r = client.images.generate(model="dall-e-2", prompt="a red fox", n=2, size="64x64",
                           response_format="b64_json")
jobs += 1
assert len(r.data) == 2, r
for d in r.data:
    image = decoded(d.b64_json)
    assert image.size == (64, 64) and image.format == "PNG", image
    assert d.revised_prompt == "a red fox"
assert r.size == "64x64" and r.output_format == "png", r
check("generate n=2 as b64_json")

# As URLs the same key can fetch.
r = client.images.generate(model="tiny", prompt="a blue bird", n=2, size="64x64",
                           response_format="url", user="user-7")
jobs += 1
assert len(r.data) == 2
for d in r.data:
    assert d.url.startswith("http"), d.url
    got = requests.get(d.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
    assert got.status_code == 200, (got.status_code, got.text)
    assert Image.open(io.BytesIO(got.content)).size == (64, 64)
check("generate n=2 as url")

# jpeg and webp encodings.
r = client.images.generate(prompt="a lighthouse", size="72x64", output_format="jpeg",
                           output_compression=70, quality="low")
jobs += 1
image = decoded(r.data[0].b64_json)
assert image.format == "JPEG" and image.size == (72, 64), image
assert r.output_format == "jpeg" and r.quality == "low", r
r = client.images.generate(prompt="a lighthouse", size="64x64", output_format="webp")
jobs += 1
assert decoded(r.data[0].b64_json).format == "WEBP"
check("output_format jpeg and webp")

# Edits: without a mask (img2img) and with one (transparent pixels are repainted).
start = Image.new("RGB", (64, 64), (30, 120, 200))
r = client.images.edit(image=("start.png", png(start), "image/png"), prompt="a boat",
                       size="64x64")
jobs += 1
assert len(r.data) == 1 and decoded(r.data[0].b64_json).size == (64, 64), r
mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
mask.paste((0, 0, 0, 0), (0, 0, 32, 64))
r = client.images.edit(image=("start.png", png(start), "image/png"),
                       mask=("mask.png", png(mask), "image/png"), prompt="a sail", n=2)
jobs += 1
assert len(r.data) == 2 and decoded(r.data[1].b64_json).size == (64, 64), r
check("edit without and with a mask")

# A streamed generation sends partial images from the step previews (at most as many as
# asked, at the asked size and format, numbered from 0), then the completed image.
stream = client.images.generate(prompt="a storm", size="64x64", stream=True, partial_images=2,
                                output_format="jpeg")
jobs += 1
events = list(stream)
assert events and events[-1].type == "image_generation.completed", events
partial = [e for e in events if e.type == "image_generation.partial_image"]
assert 1 <= len(partial) <= 2, len(partial)
assert [e.partial_image_index for e in partial] == list(range(len(partial))), partial
for e in partial + events[-1:]:
    image = decoded(e.b64_json)
    assert image.size == (64, 64) and image.format == "JPEG", (image.size, image.format)
check(f"streamed generation ({len(partial)} partial images)")

# A bad request surfaces as the SDK's typed 422 error, naming OpenAI's parameter.
try:
    client.images.generate(prompt="a cat", size="63x64")
    raise AssertionError("size 63x64 was accepted")
except openai.UnprocessableEntityError as e:
    assert e.status_code == 422 and e.body["param"] == "size", e.body
    assert e.body["type"] == "invalid_request_error", e.body
check("422 is UnprocessableEntityError")

models = [m.id for m in client.models.list()]
assert "tiny" in models, models
check("models.list")

print(f"JOBS {jobs}", flush=True)
