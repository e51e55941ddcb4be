"""Writes comfyui_output.png: an 8x8 image with the text chunks ComfyUI's SaveImage writes, 'prompt' (the API
graph of unsampler_ui.json, written out by hand below) and 'workflow' (unsampler_ui.json). Run once; the PNG is committed."""
import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

HERE = Path(__file__).parent
PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a red fox in the snow", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
    "1": {"class_type": "LoadImage", "inputs": {"image": "fox.png", "upload": "image"}},
    "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
    "3": {"class_type": "BNK_Unsampler", "inputs": {"model": ["4", 0], "steps": 25, "end_at_step": 3, "cfg": 1.5,
                                                    "sampler_name": "dpmpp_2m", "scheduler": "karras", "normalize": "enable",
                                                    "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["2", 0]}},
    "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a grey wolf in the snow", "clip": ["4", 1]}},
    "5": {"class_type": "KSamplerAdvanced", "inputs": {"model": ["4", 0], "add_noise": "disable", "noise_seed": 1234,
                                                       "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                                       "positive": ["8", 0], "negative": ["7", 0], "latent_image": ["3", 0],
                                                       "start_at_step": 3, "end_at_step": 10000,
                                                       "return_with_leftover_noise": "disable"}},
    "9": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "unsampled"}},
}

if __name__ == "__main__":
    info = PngInfo()
    info.add_text("prompt", json.dumps(PROMPT))
    info.add_text("workflow", json.dumps(json.loads((HERE / "unsampler_ui.json").read_text())))
    Image.new("RGB", (8, 8), (200, 80, 40)).save(HERE / "comfyui_output.png", pnginfo=info)
