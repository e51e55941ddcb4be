"""The ComfyUI nodes a workflow of ours uses, as data: required inputs in order, their types, outputs.

Read from ComfyUI's `nodes.py` (`INPUT_TYPES()["required"]`, `RETURN_TYPES`) and ComfyUI_Noise's
`Unsampler` (registered as `BNK_Unsampler`). An input type in capitals (MODEL, LATENT, ...) is a link;
INT / FLOAT / STRING / COMBO are widgets, stored by name in the API format and by position in the
UI format's `widgets_values` (where a seed widget is followed by its `control_after_generate` value and
LoadImage's image by its `upload` button value).
"""
from __future__ import annotations

#: class_type -> required inputs (name, type), in ComfyUI's order.
NODE_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "CheckpointLoaderSimple": (("ckpt_name", "COMBO"),),
    "CLIPTextEncode": (("text", "STRING"), ("clip", "CLIP")),
    "LoadImage": (("image", "COMBO"),),
    "LoadLatent": (("latent", "COMBO"),),
    "VAEEncode": (("pixels", "IMAGE"), ("vae", "VAE")),
    "VAEDecode": (("samples", "LATENT"), ("vae", "VAE")),
    "SaveImage": (("images", "IMAGE"), ("filename_prefix", "STRING")),
    "SaveLatent": (("samples", "LATENT"), ("filename_prefix", "STRING")),
    "KSampler": (("model", "MODEL"), ("seed", "INT"), ("steps", "INT"), ("cfg", "FLOAT"), ("sampler_name", "COMBO"),
                 ("scheduler", "COMBO"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                 ("latent_image", "LATENT"), ("denoise", "FLOAT")),
    "KSamplerAdvanced": (("model", "MODEL"), ("add_noise", "COMBO"), ("noise_seed", "INT"), ("steps", "INT"),
                         ("cfg", "FLOAT"), ("sampler_name", "COMBO"), ("scheduler", "COMBO"),
                         ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
                         ("start_at_step", "INT"), ("end_at_step", "INT"), ("return_with_leftover_noise", "COMBO")),
    "BNK_Unsampler": (("model", "MODEL"), ("steps", "INT"), ("end_at_step", "INT"), ("cfg", "FLOAT"),
                      ("sampler_name", "COMBO"), ("scheduler", "COMBO"), ("normalize", "COMBO"),
                      ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")),
    "LoraLoader": (("model", "MODEL"), ("clip", "CLIP"), ("lora_name", "COMBO"), ("strength_model", "FLOAT"),
                   ("strength_clip", "FLOAT")),
    "ImageScale": (("image", "IMAGE"), ("upscale_method", "COMBO"), ("width", "INT"), ("height", "INT"), ("crop", "COMBO")),
    "SetLatentNoiseMask": (("samples", "LATENT"), ("mask", "MASK")),
}
#: class_type -> output types (slot order).
NODE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"), "CLIPTextEncode": ("CONDITIONING",), "LoadImage": ("IMAGE", "MASK"),
    "LoadLatent": ("LATENT",), "VAEEncode": ("LATENT",), "VAEDecode": ("IMAGE",), "SaveImage": (), "SaveLatent": (),
    "KSampler": ("LATENT",), "KSamplerAdvanced": ("LATENT",), "BNK_Unsampler": ("LATENT",), "LoraLoader": ("MODEL", "CLIP"),
    "ImageScale": ("IMAGE",), "SetLatentNoiseMask": ("LATENT",),
}
#: Other names the same node is saved under (the pack's display name; a bare class name).
ALIASES = {"Unsampler": "BNK_Unsampler"}
#: Nodes a value passes through unchanged for what we look for: node -> the input to follow.
PASS_THROUGH = {"LoraLoader": "model", "ImageScale": "image", "SetLatentNoiseMask": "samples", "VAEEncode": "pixels"}
LINK_TYPES = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK"}
SEED_WIDGETS = ("seed", "noise_seed")


def widget_names(class_type: str) -> list[str]:
    """The UI format's `widgets_values` slots of a node, in order (seed controls and upload buttons included)."""
    names: list[str] = []
    for name, kind in NODE_INPUTS[class_type]:
        if kind in LINK_TYPES:
            continue
        names.append(name)
        if name in SEED_WIDGETS:
            names.append("control_after_generate")
        if class_type == "LoadImage" and name == "image":
            names.append("upload")
    return names
