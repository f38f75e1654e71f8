"""Drives a live sdq through the real `webuiapi` client (A1111's /sdapi/v1).

Usage: python webuiapi_client.py BASE_URL [API_KEY]
The key, when given, travels as the HTTP Basic password.
Prints one line per check and, last, `JOBS n`: how many jobs its calls queued.
Any failed assertion exits non-zero (tests/compat_clients.rs runs this).
"""

import base64
import io
import sys
import threading
import time

import webuiapi
from PIL import Image

base = sys.argv[1].rstrip("/")
key = sys.argv[2] if len(sys.argv) > 2 else None
jobs = 0


def check(name):
    print(f"ok - {name}", flush=True)


# The key travels as the HTTP Basic password, which is what webuiapi can send.
api = webuiapi.WebUIApi(
    baseurl=f"{base}/sdapi/v1",
    sampler="Euler a",
    steps=4,
    username="sdq" if key else None,
    password=key,
)

# txt2img with a batch: two images at the asked size, seeds counting up, infotexts.
r = api.txt2img(prompt="a red fox", negative_prompt="blurry", width=64, height=64,
                batch_size=2, seed=42, cfg_scale=7)
jobs += 1
assert len(r.images) == 2, r.json
for image in r.images:
    assert image.size == (64, 64), image.size
assert r.info["all_seeds"] == [42, 43], r.info
assert r.info["sampler_name"] == "Euler a", r.info
assert "Steps: 4" in r.info["infotexts"][0], r.info
assert r.images[0].info["parameters"].startswith("a red fox"), r.images[0].info
check("txt2img batch of 2")

# n_iter multiplies the batch.
r = api.txt2img(prompt="a blue bird", width=64, height=64, batch_size=1, n_iter=2, seed=1)
jobs += 1
assert len(r.images) == 2 and r.info["all_seeds"] == [1, 2], r.info
check("txt2img n_iter")

# img2img, then inpainting with a mask (whole picture, from the original pixels).
start = Image.new("RGB", (80, 64), (200, 40, 40))
r = api.img2img(images=[start], prompt="a red door", width=64, height=64,
                denoising_strength=0.6, seed=5)
jobs += 1
assert len(r.images) == 1 and r.images[0].size == (64, 64), r.json
assert r.info["denoising_strength"] == 0.6, r.info
check("img2img")

# With webuiapi's defaults: "Only masked" whose crop is the whole picture, "fill".
mask = Image.new("L", (64, 64), 0)
mask.paste(255, (0, 0, 32, 64))
r = api.img2img(images=[start.resize((64, 64))], mask_image=mask, prompt="a window",
                width=64, height=64, seed=6)
jobs += 1
assert len(r.images) == 1 and r.images[0].size == (64, 64), r.json
r = api.img2img(images=[start.resize((64, 64))], mask_image=mask, prompt="a window",
                width=64, height=64, inpaint_full_res=False, inpainting_fill=1,
                inpainting_mask_invert=1, mask_blur=2, seed=6)
jobs += 1
assert len(r.images) == 1 and r.images[0].size == (64, 64), r.json
check("img2img with a mask")

# png-info reads back what sdq wrote.
info = api.png_info(r.images[0])
assert "Steps: 4" in info.info and info.parameters["Prompt"] == "a window", info.json
check("png-info")

# Progress of a running job, then interrupt it.
result = {}


def long_job():
    result["r"] = api.txt2img(prompt="a slow painting", width=128, height=128, steps=150, seed=3)


thread = threading.Thread(target=long_job)
thread.start()
jobs += 1
deadline = time.time() + 120
seen = None
while time.time() < deadline:
    p = api.get_progress()
    if p["state"]["sampling_step"] >= 1:
        seen = p
        break
    time.sleep(0.05)
assert seen is not None, "the long job never reported a step"
assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 150, seen
assert seen["state"]["job_count"] >= 1 and seen["eta_relative"] >= 0, seen
check("get_progress during a running job")
# A1111 jobs have previews on: current_image is bare base64 of the latest one (a JPEG of
# the latents' size, 1/8 of the image per side).
current = None
while time.time() < deadline and current is None:
    current = api.get_progress().get("current_image")
    time.sleep(0.05)
assert current, "no current_image while the job ran"
assert not current.startswith("data:"), current[:40]
preview = Image.open(io.BytesIO(base64.b64decode(current)))
assert preview.format == "JPEG" and preview.size == (16, 16), (preview.format, preview.size)
check("get_progress carries the step preview as current_image")
assert api.interrupt() == {}
thread.join(120)
assert not thread.is_alive(), "txt2img did not return after interrupt"
assert result["r"].images == [] and result["r"].info["status"] == "canceled", result["r"].json
idle = api.get_progress()
assert idle["progress"] == 0 and idle["state"]["job_count"] == 0, idle
check("interrupt stops the running job")

# Listings.
models = api.util_get_model_names()
assert "tiny" in models and "tiny-sd2" in models, models
samplers = api.util_get_sampler_names()
assert "Euler a" in samplers and "DPM++ 2M" in samplers, samplers
assert "karras" in api.util_get_scheduler_names()
assert api.get_scripts() == {"txt2img": [], "img2img": []}
assert api.get_upscalers() == [] and api.get_loras() == []
check("listings")

# util_set_model picks the caller's default model for later requests.
api.util_set_model("tiny-sd2")
assert api.util_get_current_model() == "tiny-sd2"
r = api.txt2img(prompt="a green hill", width=64, height=64, seed=8)
jobs += 1
assert r.info["sd_model_name"] == "tiny-sd2" and r.images[0].size == (64, 64), r.info
api.util_set_model("tiny")
assert api.util_get_current_model() == "tiny"
check("util_set_model")

# What sdq cannot do is refused by name, never ignored.
try:
    api.txt2img(prompt="a cat", width=64, height=64, enable_hr=True)
    raise AssertionError("enable_hr was accepted")
except RuntimeError as e:
    status, text = e.args
    assert status == 422 and "enable_hr" in text, e.args
check("unsupported fields are a 422 naming them")

print(f"JOBS {jobs}", flush=True)
