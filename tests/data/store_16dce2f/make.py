# Written with unsampling_lab at 16dce2f (before control/direct were grid keys): a results store to resume.
import sys, torch
import unsampling_lab as ul
from unsampling_lab.bundled import shapes
from safetensors.torch import save_file
torch.set_num_threads(1)
out = sys.argv[1]
model = ul.load_model(device="cpu")
b = shapes.make_shapes(2, seed=7)
lat = model.encode(b.images)
save_file({"samples": lat["samples"].contiguous()}, f"{out}/latents.safetensors")
df = ul.sweep(model, lat, {"end_at_step": [0, 2], "edit": [None, "blue circle"]}, steps=3, cfg=1.0, resample_cfg=2.0,
              positive=list(b.captions), path=f"{out}/store_16dce2f.sqlite", metrics=["latent", "noise"], progress=False)
df2 = ul.sweep(model, lat, {"method": ["fixed_point"]}, steps=3, positive=list(b.captions), method_options={"fixed_point": {"iterations": 2}},
              path=f"{out}/store_16dce2f.sqlite", metrics=["latent"], progress=False)
print(len(df), len(df2), df.attrs["rows_computed"], list(df.columns))
